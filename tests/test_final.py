"""The seed-robust champion (`final: {top_k, seeds}`): ranking, retraining, records in both stores."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from automl.final import SeedScores, rank
from automl.selection import top_trials


def _study(values: list[float | None], direction: str = "maximize") -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for value in values:
        state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
        study.add_trial(create_trial(state=state, value=value, params={"x": 0.5},
                                     distributions={"x": FloatDistribution(0, 1)}))
    return study


def test_top_trials_are_the_best_complete_ones_ties_by_trial_number() -> None:
    study = _study([0.9, None, 0.95, 0.95, 0.8])
    assert [t.number for t in top_trials(study, 3)] == [2, 3, 0]
    assert [t.number for t in top_trials(_study([0.3, 0.1, 0.2], "minimize"), 2)] == [1, 2]


def test_a_steady_configuration_beats_a_lucky_seed() -> None:
    lucky = SeedScores(trial=3, scores=[0.99, 0.90, 0.91])  # mean 0.933, std 0.049
    steady = SeedScores(trial=7, scores=[0.96, 0.95, 0.96])  # mean 0.957, std 0.006
    assert [r.trial for r in rank([lucky, steady], "maximize")] == [7, 3]
    assert steady.robust("maximize") == pytest.approx(steady.mean - steady.std)
    # to minimize, the spread counts against as well
    low = SeedScores(trial=1, scores=[0.10, 0.30])
    high = SeedScores(trial=2, scores=[0.21, 0.22])
    assert [r.trial for r in rank([low, high], "minimize")] == [2, 1]


def test_equal_robust_scores_keep_the_earlier_trial() -> None:
    a, b = SeedScores(trial=5, scores=[0.9, 0.9]), SeedScores(trial=2, scores=[0.9, 0.9])
    assert [r.trial for r in rank([a, b], "maximize")] == [2, 5]
