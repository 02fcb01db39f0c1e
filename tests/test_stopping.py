"""Budgets checked before training, stopping at a goal or on lost patience, warm starts.

The objective runs with fixed parameters and in in-memory studies; searches run through the CLI on
real stores and are checked through `optuna.load_study` and `MlflowClient`."""

from __future__ import annotations

import datetime

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from automl import budget, record
from automl.data import load_dataset
from automl.keys import LATENCY_MS, NOT_RUN, STOP, STOP_REASON_TAG, WARM_START
from automl.objective import Objective
from automl.space import parse_space
from automl.stopping import (
    params_for,
    should_stop,
    stop_reason,
    stop_search,
    warm_start,
)
from automl.storage import open_storage
from tests.conftest import TINY_SPACE, cli
from tests.test_objective import PARAMS, Recorder

N_PARAMS = 64 * 32 + 32 + 32 * 10 + 10  # PARAMS: one hidden layer of 32 on 8x8 digits


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", seed=0)


def _space(extra: str = "", budget: str = "epochs: 2, trials: 3"):
    return parse_space(TINY_SPACE.replace("epochs: 2, trials: 3", budget) + extra, "tiny.yaml")


# --- constraints ---------------------------------------------------------------------------------


def test_parameter_budget_prunes_before_training(data) -> None:
    objective = Objective(_space("constraints: {max_parameters: 1000}\n"), data)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(PARAMS)
    trial, run = study.ask(), Recorder()
    with pytest.raises(optuna.TrialPruned) as caught:
        objective(trial, run)
    assert str(caught.value) == f"constraint: n_parameters={N_PARAMS} > max_parameters=1000"
    assert run.epochs == [] and run.params["n_parameters"] == N_PARAMS  # pruned untrained
    study.tell(trial, state=TrialState.PRUNED)
    frozen = study.trials[0]
    assert frozen.constraints == {"max_parameters": pytest.approx(N_PARAMS / 1000 - 1)}
    assert LATENCY_MS not in frozen.user_attrs  # no latency budget: nothing measured


def test_a_network_within_its_budgets_trains_and_is_feasible(data) -> None:
    objective = Objective(_space("constraints: {max_parameters: 1e6, max_latency_ms: 1.0e4}\n"), data)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(PARAMS)
    trial, run = study.ask(), Recorder()
    value = objective(trial, run)
    study.tell(trial, value)
    frozen = study.trials[0]
    assert len(run.epochs) == 2 and frozen.state == TrialState.COMPLETE
    assert frozen.constraints["max_parameters"] == pytest.approx(N_PARAMS / 1e6 - 1)
    assert 0 < frozen.user_attrs[LATENCY_MS] < 1.0e4
    assert frozen.constraints["max_latency_ms"] == pytest.approx(frozen.user_attrs[LATENCY_MS] / 1e4 - 1, abs=1e-6)
    assert all(v <= 0 for v in frozen.constraints.values())


def test_latency_budget_prunes_a_slow_network(data) -> None:
    objective = Objective(_space("constraints: {max_latency_ms: 1.0e-6}\n"), data)
    trial, run = optuna.trial.FixedTrial(PARAMS), Recorder()
    with pytest.raises(optuna.TrialPruned, match=r"^constraint: latency_ms=\d+\.\d{3} > max_latency_ms=1e-06$"):
        objective(trial, run)
    assert run.epochs == [] and trial.user_attrs[LATENCY_MS] > 0
    assert trial.constraints["max_latency_ms"] > 0


