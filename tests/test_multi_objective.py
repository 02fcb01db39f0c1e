"""Accuracy against size and latency: `objective.metrics`, pruning without `Trial.report`, the Pareto
front in the report and the plots, the champion rule.

Unit tests run on real Optuna studies (in memory or SQLite) with hand-made trials
(`optuna.trial.create_trial`) or the real objective; the end-to-end test drives the CLI on real
stores and checks them through `optuna.load_study` and `MlflowClient`."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from automl import record
from automl.data import load_dataset
from automl.keys import LATENCY_MS, N_PARAMETERS, PRUNED_REASON
from automl.objective import Objective
from automl.plots import plot_copy, write_plots
from automl.pruning import LEARNING_CURVE, curve_of, prune_reason
from automl.report import studies_table, trials_table
from automl.selection import SELECT, champion_note, champion_trial, pareto_numbers, primary_value
from automl.space import SpaceError, parse_space
from automl.stopping import should_stop
from automl.storage import open_storage
from tests.conftest import TINY_SPACE, cli
from tests.test_objective import PARAMS, Recorder

SIZE = "objective: {metrics: [val_accuracy, n_parameters]}"
MULTI_SPACE = TINY_SPACE.replace("objective: {metric: val_accuracy}", SIZE)
N_PARAMS = 64 * 32 + 32 + 32 * 10 + 10  # PARAMS: one hidden layer of 32 on 8x8 digits
N_SMALL = 64 * 16 + 16 + 16 * 10 + 10  # the same with 16 units


def _space(objective: str = SIZE, extra: str = ""):
    return parse_space(TINY_SPACE.replace("objective: {metric: val_accuracy}", objective) + extra, "mo.yaml")


def _study(select: dict | None = None) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["val_accuracy", "n_parameters"])
    if select is not None:
        study.set_user_attr(SELECT, select)
    return study


def _add(study: optuna.Study, accuracy: float, n: int, curve: dict[int, float] | None = None,
         state: TrialState = TrialState.COMPLETE) -> None:
    """A finished trial as a multi-objective search leaves it: its values, its size and its learning
    curve (a user attribute: Optuna's intermediate values are single-objective)."""
    curve = curve or {1: accuracy - 0.05, 2: accuracy}
    study.add_trial(create_trial(
        state=state, values=[accuracy, n] if state == TrialState.COMPLETE else None,
        params={"width": n}, distributions={"width": IntDistribution(1, 10**7)},
        user_attrs={N_PARAMETERS: n, LEARNING_CURVE: {str(e): v for e, v in curve.items()}}))


# --- the space ---------------------------------------------------------------------------------


def test_metrics_give_directions_and_a_default_champion_rule() -> None:
    space = _space("objective: {metrics: [val_accuracy, n_parameters, latency_ms], "
                   "select: {where: {latency_ms: '<=2'}}}")
    assert space.multi_objective and space.metrics == ("val_accuracy", "n_parameters", "latency_ms")
    assert space.directions == ("maximize", "minimize", "minimize")
    assert (space.metric, space.direction) == ("val_accuracy", "maximize")
    assert (space.select_best, space.select_where) == ("val_accuracy", {"latency_ms": "<= 2"})
    assert parse_space(space.to_yaml(), "again.yaml") == space  # round trip, defaults filled in


def test_one_metric_stays_single_objective() -> None:
    space = parse_space(TINY_SPACE, "tiny.yaml")
    assert not space.multi_objective and space.metrics == ("val_accuracy",) and space.directions == ("maximize",)
    assert set(space.to_dict()["objective"]) == {"metric", "direction"}  # nothing new in the digest


@pytest.mark.parametrize("objective, extra, message", [
    ("objective: {metrics: [val_accuracy, flops]}", "",
     "mo.yaml: objective.metrics[1]: expected one of n_parameters, latency_ms (measured before training), "
     "got 'flops'"),
    ("objective: {metrics: [val_acc, n_parameters]}", "",
     "mo.yaml: objective.metrics[0]: the first metric is the one trained for: expected one of val_accuracy, "
     "val_loss for a classification dataset, got 'val_acc'"),
    ("objective: {metrics: [n_parameters, val_accuracy]}", "", "objective.metrics[0]: the first metric"),
    ("objective: {metrics: [val_accuracy, n_parameters, n_parameters]}", "",
     "mo.yaml: objective.metrics[2]: 'n_parameters' is listed twice"),
    ("objective: {metrics: [val_accuracy]}", "", "objective.metrics: expected two or more metrics"),
    ("objective: {metrics: val_accuracy}", "", "objective.metrics: expected a list of metric names"),
    ("objective: {metrics: [val_accuracy, n_parameters], select: {best: latency_ms}}", "",
     "mo.yaml: objective.select.best: expected one of the objective's metrics (val_accuracy, n_parameters), "
     "got 'latency_ms'"),
    ("objective: {metrics: [val_accuracy, n_parameters], select: {where: {latency_ms: '<= 2'}}}", "",
     "mo.yaml: objective.select.where.latency_ms: expected one of the objective's metrics"),
    ("objective: {metrics: [val_accuracy, n_parameters], select: {where: {n_parameters: 'small'}}}", "",
     "objective.select.where.n_parameters: expected a condition such as \"<= 2\" or \">= 0.95\", got 'small'"),
    ("objective: {metric: val_accuracy, select: {best: val_accuracy}}", "",
     "mo.yaml: objective.select: only with objective.metrics (a multi-objective search)"),
    ("objective: {metric: val_accuracy, metrics: [val_accuracy, n_parameters]}", "",
     "objective.metric: give objective.metric (one) or objective.metrics (several), not both"),
    ("objective: {direction: minimize, metrics: [val_accuracy, n_parameters]}", "",
     "objective.direction: the directions follow from objective.metrics"),
    ("objective: {metrics: [val_accuracy, latency_ms]}", "constraints: {max_latency_ms: 2}\n",
     "constraints.max_latency_ms: bounds one evaluation batch's latency"),
    (SIZE, "", None),
])
def test_bad_objectives_are_one_line_errors(objective: str, extra: str, message: str | None) -> None:
    if message is None:
        _space(objective, extra)
        return
    with pytest.raises(SpaceError) as caught:
        _space(objective, extra)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_hyperband_is_refused_in_a_multi_objective_search() -> None:
    with pytest.raises(SpaceError, match="pruner.name: a multi-objective search prunes with median, "
                                         "percentile or none, not hyperband"):
        _space().with_algorithms(None, "hyperband")


def test_the_study_is_created_with_directions_metric_names_and_the_rule(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    data = load_dataset("digits", seed=0).identity()
    space = _space("objective: {metrics: [val_accuracy, n_parameters], select: {where: {n_parameters: '< 5e3'}}}")
    study, created = record.create_or_load("mo", storage, space, 0, data)
    loaded = optuna.load_study(study_name="mo", storage=storage)
    assert created and [d.name for d in loaded.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert loaded.metric_names == ["val_accuracy", "n_parameters"]
    assert loaded.user_attrs[SELECT] == {"best": "val_accuracy", "where": {"n_parameters": "< 5000"}}
    single, _ = record.create_or_load("one", storage, parse_space(TINY_SPACE, "tiny.yaml"), 0, data)
    one = optuna.load_study(study_name="one", storage=storage)
    assert one.metric_names == ["val_accuracy"] and SELECT not in one.user_attrs
    storage.engine.dispose()


# --- pruning -------------------------------------------------------------------------------------

PRUNE = "pruner: {name: median, options: {n_startup_trials: 2, n_warmup_steps: 1}}"


def _pruning_space():
    return parse_space(MULTI_SPACE.replace("pruner: {name: none}", PRUNE), "mo.yaml")


def _peers() -> optuna.Study:
    study = _study()
    _add(study, 0.95, 2000, {1: 0.90, 2: 0.95})
    _add(study, 0.96, 5000, {1: 0.92, 2: 0.96})
    _add(study, 0.97, 20000, {1: 0.93, 2: 0.97})
    return study


def test_a_weak_dominated_trial_is_pruned_and_a_small_decent_one_survives() -> None:
    study, space = _peers(), _pruning_space()
    reason = prune_reason(study, space, {"n_parameters": 50000}, {1: 0.6})  # large and weak: 3 peers
    assert reason == ("median rule: worse than the median (0.9200) of the 3 complete trial(s) no worse on "
                      "n_parameters at this epoch")
    assert prune_reason(study, space, {"n_parameters": 1000}, {1: 0.8}) is None  # smaller than all: no peer
    assert prune_reason(study, space, {"n_parameters": 6000}, {1: 0.91}) is None  # median of 0.90, 0.92
    assert "median (0.9100) of the 2 complete" in prune_reason(study, space, {"n_parameters": 6000}, {1: 0.90})


def test_the_percentile_pruner_keeps_its_percentile_among_peers() -> None:
    space = parse_space(MULTI_SPACE.replace("pruner: {name: none}", PRUNE.replace(
        "median, options: {", "percentile, options: {percentile: 25, ")), "p.yaml")
    reason = prune_reason(_peers(), space, {"n_parameters": 50000}, {1: 0.921})  # peers 0.90, 0.92, 0.93
    assert reason == ("percentile rule: outside the kept 25% (0.9250) of the 3 complete trial(s) no worse on "
                      "n_parameters at this epoch")
    assert prune_reason(_peers(), space, {"n_parameters": 50000}, {1: 0.926}) is None


def test_pruning_waits_for_warmup_and_startup_trials() -> None:
    space = parse_space(MULTI_SPACE.replace("pruner: {name: none}", PRUNE.replace("n_warmup_steps: 1",
                                                                                  "n_warmup_steps: 2")), "w.yaml")
    assert prune_reason(_peers(), space, {"n_parameters": 50000}, {1: 0.1}) is None  # epoch 1 < warm-up
    assert prune_reason(_peers(), space, {"n_parameters": 50000}, {1: 0.1, 2: 0.1}) is not None
    few = _study()
    _add(few, 0.99, 10)
    assert prune_reason(few, _pruning_space(), {"n_parameters": 50000}, {1: 0.1}) is None  # 1 < 2 startup
    assert prune_reason(_peers(), _space(), {"n_parameters": 50000}, {1: 0.1}) is None  # pruner none


@pytest.mark.parametrize("curve", [{1: 0.5}, {1: 0.92}, {1: 0.915}, {1: 0.93}, {1: 0.80, 2: 0.959}, {1: 0.8, 2: 0.96}])
def test_among_all_trials_the_rule_is_optunas_median_pruner(curve: dict[int, float]) -> None:
    """A trial larger than every other has them all as peers: the decision is MedianPruner's."""
    single = optuna.create_study(direction="maximize")
    for t in _peers().trials:
        single.add_trial(create_trial(value=t.values[0], intermediate_values=curve_of(t)))
    running = create_trial(state=TrialState.RUNNING, intermediate_values=curve)
    expected = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1).prune(single, running)
    assert (prune_reason(_peers(), _pruning_space(), {"n_parameters": 10**6}, curve) is not None) == expected


def test_the_objective_prunes_a_larger_weaker_network_and_trains_a_smaller_one() -> None:
    """Real training in a real study: a perfect 1,500-parameter trial is the only complete one."""
    space = parse_space(MULTI_SPACE.replace("pruner: {name: none}",
                                            "pruner: {name: median, options: {n_startup_trials: 1}}"), "mo.yaml")
    objective = Objective(space, load_dataset("digits", seed=0))
    study = _study()
    study.sampler = optuna.samplers.TPESampler(n_startup_trials=1, seed=0)
    _add(study, 1.0, 1500, {1: 1.0, 2: 1.0})
    study.enqueue_trial(PARAMS)  # 2,410 parameters: the perfect trial is a peer
    study.enqueue_trial({**PARAMS, "width_0": 16})  # 1,210: no peer
    larger, run = study.ask(), Recorder()
    with pytest.raises(optuna.TrialPruned, match=r"^pruned at epoch 1 with val_accuracy=0\.\d+ \(median rule: "
                                                 r"worse than the median \(1\.0000\) of the 1 complete trial\(s\) no "
                                                 r"worse on n_parameters at this epoch\)$"):
        objective(larger, run)
    study.tell(larger, state=TrialState.PRUNED)
    pruned = study.trials[1]
    assert curve_of(pruned).keys() == {1} and pruned.intermediate_values == {} and pruned.values is None
    smaller, run = study.ask(), Recorder()
    values = objective(smaller, run)
    study.tell(smaller, values)
    assert values[1] == N_SMALL and 0.5 < values[0] < 1 and [e for e, _ in run.epochs] == [1, 2]
    assert curve_of(study.trials[2]).keys() == {1, 2}
    assert run.weights == 1  # on the front (smaller than the perfect trial): its weights are kept
    assert pareto_numbers(study) == {0, 2}
    assert 16 <= study.ask().suggest_int("width_0", 16, 64, log=True) <= 64  # TPE reads the pruned trial


def test_fixed_trial_returns_every_objective_with_the_latency_of_one_input() -> None:
    space = _space("objective: {metrics: [val_accuracy, latency_ms, n_parameters]}")
    trial = optuna.trial.FixedTrial(PARAMS)
    accuracy, latency, n = Objective(space, load_dataset("digits", seed=0))(trial, Recorder())
    assert 0.5 < accuracy <= 1 and n == N_PARAMS and 0 < latency < 1000
    assert trial.user_attrs[LATENCY_MS] == latency


# --- the champion --------------------------------------------------------------------------------


def _front() -> optuna.Study:
    study = _study()
    _add(study, 0.90, 1000)   # 0: front
    _add(study, 0.95, 4000)   # 1: front
    _add(study, 0.93, 8000)   # 2: dominated by 1
    _add(study, 0.97, 30000)  # 3: front
    _add(study, 0.5, 90000, {1: 0.5}, TrialState.PRUNED)  # 4
    return study


def test_the_default_champion_is_the_best_first_metric_on_the_front() -> None:
    study = _front()
    champion = champion_trial(study)
    assert champion.number == 3 and champion.value == 0.97 and champion.params == {"width": 30000}
    assert champion.user_attrs[N_PARAMETERS] == 30000
    assert champion_note(study) == ("champion: trial 3, the best val_accuracy of the 3 Pareto-front trials "
                                    "(val_accuracy=0.97, n_parameters=30000)")


def test_where_limits_the_front_and_best_can_be_another_metric() -> None:
    study = _front()
    study.set_user_attr(SELECT, {"best": "val_accuracy", "where": {"n_parameters": "<= 5000"}})
    assert champion_trial(study).number == 1
    assert champion_note(study).startswith("champion: trial 1, the best val_accuracy of 2 of the 3 Pareto-front "
                                           "trials with n_parameters <= 5000")
    study.set_user_attr(SELECT, {"best": "n_parameters", "where": {"val_accuracy": ">= 0.94"}})
    assert champion_trial(study).number == 1  # the smallest network with at least 0.94


def test_when_no_front_trial_qualifies_the_best_of_the_front_is_champion_and_the_note_says_so() -> None:
    study = _front()
    study.set_user_attr(SELECT, {"best": "val_accuracy", "where": {"n_parameters": "< 500"}})
    assert champion_trial(study).number == 3
    assert champion_note(study) == ("no trial on the Pareto front (3 trials) has n_parameters < 500; champion: "
                                    "trial 3, the best val_accuracy of the whole front (val_accuracy=0.97, "
                                    "n_parameters=30000)")


def test_single_objective_champion_is_optunas_best_trial() -> None:
    study = optuna.create_study(direction="minimize")
    for value in (0.3, 0.1, 0.1, 0.2):
        study.add_trial(create_trial(value=value))
    assert champion_trial(study).number == study.best_trial.number == 1
    assert champion_note(study) is None and pareto_numbers(study) == set()
    assert primary_value(study.trials[1]) == 0.1 and primary_value([0.5, 3.0]) == 0.5 and primary_value(None) is None
    with pytest.raises(ValueError):
        champion_trial(_study())


def test_goal_and_patience_read_the_first_metric() -> None:
    space = parse_space(MULTI_SPACE.replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 2, goal: 0.96}"),
                        "g.yaml")
    assert should_stop(_front(), space) == "goal reached: val_accuracy=0.9700 >= 0.96 (trial 3)"


# --- report and plots ----------------------------------------------------------------------------


def test_report_marks_the_front_and_lists_the_champion_first() -> None:
    study = _front()
    study.set_user_attr(SELECT, {"best": "val_accuracy", "where": {"n_parameters": "<= 5000"}})
    table = trials_table(study)
    assert list(table["number"]) == [1, 3, 0, 2, 4]  # champion, the rest of the front, the rest, pruned
    assert list(table["pareto"]) == ["*", "*", "*", "", ""]
    assert list(table.columns[:5]) == ["number", "state", "value", "n_parameters", "pareto"]
    assert list(table["n_parameters"]) == [4000, 30000, 1000, 8000, 90000]  # the pruned one's, too
    row = studies_table(study._storage).iloc[0]
    assert (row["direction"], row["metric"], row["best_trial"], row["best_value"]) == (
        "maximize, minimize", "val_accuracy, n_parameters", 1, 0.95)


def test_plots_draw_the_pareto_front_and_label_epochs(tmp_path: Path) -> None:
    study = _front()
    for i in range(4):
        study.add_trial(create_trial(values=[0.8 + i / 100, 500 + i], user_attrs={LEARNING_CURVE: {"1": 0.7}},
                                     params={"width": 100 + i, "lr": 0.1 * (i + 1)},
                                     distributions={"width": IntDistribution(1, 10**7),
                                                    "lr": FloatDistribution(0.01, 1.0)}))
    names = {p.name for p in write_plots(plot_copy(study), tmp_path)}
    assert {"pareto_front.png", "learning_curves.png", "optimization_history.png", "study_plots.html"} <= names
    html = (tmp_path / "study_plots.html").read_text()
    assert "Pareto front" in html and "champion (trial 3)" in html
    assert '"name":"Trial4 (pruned)"' in html  # learning curves from the trials' attribute
    assert '"title":{"text":"epoch"}' in html and "Intermediate Value" not in html


def test_single_objective_plots_label_epochs_and_draw_no_front(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    study.set_metric_names(["val_accuracy"])
    for i in range(3):
        study.add_trial(create_trial(value=0.9 + i / 100, intermediate_values={1: 0.8, 2: 0.9 + i / 100}))
    names = {p.name for p in write_plots(plot_copy(study), tmp_path)}
    assert "pareto_front.png" not in names and "learning_curves.png" in names
    html = (tmp_path / "study_plots.html").read_text()
    assert '"title":{"text":"epoch"}' in html and '"title":{"text":"val_accuracy"}' in html


# --- end to end (needs the champion_trial/primary_value calls in worker, launch, publish, api, queries) ---


def test_multi_objective_digits_search_end_to_end(stores, write_space, capsys) -> None:
    space = write_space(MULTI_SPACE.replace("objective: {metrics: [val_accuracy, n_parameters]}",
                                            "objective: {metrics: [val_accuracy, n_parameters], "
                                            "select: {where: {n_parameters: '<= 3000'}}}")
                        .replace("trials: 3", "trials: 5")
                        .replace("sampler: {name: random}", "sampler: {name: tpe, options: {n_startup_trials: 2}}")
                        .replace("pruner: {name: none}", PRUNE), "mo.yaml")
    assert cli("search", "--space", space, "--seed", "1", *stores.flags()) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="mo", storage=stores.storage_url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "n_parameters"]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(t.values[1] == t.user_attrs[N_PARAMETERS] for t in complete)
    assert all(len(curve_of(t)) == 2 and not t.intermediate_values for t in complete)
    for t in study.trials:
        if t.state == TrialState.PRUNED:  # the multi-objective rule, with the curve up to that epoch
            epochs = len(curve_of(t))
            assert t.user_attrs[PRUNED_REASON].startswith(f"pruned at epoch {epochs} with val_accuracy=")
            assert "median rule: worse than the median" in t.user_attrs[PRUNED_REASON]
    champion = champion_trial(study)
    assert champion.number in pareto_numbers(study)
    assert f"best trial {champion.number}: val_accuracy={champion.value:.4f}" in out

    client = stores.client()
    version = client.get_model_version_by_alias("mo", "champion")
    assert version.tags["trial"] == str(champion.number)
    experiment = client.get_experiment_by_name("mo")
    parent = next(r for r in client.search_runs([experiment.experiment_id])
                  if r.data.tags.get("automl.role") == "study")
    assert parent.data.tags["automl.best_trial"] == str(champion.number)
    plots = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"pareto_front.png", "study_plots.html", "learning_curves.png"} <= plots

    assert cli("report", "--study", "mo", "--json", *stores.flags()) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["number"] == champion.number and rows[0]["pareto"] == "*"
    assert {r["number"] for r in rows if r["pareto"] == "*"} == pareto_numbers(study)
    assert cli("best", "--study", "mo", "--json", *stores.flags()) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["trial"] == champion.number and best["value"] == champion.value
