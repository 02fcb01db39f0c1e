"""Search-space loading, validation messages and sampling."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from automl.errors import UsageError
from automl.space import load_space, parse_space, suggest
from tests.conftest import ROOT, TINY_SPACE


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_load(path: Path) -> None:
    space = load_space(path)
    assert space.epochs >= 1 and space.metric.startswith("val_")


def test_required_spaces_ship() -> None:
    names = {p.name for p in (ROOT / "search_spaces").glob("*.yaml")}
    assert {"digits_mlp.yaml", "mnist_mlp.yaml", "mnist_cnn.yaml", "fashion_mnist_cnn.yaml"} <= names


def _replace(old: str, new: str) -> str:
    assert old in TINY_SPACE, old
    return TINY_SPACE.replace(old, new)


BAD_SPACES = [
    # (yaml text, expected message fragments)
    (_replace("depth: {type: int, low: 1, high: 2}", "depth: {type: int, low: 3, high: 1}"),
     ["model.depth", "`low <= high` must hold", "low=3, high=1"]),
    (_replace("lr: {type: float, low: 3.0e-3", "lr: {type: float, low: 0.0"),
     ["optimizer.lr", "`low > 0` must hold for `log=True`"]),
    (_replace("width: {type: int, low: 16, high: 64, log: true}", "width: {type: int, low: 0, high: 64, log: true}"),
     ["model.width", "`low >= 1` must hold for `log=True`"]),
    (_replace("choices: [relu, tanh]", "choices: []"), ["model.activation.choices", "non-empty list"]),
    (_replace("choices: [relu, tanh]", "choices: [relu, swish]"),
     ["model.activation.choices[1]", "expected one of", "'swish'"]),
    (_replace("choices: [adam, sgd]", "choices: [adam, lbfgs]"), ["optimizer.name.choices[1]", "'lbfgs'"]),
    (_replace("loss: {name: cross_entropy}", "loss: {name: hinge}"), ["loss.name", "'hinge'"]),
    (_replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: two, trials: 3}"),
     ["budget.epochs", "an integer >= 1", "'two'"]),
    (_replace("family: mlp", "family: mlp\n  widht: 3"), ["model.widht", "unknown key"]),
    (TINY_SPACE + "extra: 1\n", ["extra", "unknown key"]),
    (_replace("data: {dataset: digits}", "data: {dataset: imagenet}"), ["data.dataset", "'imagenet'"]),
    (_replace("{type: int, low: 1, high: 2}", "{type: integer, low: 1, high: 2}"),
     ["model.depth.type", "expected type int, float or categorical"]),
    (_replace("objective: {metric: val_accuracy}", "objective: {metric: val_accuracy, direction: minimize}"),
     ["objective.direction", "maximize"]),
    (_replace("objective: {metric: val_accuracy}", "objective: {metric: val_rmse}"),
     ["objective.metric", "'val_rmse'"]),
    (_replace("family: mlp", "family: cnn"), ["model.blocks", "missing"]),
    (_replace("sampler: {name: random}", "sampler: {name: tpe, options: {n_startup: 3}}"),
     ["sampler.options.n_startup", "unknown option"]),
    (_replace("pruner: {name: none}", "pruner: {name: percentile}"), ["pruner.options", "percentile"]),
    (_replace("training: {batch_size: 64}", "training: {batch_size: -1}"), ["training.batch_size", "an integer >= 1"]),
    (_replace("model:\n", "model:\n  dropout: {type: float, low: 0.1, high: 1.5}\n"),
     ["model.dropout.high", "[0, 1)"]),
    (_replace("optimizer:\n", "optimizer:\n  rmsprop: {alpha: 0.9}\n"),
     ["optimizer.rmsprop", "not among the optimizers"]),
    ("data: [1, 2\n", ["invalid YAML", "line"]),
    ("", ["empty"]),
    ("- a\n- b\n", ["expected a mapping"]),
    (_replace("data: {dataset: digits}", "data: {dataset: csv}"), ["data.task", "missing"]),
    (_replace("data: {dataset: digits}", "data: {dataset: wine}").replace("family: mlp", "family: cnn"),
     ["model.family", "image dataset"]),
]


@pytest.mark.parametrize("text,fragments", BAD_SPACES, ids=[f[0] for _, f in BAD_SPACES])
def test_bad_space_names_file_key_and_problem(text: str, fragments: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        parse_space(text, "bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml"), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_file() -> None:
    with pytest.raises(UsageError, match="nope.yaml: search space file not found"):
        load_space("nope.yaml")


def test_fixed_values_and_ranges() -> None:
    space = parse_space(TINY_SPACE, "tiny.yaml")
    assert space.training["batch_size"].fixed == 64
    assert space.model["depth"].distribution == optuna.distributions.IntDistribution(1, 2)
    assert space.name == "tiny" and space.direction == "maximize"


def test_width_per_existing_layer_only() -> None:
    space = parse_space(TINY_SPACE, "tiny.yaml")
    trial = optuna.trial.FixedTrial({"depth": 1, "width_0": 32, "activation": "relu",
                                     "optimizer": "adam", "lr": 0.005})
    model, train = suggest(trial, space, (1, 8, 8), 10)
    assert model.widths == (32,)
    assert train.batch_size == 64 and train.optimizer == "adam"


def test_conditional_optimizer_parameters_exist_only_for_their_optimizer() -> None:
    text = _replace(
        "lr: {type: float",
        "sgd: {momentum: {type: float, low: 0.5, high: 0.9}, nesterov: {type: categorical, choices: [true, false]}}\n"
        "  adam: {beta1: {type: float, low: 0.8, high: 0.9}}\n  lr: {type: float",
    )
    space = parse_space(text, "cond.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen: dict[str, set[str]] = {"adam": set(), "sgd": set()}
    for _ in range(30):
        trial = study.ask()
        _, train = suggest(trial, space, (1, 8, 8), 10)
        seen[train.optimizer].update(trial.params)
        study.tell(trial, 0.0)
    assert "sgd.momentum" in seen["sgd"] and "adam.beta1" not in seen["sgd"]
    assert "adam.beta1" in seen["adam"] and "sgd.momentum" not in seen["adam"]


def test_cnn_space_samples_blocks_and_channels() -> None:
    space = load_space(ROOT / "search_spaces" / "mnist_cnn.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    model, _ = suggest(trial, space, (1, 28, 28), 10)
    assert model.family == "cnn"
    assert len(model.channels) == trial.params["blocks"]
    assert all(f"channels_{i}" in trial.params for i in range(len(model.channels)))
