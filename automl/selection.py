"""The champion of a study: the trial whose network is evaluated, logged and registered.

- One objective: Optuna's best trial (`study.best_trial`), or, after a seed-robust final phase
  (`final: {top_k, seeds}`, automl.final), the configuration it ranked first.
- Several (`objective.metrics`, e.g. `[val_accuracy, n_parameters]`): the Pareto front is the set of
  complete trials that no other complete trial beats on one metric without losing on another
  (Optuna's `study.best_trials`). The champion is the front's best trial on `objective.select.best`
  (default: the first metric), among the front trials that meet every `objective.select.where`
  condition (e.g. `{latency_ms: "<= 2"}`); ties go to the better first metric, then the lower trial
  number. When no front trial meets the conditions, the champion is the best of the whole front
  and `champion_note` says so (a search that ran is never left without a model; a hard limit belongs
  in `constraints`, which prunes a network before it trains).

A trial that meets the conditions but is off the front never wins: it is dominated by a front
trial, which is no worse on every metric and so meets the conditions too.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from automl.keys import FINAL_SEEDS
from automl.space.schema import parse_condition

# study user attribute of a multi-objective study: {"best": metric, "where": {metric: "<= 2"}}
# (a candidate for automl.keys)
SELECT = "automl.select"

OPERATORS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


def is_multi_objective(study: optuna.Study) -> bool:
    """Whether the study optimises several metrics."""
    return len(study.directions) > 1


def metric_names(study: optuna.Study) -> list[str]:
    """The study's objective names (`set_metric_names`), or `objective_<i>` where none were set."""
    names = study.metric_names
    return list(names) if names else [f"objective_{i}" for i in range(len(study.directions))]


def primary_value(trial: FrozenTrial | float | Sequence[float] | None) -> float | None:
    """The first metric's value of a trial (or of what an objective returned): `value` for one
    objective, `values[0]` for several; None when there is none."""
    values: Any = trial.values if isinstance(trial, FrozenTrial) else trial
    if values is None or isinstance(values, (int, float)):
        return values
    return float(values[0]) if len(values) else None


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[StudyDirection]) -> bool:
    """Whether values `a` are no worse than `b` on every objective and better on one."""
    signs = [1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in directions]
    pairs = [(s * x, s * y) for s, x, y in zip(signs, a, b, strict=True)]
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def select_rule(study: optuna.Study) -> tuple[str, dict[str, str]]:
    """(best, where) of a multi-objective study: the metric that picks the champion on the front and
    the conditions front trials must meet."""
    rule = study.user_attrs.get(SELECT) or {}
    return str(rule.get("best") or metric_names(study)[0]), dict(rule.get("where") or {})


def meets(trial: FrozenTrial, names: Sequence[str], where: dict[str, str]) -> bool:
    """Whether a complete trial meets every `where` condition on its objective values."""
    for metric, condition in where.items():
        op, limit = parse_condition(condition)
        if not OPERATORS[op](trial.values[names.index(metric)], limit):
            return False
    return True


def _choose(study: optuna.Study) -> tuple[FrozenTrial | None, list[FrozenTrial], int]:
    """(champion, Pareto front, how many front trials meet the conditions) of a multi-objective study."""
    front = study.best_trials
    names, directions = metric_names(study), study.directions
    best, where = select_rule(study)
    candidates = [t for t in front if meets(t, names, where)]
    pool = candidates or front
    if not pool:
        return None, front, 0
    i = names.index(best)

    def key(t: FrozenTrial) -> tuple[float, float, int]:
        sign = -1.0 if directions[i] == StudyDirection.MAXIMIZE else 1.0
        first = -1.0 if directions[0] == StudyDirection.MAXIMIZE else 1.0
        return sign * t.values[i], first * t.values[0], t.number

    return min(pool, key=key), front, len(candidates)


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The k best complete trials of a single-objective study, best first; equal values in trial order."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    return sorted(complete, key=lambda t: (sign * float(t.value), t.number))[:k]  # type: ignore[arg-type]


def final_record(study: optuna.Study) -> dict[str, Any]:
    """What the seed-robust final phase stored: {"top_k", "seeds", "trials": {number: scores}, "winner"}."""
    return dict(study._storage.get_study_system_attrs(study._study_id).get(FINAL_SEEDS) or {})


def final_winner(study: optuna.Study) -> int | None:
    """The trial the seed-robust final phase (automl.final) picked, while its top-k are still the
    study's top-k (a resumed search that finds better trials makes it stale: None)."""
    record = final_record(study)
    if not record or record.get("winner") is None:
        return None
    current = [t.number for t in top_trials(study, int(record["top_k"]))]
    return int(record["winner"]) if sorted(current) == sorted(map(int, record["trials"])) else None


def champion_trial(study: optuna.Study) -> FrozenTrial:
    """A drop-in for `study.best_trial` that also works on multi-objective studies: there, the
    champion of the Pareto front by the study's `objective.select` rule, as a copy whose `value`
    is its first metric (all of its values: `study.trials[number].values`). Raises ValueError when
    no trial is complete, as `best_trial` does."""
    if not is_multi_objective(study):
        winner = final_winner(study)
        if winner is None:
            return study.best_trial
        storage = study._storage
        return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, winner))
    trial = _choose(study)[0]
    if trial is None:
        raise ValueError("no complete trial yet")
    return optuna.trial.FrozenTrial(
        number=trial.number, state=trial.state, value=trial.values[0], values=None,
        datetime_start=trial.datetime_start, datetime_complete=trial.datetime_complete, params=trial.params,
        distributions=trial.distributions, user_attrs=trial.user_attrs, system_attrs=trial.system_attrs,
        intermediate_values=trial.intermediate_values, trial_id=trial._trial_id)


def pareto_numbers(study: optuna.Study) -> set[int]:
    """The numbers of the trials on the Pareto front (empty for a single-objective study)."""
    return {t.number for t in study.best_trials} if is_multi_objective(study) else set()


def champion_note(study: optuna.Study) -> str | None:
    """One line on how the champion of a multi-objective study was chosen (None for one objective
    or when no trial is complete)."""
    if not is_multi_objective(study):
        return None
    trial, front, qualifying = _choose(study)
    if trial is None:
        return None
    best, where = select_rule(study)
    conditions = " and ".join(f"{m} {c}" for m, c in where.items())
    values = ", ".join(f"{m}={_show(v)}" for m, v in zip(metric_names(study), trial.values, strict=True))
    if where and not qualifying:
        return (f"no trial on the Pareto front ({len(front)} trials) has {conditions}; champion: trial "
                f"{trial.number}, the best {best} of the whole front ({values})")
    among = f"{qualifying} of the {len(front)} Pareto-front trials with {conditions}" if where else \
        f"the {len(front)} Pareto-front trials"
    return f"champion: trial {trial.number}, the best {best} of {among} ({values})"


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"

