"""GPU-only checks (skipped with a reason on machines without CUDA)."""

from __future__ import annotations

import optuna
import pytest
import torch

from automl.data import load_dataset
from automl.errors import TrialFailed
from automl.objective import Objective
from automl.space import parse_space
from automl.train import evaluate
from tests.conftest import TINY_SPACE

pytestmark = pytest.mark.gpu


def test_cuda_out_of_memory_fails_the_trial_and_frees_memory() -> None:
    data = load_dataset("digits", seed=0).to("cuda")
    space = parse_space(TINY_SPACE.replace("width: {type: int, low: 16, high: 64, log: true}",
                                           "width: {type: categorical, choices: [32, 50000000000]}"), "oom.yaml")
    objective = Objective(space, data)
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    params = {"depth": 1, "width_0": 50000000000, "activation": "relu", "optimizer": "adam", "lr": 0.005}
    with pytest.raises(TrialFailed, match="out of memory|alloc"):
        objective(optuna.trial.FixedTrial(params))
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == baseline
    # and the next trial trains normally
    assert objective(optuna.trial.FixedTrial({**params, "width_0": 32})) > 0.5


def test_bf16_channels_last_cnn_learns_and_reloads_on_cpu(tmp_path) -> None:
    from automl.checkpoint import load_checkpoint, save_checkpoint
    from automl.config import ModelConfig, TrainConfig
    from automl.model import build_model
    from automl.train import fit

    data = load_dataset("digits", seed=0)
    config = ModelConfig("cnn", data.input_shape, data.n_outputs, channels=(16, 32), widths=(64,), batch_norm=True)
    torch.manual_seed(0)
    model = build_model(config)
    model.set_statistics(data.input_mean, data.input_std)
    result = fit(model, data.to("cuda"), TrainConfig(epochs=4, batch_size=64, lr=3e-3, amp=True))
    assert result.metrics["val_accuracy"] > 0.85
    save_checkpoint(tmp_path, model, config)
    reloaded = load_checkpoint(tmp_path, "cpu")
    on_gpu = evaluate(model.eval().float(), data.to("cuda").test, "classification")["accuracy"]
    on_cpu = evaluate(reloaded, data.test, "classification")["accuracy"]
    assert abs(on_gpu - on_cpu) <= 1 / len(data.test) + 1e-9
