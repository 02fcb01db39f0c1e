"""The trial budget: how many trials a study runs in all (`--trials`; the study's
`automl.n_trials` attribute), held as a small pool of WAITING trials that workers claim.

A worker claims a WAITING trial with an update that succeeds for one worker only. When the pool is
empty, the claiming worker fills it back to `POOL_SIZE` trials under `storage.budget_lock`,
counting the study's trials, never beyond the budget. So any number of workers run exactly the
budget between them (on SQLite: processes on one machine that share its temporary folder, where
the lock lives; on PostgreSQL: any number of machines), and a study holds only a few queued
trials at a time. That matters for speed: Optuna re-reads every unfinished trial each time it
lists a study's trials (each claim, the sampler and the pruner do), so a budget queued whole up
front made every listing cost more per trial still queued (`benchmarks/listing.py`).

Storages whose budget lock cannot serialise processes (other than SQLite and PostgreSQL) get the
whole budget queued up front instead, as the pool could not be refilled safely there.
"""

from __future__ import annotations

from typing import NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from automl.keys import BUDGET, FIXED_PARAMS
from automl.storage import budget_lock, can_lock_budget

POOL_SIZE = 4  # queued trials at a time; the pool is refilled when a worker finds it empty


class Pool(NamedTuple):
    """A study's budget as one reading of its trials shows it."""

    waiting: list[FrozenTrial]  # queued, not claimed yet
    n_trials: int  # trials in the study, of any state
    budgeted: int  # of those, the ones that count towards the budget (retries come on top)
    budget: int  # the budget (0 for a study without one)

    @property
    def unopened(self) -> int:
        """Trials of the budget not queued yet."""
        return max(0, self.budget - self.budgeted)

    @property
    def to_run(self) -> int:
        """Trials still to run: those queued and those of the budget not queued yet."""
        return len(self.waiting) + self.unopened


def pool(study: optuna.Study) -> Pool:
    """The study's budget and queued trials, from one reading of its trials."""
    budget = budget_of(study)
    trials = study.get_trials(deepcopy=False)
    retried = optuna.storages.RetryFailedTrialCallback.retried_trial_number
    return Pool([t for t in trials if t.state == TrialState.WAITING], len(trials),
                sum(1 for t in trials if retried(t) is None), budget)


def budget_of(study: optuna.Study) -> int:
    """The study's budget: how many trials it runs in all, retries aside (0 before it has one)."""
    return int(study.user_attrs.get(BUDGET) or 0)


def unopened(study: optuna.Study) -> int:
    """Trials of the budget not queued yet."""
    return pool(study).unopened


def _queue(study: optuna.Study, n: int) -> None:
    for _ in range(n):
        study.enqueue_trial({}, skip_if_exists=False)


def top_up_budget(study: optuna.Study, n_trials: int, url: str, at_least: int = 0) -> int:
    """Make `n_trials` the study's budget (a larger one stays) and fill the pool to `POOL_SIZE`
    queued trials (and to `at_least` without fixed parameters, for a warm start; the whole budget
    where the storage at `url` has no budget lock). Returns how many trials the budget gained.
    Call under `budget_lock`."""
    before = pool(study)
    now = before._replace(budget=max(n_trials, before.budget))  # never lowered: other searches may share it
    study.set_user_attr(BUDGET, now.budget)
    if not can_lock_budget(url):
        _queue(study, now.unopened)
    else:
        free = [t for t in now.waiting if not t.system_attrs.get(FIXED_PARAMS)]
        _queue(study, min(now.unopened, max(0, POOL_SIZE - len(now.waiting), at_least - len(free))))
    return now.unopened - before.unopened


def refill_pool(study: optuna.Study, url: str) -> int:
    """Fill the pool up to `POOL_SIZE` queued trials from the budget, under the budget lock of the
    storage at `url`. Returns how many trials are queued then: 0 once the budget is spent and the
    pool empty (the budget lock is then not taken)."""
    seen = pool(study)
    if not seen.unopened or not can_lock_budget(url):
        return len(seen.waiting)  # the budget is spent, or queued whole already
    with budget_lock(url, study.study_name):
        seen = pool(study)
        n = min(seen.unopened, max(0, POOL_SIZE - len(seen.waiting)))
        _queue(study, n)
    return len(seen.waiting) + n


def queue_the_rest(study: optuna.Study, url: str | None) -> None:
    """Queue every trial of the budget not queued yet (a stop rule then closes them all)."""
    if url is None or not unopened(study):
        return
    with budget_lock(url, study.study_name):
        _queue(study, unopened(study))
