"""Pruning: the study as a trial's pruning check sees it, and pruning in a multi-objective search.

Each epoch's pruning check compares the trial with the study's other trials. Optuna reads those
trials again at every check, and on small data that read is the costliest part of an epoch's
bookkeeping: its cache re-reads every unfinished trial, the queued budget included. A
`StudySnapshot` reads them at the trial's first check and again only once that reading is
`SNAPSHOT_MAX_AGE_S` old. With one worker no other trial finishes while a trial runs, so the
pruner decides exactly as on a fresh read; with several workers, a trial finished elsewhere
since the last reading counts from the next one (within seconds, and at every epoch once epochs
take longer than that). Hyperband reads its bracket's trials itself, so it gains nothing.

Multi-objective searches (`objective.metrics`):

Optuna refuses `Trial.report` and `Trial.should_prune` when a study has several objectives (its
issue #3450), so this module does both for such searches:

- Each epoch, the first metric's validation value is added to the trial's user attribute
  `learning_curve` (`{"1": 0.93, "2": 0.95, ...}`, epoch -> value). Not as Optuna intermediate
  values: Optuna's TPE sampler reads those of pruned trials with `study.direction`, which a
  multi-objective study refuses. The plots and the report read the attribute.
- A trial's *peers* are the complete trials that are no worse on every other objective: those
  objectives are costs known before training (`n_parameters`, `latency_ms`), so the peers are the
  trials whose networks are at least as small (and as fast) as this one.
- The space's pruner rule (`median`, or `percentile` with its `percentile`) is applied among the
  peers only: at an epoch >= `n_warmup_steps` (then every `interval_steps` epochs), once
  `n_startup_trials` trials of the study are complete and at least `n_min_trials` peers reached
  that epoch, the trial is pruned when its best first-metric value so far is worse than the median
  (the percentile) of the peers' values at that epoch. The options and their defaults are those
  of Optuna's `MedianPruner` / `PercentilePruner`; `none` never prunes.

A large network that learns no better than smaller ones is stopped early: it could not reach the
Pareto front. A small network with a lower score has few or no peers, so it trains to the end and
may well be on the front.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from automl.registries import PRUNERS, resolve
from automl.space import SearchSpace

# trial user attribute of a multi-objective search: the first metric per epoch (a candidate for automl.keys)
LEARNING_CURVE = "learning_curve"
SNAPSHOT_MAX_AGE_S = 2.0  # how stale a trial's pruning checks may see the other trials


class StudySnapshot:
    """A study whose `get_trials` answers from one reading of its trials, renewed once it is
    `max_age_s` old; everything else (the storage and its writes, `direction`, `best_trial`) is
    the study's own. Made for one trial's pruning checks: the trial itself is read fresh."""

    def __init__(self, study: optuna.Study, max_age_s: float = SNAPSHOT_MAX_AGE_S) -> None:
        self._study = study
        self._max_age_s = max_age_s
        self._trials: list[FrozenTrial] | None = None
        self._read_at = 0.0

    def __getattr__(self, name: str) -> Any:
        if name == "_study":  # not set yet (a copy made without __init__)
            raise AttributeError(name)
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        """The study's trials as last read, in number order (read again when the reading is old)."""
        now = time.monotonic()
        if self._trials is None or now - self._read_at > self._max_age_s:
            self._trials = self._study.get_trials(deepcopy=False)
            self._read_at = now
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials


def should_prune(trial: optuna.trial.BaseTrial, snapshot: StudySnapshot | None) -> bool:
    """`trial.should_prune()`, with the other trials seen through `snapshot` when there is one
    (a trial of a study; a FixedTrial has none)."""
    if snapshot is None:
        return trial.should_prune()
    # what Trial.should_prune does, with the snapshot in place of the study
    return trial.study.pruner.prune(snapshot, trial._get_latest_trial())  # type: ignore[attr-defined,arg-type]


@dataclass(frozen=True)
class PeerRule:
    """The percentile rule and its warm-up settings (Optuna's PercentilePruner options)."""

    percentile: float  # 50: the median
    n_startup_trials: int
    n_warmup_steps: int
    interval_steps: int
    n_min_trials: int


def peer_rule(space: SearchSpace) -> PeerRule | None:
    """The rule of the space's pruner (None for `none`): its options over the Optuna class's defaults."""
    if space.pruner == "none":
        return None
    parameters = inspect.signature(resolve(PRUNERS[space.pruner].cls)).parameters
    options = {k: p.default for k, p in parameters.items() if p.default is not inspect.Parameter.empty}
    options.update(space.pruner_options)
    percentile = 50.0 if space.pruner == "median" else float(options["percentile"])
    return PeerRule(percentile, int(options["n_startup_trials"]), int(options["n_warmup_steps"]),
                    int(options["interval_steps"]), int(options["n_min_trials"]))


def record_curve(trial: optuna.trial.BaseTrial, curve: dict[int, float]) -> None:
    """Store the first metric's learning curve so far (epoch -> value) on the trial."""
    trial.set_user_attr(LEARNING_CURVE, {str(epoch): float(value) for epoch, value in curve.items()})


def curve_of(trial: FrozenTrial) -> dict[int, float]:
    """A trial's learning curve of the first metric (epoch -> value): its intermediate values in a
    single-objective study, its `learning_curve` attribute in a multi-objective one."""
    stored = trial.user_attrs.get(LEARNING_CURVE)
    if not stored:
        return dict(trial.intermediate_values)
    return {int(epoch): float(value) for epoch, value in stored.items()}


def _worse(value: float, than: float, maximize: bool) -> bool:
    return value < than if maximize else value > than


def _no_worse_costs(trial: FrozenTrial, space: SearchSpace, costs: dict[str, float]) -> bool:
    """Whether a complete trial is no worse than `costs` on every objective after the first."""
    return trial.values is not None and all(
        not _worse(trial.values[i], costs[m], space.directions[i] == "maximize")
        for i, m in enumerate(space.metrics) if i > 0)


def prune_reason(study: optuna.Study | StudySnapshot, space: SearchSpace, costs: dict[str, float],
                 curve: dict[int, float]) -> str | None:
    """Why a running trial with objective `costs` (metric -> value, known before training) and
    first-metric learning curve `curve` (epoch -> value) should stop at its last epoch, or None."""
    rule = peer_rule(space)
    if rule is None or not curve:
        return None
    epoch = max(curve)
    if epoch < rule.n_warmup_steps or (epoch - rule.n_warmup_steps) % max(rule.interval_steps, 1):
        return None
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete or len(complete) < rule.n_startup_trials:
        return None
    curves = [curve_of(t) for t in complete if _no_worse_costs(t, space, costs)]
    peers = [c[epoch] for c in curves if epoch in c]
    if not peers or len(peers) < rule.n_min_trials:
        return None
    maximize = space.direction == "maximize"
    best = max(curve.values()) if maximize else min(curve.values())
    limit = float(np.percentile(peers, 100 - rule.percentile if maximize else rule.percentile))
    if not _worse(best, limit, maximize):
        return None
    worse = "worse than the median" if space.pruner == "median" else f"outside the kept {rule.percentile:g}%"
    return (f"{space.pruner} rule: {worse} ({limit:.4f}) of the {len(peers)} complete trial(s) no worse on "
            f"{', '.join(space.metrics[1:])} at this epoch")
