"""Budgets and stopping rules of a search: constraints checked before a trial trains, stopping at a
goal or after a run of trials without a new best, and warm starts from earlier studies.

- Constraints (`constraints.max_parameters`, `constraints.max_latency_ms`): checked by the objective
  as soon as the network is built. A trial that breaks one is PRUNED at once (its MLflow run KILLED,
  the reason `constraint: n_parameters=1234567 > max_parameters=1000000`), and every trial of a
  constrained space carries its constraint values through `Trial.set_constraint` (Optuna 5; the
  samplers' `constraints_func` is deprecated there): `value / limit - 1`, feasible when <= 0. TPE
  ranks infeasible trials below every feasible one, by how far they overshoot.
- Stopping (`budget.goal`, `budget.patience`): `should_stop` is a pure rule over the study's trials;
  the worker that sees it fire closes the queue (`stop_search`): the rest of the budget is queued
  (automl.budget), every WAITING trial is claimed and
  marked FAIL with the user attribute `not_run` (Optuna cannot delete a trial, and a FAIL trial
  with that mark is never mistaken for a failed one), the study records the stop, and workers
  elsewhere find the queue empty. Trials not run count towards `--trials` as any other trial, so
  the same command again runs nothing; a larger `--trials` queues more and the rules look only at
  trials queued after the last stop.
- Warm start (`warm_start`): the best parameter sets of earlier studies in the same storage become
  the fixed parameters of the first queued trials.
"""

from __future__ import annotations

import contextlib
import datetime
import statistics
import time
from collections.abc import Iterable
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from automl.budget import queue_the_rest
from automl.errors import UsageError
from automl.keys import (
    FAIL_REASON,
    FIXED_PARAMS,
    LATENCY_MS,
    METRIC,
    NOT_RUN,
    PRUNED_REASON,
    STOP,
    WARM_START,
)
from automl.registries import improves
from automl.selection import primary_value
from automl.space import SearchSpace

# names stored on studies and trials (candidates for automl.keys)
CONSTRAINT_PREFIX = "constraint: "  # pruned reasons of trials stopped by a constraint

LATENCY_WARMUP, LATENCY_REPEATS, EVAL_BATCH = 3, 10, 4096


# --- constraints -----------------------------------------------------------------------------


@torch.inference_mode()
def forward_latency_ms(model: torch.nn.Module, x: torch.Tensor, amp: bool = False,
                       warmup: int = LATENCY_WARMUP, repeats: int = LATENCY_REPEATS) -> float:
    """Median milliseconds of one forward pass over `x` (one evaluation batch) on x's device, in eval
    mode, after `warmup` passes. The model is moved to that device and left in eval mode."""
    device = x.device
    model.to(device).eval()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda"
                else contextlib.nullcontext())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with autocast:
        for i in range(warmup + repeats):
            sync()
            started = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _set_constraint(trial: optuna.trial.BaseTrial, key: str, value: float) -> None:
    if key not in trial.constraints:  # a retried trial may carry them already
        trial.set_constraint(key, value)


def check_constraints(trial: optuna.trial.BaseTrial, space: SearchSpace, model: torch.nn.Module,
                      n_parameters: int, eval_x: torch.Tensor, amp: bool = False) -> dict[str, float]:
    """Record the trial's constraint values; raise `TrialPruned` with the reason if one is broken.
    The latency is measured only when the parameter budget holds (a huge network is not run).
    Returns what was measured (`latency_ms`), to be logged."""
    measured: dict[str, float] = {}
    checks: list[tuple[str, str, float, float]] = []  # (constraint, quantity, value, limit)
    if space.max_parameters is not None:
        checks.append(("max_parameters", "n_parameters", n_parameters, space.max_parameters))
    if space.max_latency_ms is not None and (space.max_parameters is None or n_parameters <= space.max_parameters):
        ms = forward_latency_ms(model, eval_x[:EVAL_BATCH], amp)
        trial.set_user_attr(LATENCY_MS, round(ms, 4))
        measured[LATENCY_MS] = ms
        checks.append(("max_latency_ms", LATENCY_MS, ms, space.max_latency_ms))
    for key, _, value, limit in checks:
        _set_constraint(trial, key, value / limit - 1.0)
    for key, quantity, value, limit in checks:
        if value > limit:
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            raise optuna.TrialPruned(f"{CONSTRAINT_PREFIX}{quantity}={shown} > {key}={limit:g}")
    return measured