def test_search_records_constraint_pruned_trials_as_killed_runs(stores, write_space) -> None:
    # depth 1: width 16 has 1,210 parameters, width 64 has 4,810; the budget lies between
    space = TINY_SPACE.replace("depth: {type: int, low: 1, high: 2}", "depth: 1").replace(
        "width: {type: int, low: 16, high: 64, log: true}", "width: {type: categorical, choices: [16, 64]}")
    path = write_space(space + "constraints: {max_parameters: 3000}\n")
    assert cli("search", "--space", path, "--trials", "6", "--quiet", *stores.flags()) == 0
    study = optuna.load_study(study_name="tiny", storage=stores.storage_url)
    client = stores.client()
    states = {t.state for t in study.trials}
    assert states == {TrialState.COMPLETE, TrialState.PRUNED}, states
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        n = t.user_attrs["n_parameters"]
        if t.params["width_0"] == 64:
            reason = f"constraint: n_parameters={n} > max_parameters=3000"
            assert t.state == TrialState.PRUNED and t.user_attrs["pruned_reason"] == reason
            assert run.info.status == "KILLED" and run.data.tags["automl.fail_reason"] == reason
            assert t.intermediate_values == {} and "val_accuracy" not in run.data.metrics  # never trained
            assert t.constraints["max_parameters"] > 0
        else:
            assert t.state == TrialState.COMPLETE and run.info.status == "FINISHED"
            assert t.constraints["max_parameters"] <= 0


@pytest.mark.parametrize(("extra", "message"), [
    ("constraints: {max_parameters: 2.5}\n",
     "tiny.yaml: constraints.max_parameters: expected a whole number >= 1 (e.g. 1000000 or 1.0e6), got 2.5"),
    ("constraints: {max_parameters: true}\n", "tiny.yaml: constraints.max_parameters: expected a whole number"),
    ("constraints: {max_latency_ms: 0}\n", "tiny.yaml: constraints.max_latency_ms: expected a number > 0, got 0"),
    ("constraints: {max_flops: 3}\n",
     "tiny.yaml: constraints.max_flops: unknown key (expected one of: max_latency_ms, max_parameters)"),
])
def test_bad_constraints_are_one_line_errors(extra: str, message: str) -> None:
    from automl.space import SpaceError

    with pytest.raises(SpaceError) as caught:
        _space(extra)
    assert str(caught.value).startswith(message)


def test_max_parameters_may_be_written_as_a_float() -> None:
    assert _space("constraints: {max_parameters: 1e6}\n").max_parameters == 1_000_000
    assert _space("constraints: {max_parameters: 2.5e5}\n").max_parameters == 250_000


# --- stopping rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(("budget", "message"), [
    ("goal: 97", "tiny.yaml: budget.goal: val_accuracy lies in [0.0, 1.0], got 97.0"),
    ("goal: high", "tiny.yaml: budget.goal: expected a number, got 'high'"),
    ("patience: 0", "tiny.yaml: budget.patience: expected an integer >= 1, got 0"),
    ("patience: 2.5", "tiny.yaml: budget.patience: expected an integer >= 1, got 2.5"),
])
def test_bad_stopping_rules_are_one_line_errors(budget: str, message: str) -> None:
    from automl.space import SpaceError

    with pytest.raises(SpaceError) as caught:
        _space(budget=f"epochs: 2, trials: 3, {budget}")
    assert str(caught.value) == message


def test_no_rules_no_digest_change() -> None:
    plain = parse_space(TINY_SPACE, "tiny.yaml")
    assert _space().digest == plain.digest and plain.goal is None and plain.patience is None
    assert "constraints" not in plain.to_dict()
    assert _space(budget="epochs: 2, trials: 3, goal: 0.9").digest != plain.digest


START = datetime.datetime(2025, 1, 1)


def _study(values: list[float | str], direction: str = "maximize") -> optuna.Study:
    """Trials finished in the order given: a number is a complete trial with that value; "pruned",
    "fail", "constraint" (pruned by a constraint) and "not_run" (closed by a stop) are the others."""
    study = optuna.create_study(direction=direction)
    kinds = {"pruned": (TrialState.PRUNED, {}), "fail": (TrialState.FAIL, {}),
             "constraint": (TrialState.PRUNED, {"pruned_reason": "constraint: n_parameters=9 > max_parameters=1"}),
             "not_run": (TrialState.FAIL, {NOT_RUN: "goal reached"})}
    for v in values:
        state, attrs = kinds[v] if isinstance(v, str) else (TrialState.COMPLETE, {})
        study.add_trial(create_trial(state=state, value=None if isinstance(v, str) else v, params={"x": 0.5},
                                     distributions={"x": FloatDistribution(0, 1)}, user_attrs=attrs))
    return study


