"""The pruning checks' view of the study (automl.pruning.StudySnapshot): one reading of the
trials serves a trial's epochs, and the pruners decide with it as with Optuna's own check."""

from __future__ import annotations

import copy

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from automl.pruning import StudySnapshot, should_prune


def _study(pruner: optuna.pruners.BasePruner, curves: list[list[float]]) -> optuna.Study:
    """A study whose trials ran `curves` under `pruner` (reported, checked and told as a search does)."""
    study = optuna.create_study(study_name="p", direction="maximize", pruner=pruner)
    for curve in curves:
        trial = study.ask({"x": FloatDistribution(0, 1)})
        for step, value in enumerate(curve):
            trial.report(value, step)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, curve[-1])
    return study


def test_the_snapshot_reads_the_trials_again_only_once_its_reading_is_old() -> None:
    study = _study(optuna.pruners.NopPruner(), [[0.1], [0.2]])
    kept, fresh = StudySnapshot(study, max_age_s=600), StudySnapshot(study, max_age_s=0)
    assert len(kept.get_trials(states=(TrialState.COMPLETE,))) == len(fresh.get_trials()) == 2
    study.add_trial(create_trial(value=0.3))
    assert len(kept.get_trials(states=(TrialState.COMPLETE,))) == 2  # the reading holds
    assert len(fresh.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert kept.direction == study.direction and kept.study_name == study.study_name  # the rest is the study's


@pytest.mark.parametrize("pruner", [
    optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    optuna.pruners.PercentilePruner(25.0, n_startup_trials=2),
    optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
    optuna.pruners.HyperbandPruner(min_resource=1, max_resource=6, reduction_factor=2),
    optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(n_startup_trials=2), patience=1),
], ids=["median", "percentile", "successive_halving", "hyperband", "patient"])
def test_pruners_decide_with_the_snapshot_as_with_optunas_own_check(pruner) -> None:
    curves = [[0.2 + 0.1 * i + 0.01 * step for step in range(6)] for i in range(5)]
    decisions = []
    for values in ([0.1, 0.09, 0.08, 0.07, 0.06, 0.05], [0.9, 0.91, 0.92, 0.93, 0.94, 0.95]):
        # two identical studies: one checked through a snapshot, the other by Optuna's own check
        mine, theirs = _study(copy.deepcopy(pruner), curves), _study(copy.deepcopy(pruner), curves)
        trial, twin = mine.ask(), theirs.ask()
        snapshot = StudySnapshot(mine, max_age_s=600)
        for step, value in enumerate(values):
            trial.report(value, step)
            twin.report(value, step)
            ours, optunas = should_prune(trial, snapshot), twin.should_prune()
            assert ours == optunas, (step, value)
            decisions.append(ours)
    assert True in decisions and False in decisions  # both outcomes were compared


def test_a_trial_without_a_study_is_judged_by_its_own_check() -> None:
    trial = optuna.trial.FixedTrial({"x": 0.5})
    trial.report(0.1, 0)
    assert should_prune(trial, None) is False
