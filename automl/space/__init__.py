"""Search spaces: YAML or a dict -> a validated `Space` -> `suggest(trial, space, ...)` -> plain configs.

A space has the sections data, objective, budget, constraints, sampler, pruner, model, loss,
optimizer and training (one pydantic model each, `automl.space.schema`). Only `data.dataset` and `model.family`
(or `model.builder`, a user network) are required:

    data: {dataset: digits}
    model: {family: mlp}

A parameter is a fixed value or a range: `{type: int|float, low, high, log, step}` or
`{type: categorical, choices: [...]}`; ranges become Optuna distributions, which check their own
invariants. Any problem is one `SpaceError` line, `file: key.path: problem`, before any study or
run exists.

Defaults (a missing key or section):

    data         validation_fraction 0.15, test_fraction 0.15, augment false;
                 image_folder: image_size 32 (or [h, w]), color rgb; npz: task classification
    objective    metric val_accuracy (classification) / val_rmse (regression); direction: the metric's;
                 or metrics [trained metric, n_parameters and/or latency_ms] (a multi-objective
                 search, directions from the metrics) with select {best: first metric, where: {}}
    budget       epochs 10, trials 20, no timeout, no goal, no patience (automl.stopping)
    constraints  none (max_parameters, max_latency_ms: checked before a trial trains)
    sampler      tpe (no options)
    pruner       median with n_warmup_steps 2 (a pruner named without options: its registry defaults)
    model        mlp/cnn: depth 2, width 128, activation relu, dropout 0, batch_norm false,
                 kernel_size 3 (cnn: blocks and channels required); builder: params {}
    loss         cross_entropy (classification) / mse (regression); label_smoothing 0.1, huber 1.0
    optimizer    adam, lr 1e-3, weight_decay 0; sgd momentum 0.9, nesterov false; adam/adamw
                 beta1 0.9, beta2 0.999; rmsprop momentum 0, alpha 0.99
    training     batch_size 128, schedule none, amp true, compile false

YAML is read safely: a key given twice, alias bombs and self-referring aliases are refused.
"""

from __future__ import annotations

from automl import registries as _reg
from automl.space.core import SearchSpace, Space, load_space, parse_space, validate_document
from automl.space.params import Param, Rule
from automl.space.problems import Problem, SpaceError
from automl.space.sampling import check_space_builder, suggest

# name -> Optuna class (resolved here: the space layer imports Optuna anyway)
SAMPLERS = {name: _reg.resolve(info.cls) for name, info in _reg.SAMPLERS.items()}
PRUNERS = {name: _reg.resolve(info.cls) for name, info in _reg.PRUNERS.items()}
DATASETS = {name: (info.task, info.kind) for name, info in _reg.DATASETS.items()}
METRICS = _reg.METRICS

__all__ = [
    "DATASETS", "METRICS", "PRUNERS", "SAMPLERS", "Param", "Problem", "Rule", "SearchSpace", "Space",
    "SpaceError", "check_space_builder", "load_space", "parse_space", "suggest", "validate_document",
]
