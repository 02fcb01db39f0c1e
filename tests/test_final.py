"""The seed-robust champion (`final: {top_k, seeds}`): ranking, retraining, records in both stores."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import automl
from automl.final import SeedScores, rank
from automl.keys import RUN_ID
from automl.selection import champion_trial, final_record, top_trials
from automl.tracking import FINAL_WEIGHTS_DIR
from tests.conftest import TINY_SPACE, cli


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


def test_search_with_final_registers_the_robust_winner(stores, tmp_path, capsys) -> None:
    """A real search with `final: {top_k: 2, seeds: 2}`: the top 2 trained again, mean ± std on
    their runs and the version, the winner's retrained weights registered; the same command again
    does not retrain."""
    space = tmp_path / "robust.yaml"
    space.write_text(TINY_SPACE.replace("trials: 3}", "trials: 4}") + "final: {top_k: 2, seeds: 2}\n")
    assert cli("search", "--space", space, *stores.flags()) == 0
    out = capsys.readouterr().out
    assert "final: training the top 2 configuration(s) with 2 seeds each" in out and "<- champion" in out

    study = optuna.load_study(study_name="robust", storage=stores.storage_url)
    record = final_record(study)
    assert sorted(map(int, record["trials"])) == sorted(t.number for t in top_trials(study, 2))
    scored = [SeedScores(int(n), s) for n, s in record["trials"].items()]
    assert all(len(s.scores) == 2 and s.scores[0] == study.trials[s.trial].value for s in scored)
    assert record["winner"] == rank(scored, "maximize")[0].trial == champion_trial(study).number

    client = stores.client()
    for s in scored:
        run = client.get_run(study.trials[s.trial].user_attrs[RUN_ID])
        assert run.data.metrics["final_seeds"] == 2
        assert run.data.metrics["final_mean_val_accuracy"] == pytest.approx(s.mean)
        assert run.data.metrics["final_std_val_accuracy"] == pytest.approx(s.std)
    winner_run = study.trials[record["winner"]].user_attrs[RUN_ID]
    assert {a.path for a in client.list_artifacts(winner_run)} >= {FINAL_WEIGHTS_DIR}
    version = client.get_model_version_by_alias("robust", "champion")
    assert version.tags["trial"] == str(record["winner"]) and version.tags["final_seeds"] == "2"
    assert automl.load_best("robust", tracking_uri=stores.tracking_uri).metadata["trial"] == record["winner"]

    assert cli("search", "--space", space, *stores.flags()) == 0  # nothing left to run or retrain
    assert "final: training" not in capsys.readouterr().out
    assert len(client.search_model_versions("name='robust'")) == 1


def test_final_needs_two_seeds_and_one_objective(stores, tmp_path, capsys) -> None:
    for extra, message in [("final: {top_k: 2}\n", "final.seeds: missing"),
                           ("final: {seeds: 1}\n", "final.seeds: expected a whole number >= 2"),
                           ("objective: {metrics: [val_accuracy, n_parameters]}\nfinal: {seeds: 2}\n",
                            "final: the seed-robust final phase ranks one objective")]:
        space = tmp_path / "bad.yaml"
        space.write_text(TINY_SPACE.replace("objective: {metric: val_accuracy}\n", "") + extra)
        assert cli("search", "--space", space, *stores.flags()) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "optuna.db").exists() or not optuna.get_all_study_names(stores.storage_url)