def broke_constraint(trial: FrozenTrial) -> bool:
    """Whether the trial was stopped by a constraint before it trained."""
    return trial.state == TrialState.PRUNED and str(trial.user_attrs.get(PRUNED_REASON, "")).startswith(
        CONSTRAINT_PREFIX)


# --- stopping rules ----------------------------------------------------------------------------


def _finish_order(trial: FrozenTrial) -> tuple[datetime.datetime, int]:
    return trial.datetime_complete or datetime.datetime.max, trial.number


def stop_mark(study: optuna.Study) -> int:
    """Trials numbered below this were judged by an earlier stop; the rules look only at later ones."""
    return int((study.user_attrs.get(STOP) or {}).get("mark", 0))


def should_stop(study: optuna.Study, space: SearchSpace, trials: Iterable[FrozenTrial] | None = None) -> str | None:
    """The reason to stop the search now, or None. Pure: reads the trials (and the mark of the last
    stop), changes nothing.

    - goal: a complete trial queued since the last stop reached `budget.goal` (>= when the metric is
      maximised, <= when minimised; in a multi-objective search, the first metric);
    - patience: the last `budget.patience` finished trials queued since the last stop, in the order
      they finished, did not beat the best trial so far (on the first metric). Trials stopped by a
      constraint (they never trained) and trials never run do not count.
    """
    if space.goal is None and space.patience is None:
        return None
    mark = stop_mark(study)
    finished = sorted((t for t in (study.get_trials(deepcopy=False) if trials is None else trials)
                       if t.state.is_finished() and NOT_RUN not in t.user_attrs and not broke_constraint(t)),
                      key=_finish_order)
    metric, direction = space.metric, space.direction
    if space.goal is not None:
        for t in finished:
            value = primary_value(t)
            if t.number >= mark and t.state == TrialState.COMPLETE and value is not None and (
                    value == space.goal or improves(value, space.goal, direction)):
                sign = ">=" if direction == "maximize" else "<="
                return f"goal reached: {metric}={value:.4f} {sign} {space.goal:g} (trial {t.number})"
    if space.patience is not None:
        best: FrozenTrial | None = None
        since = 0  # trials queued since the mark that finished after the last improvement
        for t in finished:
            value = primary_value(t)
            new_best = t.state == TrialState.COMPLETE and value is not None and (
                best is None or improves(value, primary_value(best), direction))  # type: ignore[arg-type]
            if new_best:
                best, since = t, 0
            elif t.number >= mark:
                since += 1
        if since >= space.patience:
            held = f"best {metric}={primary_value(best):.4f}, trial {best.number}" if best else "no complete trial"
            return f"patience: {since} finished trials in a row without a new best ({held})"
    return None


def stop_search(study: optuna.Study, storage: optuna.storages.BaseStorage, reason: str) -> int:
    """Close the queue: queue the rest of the budget (automl.budget), claim every WAITING trial (so
    none is taken from under a worker) and mark it FAIL with `not_run` = reason; record the stop on
    the study. Returns how many were closed."""
    rdb = getattr(storage, "_backend", storage)  # an RDB storage, or Optuna's cache around one
    queue_the_rest(study, getattr(rdb, "url", None))  # its URL keys the budget lock
    closed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                continue  # another worker claimed it first: it runs
            storage.set_trial_user_attr(trial._trial_id, NOT_RUN, reason)
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, f"not run: {reason}")
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            closed += 1
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    mark = len(study.get_trials(deepcopy=False))
    study.set_user_attr(STOP, {"reason": reason, "mark": mark, "not_run": closed})
    return closed


def stop_reason(study: optuna.Study) -> str | None:
    """The reason the study's search stopped, while that stop still holds (no trial queued since)."""
    stop = study.user_attrs.get(STOP) or {}
    if stop and int(stop.get("mark", -1)) == len(study.get_trials(deepcopy=False)):
        return str(stop.get("reason"))
    return None


# --- warm start ----------------------------------------------------------------------------------


