"""The objective with fixed parameters (no study, no storage) and inside a real study."""

from __future__ import annotations

import optuna
import pytest

from automl.data import load_dataset
from automl.errors import TrialFailed
from automl.objective import Objective
from automl.space import parse_space
from tests.conftest import TINY_SPACE

PARAMS = {"depth": 1, "width_0": 32, "activation": "relu", "optimizer": "adam", "lr": 0.005}


@pytest.fixture(scope="module")
def objective() -> Objective:
    return Objective(parse_space(TINY_SPACE, "tiny.yaml"), load_dataset("digits", seed=0), seed=0)


class Recorder:
    """A TrialRun stand-in that keeps what the objective records."""

    def __init__(self) -> None:
        self.params: dict = {}
        self.epochs: list[tuple[int, dict]] = []
        self.weights = 0
        self.summary: dict = {}

    def log_params(self, params):
        self.params.update(params)

    def log_epoch(self, epoch, metrics):
        self.epochs.append((epoch, metrics))

    def log_metrics(self, metrics):
        self.summary = dict(metrics)

    def log_weights(self, folder):
        self.weights += 1
        assert (folder / "model.safetensors").is_file() and (folder / "model_config.json").is_file()


def test_fixed_trial_returns_validation_accuracy(objective: Objective) -> None:
    run = Recorder()
    value = objective(optuna.trial.FixedTrial(PARAMS), run)
    assert 0.5 < value <= 1.0
    assert [e for e, _ in run.epochs] == [1, 2]
    assert run.epochs[-1][1]["val_accuracy"] == value
    assert run.params["n_parameters"] == 64 * 32 + 32 + 32 * 10 + 10
    assert run.params["width_0"] == 32


def test_same_trial_number_is_reproducible(objective: Objective) -> None:
    assert objective(optuna.trial.FixedTrial(PARAMS)) == objective(optuna.trial.FixedTrial(PARAMS))


def test_diverging_trial_fails_with_reason(objective: Objective) -> None:
    params = {**PARAMS, "optimizer": "sgd", "lr": 1e9}
    space = parse_space(TINY_SPACE.replace("high: 1.0e-2", "high: 1.0e12"), "wide.yaml")
    with pytest.raises(TrialFailed, match="training loss became (nan|inf)"):
        Objective(space, objective.data)(optuna.trial.FixedTrial(params))


def test_pruner_stops_a_weak_trial_at_the_first_epoch(objective: Objective) -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.1))
    run = Recorder()
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1"):
        objective(trial, run)
    assert len(run.epochs) == 1
    assert study.trials[0].intermediate_values.keys() == {1}


def test_weights_are_kept_only_for_a_new_best(objective: Objective) -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=1.0, params={}, distributions={}))
    run = Recorder()
    objective(study.ask(), run)
    assert run.weights == 0  # below the best so far
    study2 = optuna.create_study(direction="maximize")
    run2 = Recorder()
    objective(study2.ask(), run2)
    assert run2.weights == 1  # the first complete trial is the best so far