def test_goal_fires_on_a_complete_trial_that_reaches_it() -> None:
    space = _space(budget="epochs: 2, trials: 3, goal: 0.95")
    assert should_stop(_study([0.5, 0.94, "pruned"]), space) is None
    assert should_stop(_study([0.5, 0.95, 0.2]), space) == "goal reached: val_accuracy=0.9500 >= 0.95 (trial 1)"


def test_goal_of_a_minimised_metric() -> None:
    space = parse_space(TINY_SPACE.replace("metric: val_accuracy", "metric: val_loss").replace(
        "trials: 3", "trials: 3, goal: 0.1"), "tiny.yaml")
    assert should_stop(_study([0.5, 0.2], "minimize"), space) is None
    assert should_stop(_study([0.5, 0.08], "minimize"), space) == "goal reached: val_loss=0.0800 <= 0.1 (trial 1)"


def test_patience_counts_finished_trials_since_the_last_new_best() -> None:
    space = _space(budget="epochs: 2, trials: 3, patience: 3")
    assert should_stop(_study([0.5, 0.6, 0.55, "pruned"]), space) is None
    assert should_stop(_study([0.5, 0.6, 0.55, "pruned", "fail"]), space) == (
        "patience: 3 finished trials in a row without a new best (best val_accuracy=0.6000, trial 1)")
    assert should_stop(_study([0.5, 0.6, 0.55, "pruned", 0.7]), space) is None  # a new best resets it
    assert should_stop(_study([0.5, 0.6, 0.6, 0.6, 0.6]), space) is not None  # a tie is no improvement
    # trials stopped by a constraint never trained, and trials never run: neither counts
    assert should_stop(_study([0.5, 0.6, 0.55, "constraint", "not_run", "pruned"]), space) is None


def test_patience_follows_the_order_trials_finished_in() -> None:
    space = _space(budget="epochs: 2, trials: 3, patience: 2")
    study = _study([0.5, 0.4, 0.3, 0.9])
    trials = study.get_trials()
    for t, minute in zip(trials, (0, 1, 2, 3), strict=True):
        t.datetime_complete = START + datetime.timedelta(minutes=minute)
    assert should_stop(study, space, trials) is None  # 0.9 finished last: a new best
    trials[3].datetime_complete = START - datetime.timedelta(minutes=1)  # 0.9 finished first
    assert should_stop(study, space, trials) == (
        "patience: 3 finished trials in a row without a new best (best val_accuracy=0.9000, trial 3)")


def test_a_stop_closes_the_queue_and_later_trials_are_judged_afresh() -> None:
    space = _space(budget="epochs: 2, trials: 3, goal: 0.9")
    study = _study([0.95])
    for _ in range(3):
        study.enqueue_trial({})
    reason = should_stop(study, space)
    assert stop_search(study, study._storage, reason) == 3
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] + [TrialState.FAIL] * 3
    assert all(t.user_attrs[NOT_RUN] == reason for t in trials[1:])
    assert all(t.user_attrs["fail_reason"] == f"not run: {reason}" for t in trials[1:])
    assert study.user_attrs[STOP] == {"reason": reason, "mark": 4, "not_run": 3}
    assert should_stop(study, space) is None and stop_reason(study) == reason
    study.enqueue_trial({})  # a larger budget: the stop no longer holds, the rule is armed again
    assert stop_reason(study) is None and should_stop(study, space) is None