class _Probe:
    """A stand-in trial for `suggest`: answers each parameter with the wanted value when the space's
    distribution holds it, else a random one; remembers the wanted values it used."""

    def __init__(self, wanted: dict[str, Any], seed: int = 0) -> None:
        self.wanted, self.kept = wanted, {}
        self._random = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()

    def _take(self, name: str, distribution: optuna.distributions.BaseDistribution, sample: Any) -> Any:
        if name in self.wanted:
            value = self.wanted[name]
            try:
                ok = distribution._contains(distribution.to_internal_repr(value))
                if isinstance(distribution, optuna.distributions.IntDistribution):
                    ok = ok and isinstance(value, int) and not isinstance(value, bool)
            except (ValueError, TypeError):
                ok = False
            if ok:
                self.kept[name] = value
                return value
        return sample()

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        d = optuna.distributions.IntDistribution(low, high, log=log, step=step)
        return self._take(name, d, lambda: self._random.suggest_int(name, low, high, step=step, log=log))

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None,
                      log: bool = False) -> float:
        d = optuna.distributions.FloatDistribution(low, high, log=log, step=step)
        return self._take(name, d, lambda: self._random.suggest_float(name, low, high, step=step, log=log))

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        d = optuna.distributions.CategoricalDistribution(choices)
        return self._take(name, d, lambda: self._random.suggest_categorical(name, choices))


def params_for(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of `params` that `space` asks for, with values inside its ranges; the rest
    are left to the sampler. (Parameters under a branch the new space reaches otherwise, e.g. a
    width of a layer it does not build, are dropped.)"""
    from automl.space import suggest

    probe = _Probe(params)
    shape = (3, 32, 32) if space.family == "cnn" else (4,)
    with contextlib.suppress(ValueError):
        suggest(probe, space, shape, 2)  # type: ignore[arg-type]
    return probe.kept


def _ranked(study: optuna.Study) -> list[FrozenTrial]:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if primary_value(t) is not None and all(v <= 0 for v in t.constraints.values())]
    reverse = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete, key=primary_value, reverse=reverse)  # type: ignore[arg-type, return-value]


def _candidates(storage: optuna.storages.BaseStorage, names: list[str],
                space: SearchSpace) -> list[tuple[str, FrozenTrial]]:
    """Complete trials of the named studies, best first: by value when they all optimise `metric`,
    else taking the best of each study in turn."""
    known = set(optuna.study.get_all_study_names(storage))
    ranked: list[list[tuple[str, FrozenTrial]]] = []
    metrics = set()
    for name in names:
        if name not in known:
            raise UsageError(f"--warm-start: no study named {name!r} in this storage")
        source = optuna.load_study(study_name=name, storage=storage)
        ranked.append([(name, t) for t in _ranked(source)])
        metrics.add(source.user_attrs.get(METRIC))
    if metrics == {space.metric}:
        flat = [c for group in ranked for c in group]
        return sorted(flat, key=lambda c: primary_value(c[1]), reverse=space.direction == "maximize")  # type: ignore
    out = []
    for i in range(max((len(g) for g in ranked), default=0)):
        out.extend(g[i] for g in ranked if i < len(g))
    return out


def warm_start(study: optuna.Study, storage: optuna.storages.BaseStorage, names: list[str],
               space: SearchSpace, k: int = 3) -> list[dict[str, Any]]:
    """Run the best `k` parameter sets of the studies `names` (same storage) first: they become the
    fixed parameters (Optuna's `fixed_params`, as `enqueue_trial` writes them) of the first queued
    trials that have none. Parameters the study's space does not ask for, or whose values lie outside
    its ranges, are dropped (the sampler picks them); a set that some trial of the study already has
    is skipped, and `k` counts the trials warm-started before, so calling it again (a resumed
    search) adds nothing. Call under the budget lock,
    after the budget is queued. Returns the parameter sets placed."""
    if k < 1 or not names:
        return []
    if study.study_name in names:
        raise UsageError(f"--warm-start: study {study.study_name!r} cannot warm-start from itself")
    trials = optuna.load_study(study_name=study.study_name, storage=storage).get_trials(deepcopy=False)
    seen = [t.system_attrs.get(FIXED_PARAMS) or t.params for t in trials]
    free = [t for t in trials if t.state == TrialState.WAITING and not t.system_attrs.get(FIXED_PARAMS)]
    wanted = k - sum(WARM_START in t.user_attrs for t in trials)  # k in all, over resumed searches
    placed: list[dict[str, Any]] = []
    for name, source in _candidates(storage, names, space):
        if len(placed) >= wanted or not free:
            break
        params = params_for(space, source.params)
        if not params or params in seen:
            continue
        trial = free.pop(0)
        storage.set_trial_system_attr(trial._trial_id, FIXED_PARAMS, params)
        storage.set_trial_user_attr(trial._trial_id, WARM_START, f"{name}#{source.number}")
        seen.append(params)
        placed.append(params)
    return placed