def test_search_stops_at_its_goal_and_resumes_with_a_larger_budget(stores, write_space) -> None:
    path = write_space(TINY_SPACE.replace("trials: 3", "trials: 5, goal: 0.2"))
    assert cli("search", "--space", path, "--quiet", *stores.flags()) == 0
    study = optuna.load_study(study_name="tiny", storage=stores.storage_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] + [TrialState.FAIL] * 4
    reason = f"goal reached: val_accuracy={study.trials[0].value:.4f} >= 0.2 (trial 0)"
    assert [t.user_attrs.get(NOT_RUN) for t in study.trials[1:]] == [reason] * 4
    client = stores.client()
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.data.tags.get("automl.role") == "study"]
    assert len(parent) == 1 and parent[0].data.tags[STOP_REASON_TAG] == reason
    assert len([r for r in runs if r.data.tags.get("automl.role") == "trial"]) == 1  # no run for trials not run

    assert cli("search", "--space", path, "--trials", "7", "--quiet", *stores.flags()) == 0
    study = optuna.load_study(study_name="tiny", storage=stores.storage_url)
    states = [t.state for t in study.trials]
    assert states[5:] == [TrialState.COMPLETE, TrialState.FAIL], states  # judged afresh: trial 5 ran
    assert study.trials[6].user_attrs[NOT_RUN].endswith("(trial 5)")
    assert not [t for t in study.trials if t.state == TrialState.WAITING]


# --- warm start -------------------------------------------------------------------------------


def test_params_for_keeps_what_the_space_asks_for_within_its_ranges() -> None:
    space = parse_space(TINY_SPACE.replace("high: 64, log: true", "high: 32, log: true").replace(
        "choices: [adam, sgd]", "choices: [adam, rmsprop]"), "new.yaml")
    kept = params_for(space, {"depth": 2, "width_0": 20, "width_1": 50, "activation": "tanh",
                              "optimizer": "sgd", "lr": 0.005, "sgd.momentum": 0.9, "gone": 1})
    assert kept == {"depth": 2, "width_0": 20, "activation": "tanh", "lr": 0.005}


def test_warm_start_runs_the_best_earlier_parameters_first(stores, write_space, data) -> None:
    source = write_space(TINY_SPACE.replace("trials: 3", "trials: 4"), "source.yaml")
    assert cli("search", "--space", source, "--quiet", *stores.flags()) == 0
    old = optuna.load_study(study_name="source", storage=stores.storage_url)
    best_first = sorted((t for t in old.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)

    # the new study: a wider learning rate range and gelu as well; its budget queued, not yet run
    new_text = TINY_SPACE.replace("[relu, tanh]", "[relu, tanh, gelu]").replace("low: 3.0e-3", "low: 1.0e-3")
    path = write_space(new_text, "new.yaml")
    space = parse_space(new_text, str(path))
    storage = open_storage(stores.storage_url)
    study, created = record.create_or_load("new", storage, space, 0, data.identity())
    assert created and budget.top_up_budget(study, 3, stores.storage_url, at_least=2) == 3
    placed = warm_start(study, storage, ["source"], k=2, space=space)
    assert placed == [best_first[0].params, best_first[1].params]
    assert warm_start(study, storage, ["source"], k=2, space=space) == []  # again: nothing new
    storage.engine.dispose()

    assert cli("search", "--space", path, "--study", "new", "--quiet", *stores.flags()) == 0
    study = optuna.load_study(study_name="new", storage=stores.storage_url)
    assert len(study.trials) == 3
    assert [t.params for t in study.trials[:2]] == placed  # the first trials ran those parameters
    assert [t.user_attrs[WARM_START] for t in study.trials[:2]] == [f"source#{t.number}" for t in best_first[:2]]
    assert WARM_START not in study.trials[2].user_attrs


def test_warm_start_refuses_unknown_studies(stores, data) -> None:
    from automl.errors import UsageError

    space = parse_space(TINY_SPACE, "tiny.yaml")
    storage = open_storage(stores.storage_url)
    study, _ = record.create_or_load("tiny", storage, space, 0, data.identity())
    with pytest.raises(UsageError, match="--warm-start: no study named 'nope' in this storage"):
        warm_start(study, storage, ["nope"], space=space)
    with pytest.raises(UsageError, match="cannot warm-start from itself"):
        warm_start(study, storage, ["tiny"], space=space)
    storage.engine.dispose()
