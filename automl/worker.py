"""The worker loop: claim a queued trial, keep its heartbeat, run it, close it in both stores with
its true outcome; sweep up after dead workers; hold signals while a trial is opened or closed."""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import psutil
from optuna.trial import FrozenTrial, TrialState

from automl import checks
from automl.budget import refill_pool
from automl.errors import FatalError, Terminated, TrialFailed
from automl.keys import (
    EXPERIMENT_ID,
    FAIL_REASON,
    PARENT_RUN_ID,
    PRUNED_REASON,
    RUN_ID,
    SECONDS,
    STOP_REASON_TAG,
    TRACKING_URI,
    WORKER,
)
from automl.objective import STORAGE_ERRORS, Objective, release_memory
from automl.record import StudyHandle, lie_while_others_run
from automl.recorder import Recorder, RemoteTracker
from automl.runs import REASON_TAG, STATE_TAG, RunRecords, TrackingError, run_status_for
from automl.selection import champion_trial, primary_value
from automl.signals import SignalHold
from automl.stopping import should_stop, stop_search

if TYPE_CHECKING:
    from automl.tracking import Tracker

# --- sweeping up after dead workers ----------------------------------------------------------------


def _process_alive(pid: int, started: float | None) -> bool:
    try:
        process = psutil.Process(pid)
        return started is None or abs(process.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _run_of(trial: FrozenTrial, tracker: Tracker, experiment_id: str, parent_run_id: str) -> str | None:
    """A trial's run id: recorded on it after its first epoch, else found by its trial number."""
    return trial.user_attrs.get(RUN_ID) or tracker.find_trial_run(experiment_id, parent_run_id, trial.number)


def sweep(study: optuna.Study, storage: optuna.storages.RDBStorage, tracker: Tracker,
          parent_run_id: str, experiment_id: str) -> int:
    """Fail trials whose worker process on this host is gone; close runs left RUNNING by trials
    that have finished. Returns how many trials were failed."""
    host = socket.gethostname()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER) or {}
        if worker.get("host") == host and not _process_alive(worker["pid"], worker.get("started")):
            reason = f"worker process {worker['pid']} on {host} died mid-trial"
            run_id = _run_of(trial, tracker, experiment_id, parent_run_id)
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                if run_id:
                    storage.set_trial_user_attr(trial._trial_id, RUN_ID, run_id)
                storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, reason)
                if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                    failed += 1
    trials = study.get_trials(deepcopy=False)
    by_run = {t.user_attrs.get(RUN_ID): t for t in trials}
    by_number = {str(t.number): t for t in trials}  # for runs whose trial never got their id
    for run_id, number in tracker.running_trial_runs(parent_run_id, experiment_id):
        trial = by_run.get(run_id) or by_number.get(number)
        if trial is None or trial.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        reason = trial.user_attrs.get(FAIL_REASON, "the worker stopped before closing this run")
        tracker.set_status(run_id, run_status_for(trial.state.name),
                           {STATE_TAG: trial.state.name, REASON_TAG: reason})
    return failed


def close_stale_run(tracking_uri: str | None, retry: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Heartbeat callback: a trial whose worker went silent is FAIL; close its run, maybe retry it.
    The run is closed in `tracking_uri`, else in the store the study is bound to."""
    retry_callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retry) if retry else None

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        from automl.tracking import Tracker

        attrs = study.user_attrs
        tracker = Tracker(checks.tracking_uri(tracking_uri, attrs.get(TRACKING_URI)))
        run_id = trial.user_attrs.get(RUN_ID)
        if attrs.get(PARENT_RUN_ID):
            run_id = _run_of(trial, tracker, attrs[EXPERIMENT_ID], attrs[PARENT_RUN_ID])
        if run_id:
            tracker.set_status(run_id, "FAILED",
                               {STATE_TAG: "FAIL", REASON_TAG: "worker lost: no heartbeat within the grace period"})
        if retry_callback is not None:
            retry_callback(study, trial)

    return callback


# --- the worker loop ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _started(pid: int) -> float:
    """When process `pid` started: with the pid, it tells this process from a later one."""
    return psutil.Process(pid).create_time()


class Heartbeat:
    """Records the trial's heartbeat every interval in a daemon thread (RDB storages only)."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.interval = storage.get_heartbeat_interval()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="automl-heartbeat")

    def _beat(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Exception):  # a missed beat is not fatal; staleness is
                self.storage.record_heartbeat(self.trial_id)
            self.stop.wait(self.interval)

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)


def claim_trial(study: optuna.Study, storage: optuna.storages.RDBStorage,
                signals: SignalHold | None = None) -> optuna.Trial | None:
    """Atomically take one WAITING trial from the budget pool, refilling the pool from the
    study's budget when it is empty (automl.budget); None once the budget is spent and the pool
    empty. Ends: each pass claims a trial or finds the pool refilled from the budget.

    With `signals`: they are held from each attempt to claim on (the caller releases them once the
    claimed trial is open), and not while the pool is refilled, which may wait for the budget lock.
    TPE's constant liar is set for the claimed trial (`record.lie_while_others_run`)."""
    while True:
        if signals is not None:
            signals.hold()
        # one read brings the study's trial cache up to date (it must know the trial) and lists
        # the pool; the cache re-reads unfinished trials on its next read, so it sees the claim.
        # The sampler's per-trial snapshot of that cache is renewed by `study.tell` of the previous trial.
        trials = study.get_trials(deepcopy=False)
        for waiting in (t for t in trials if t.state == TrialState.WAITING):
            try:
                if storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                    lie_while_others_run(study.sampler, any(t.state == TrialState.RUNNING for t in trials))
                    return optuna.Trial(study, waiting._trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        if signals is not None:
            signals.release()  # nothing claimed: a signal held meanwhile is raised here
        try:
            if not refill_pool(study, storage.url):
                return None
        except STORAGE_ERRORS as e:  # the search stops, as on any failure of the storage
            raise FatalError(f"Optuna storage failed while queueing trials of the budget: {e}") from e


@dataclass
class TrialOutcome:
    """How a trial ended, and the study's best complete trial right after it (if any)."""

    number: int
    state: TrialState
    value: float | None
    seconds: float
    reason: str
    best: FrozenTrial | None


ReportFn = Callable[[TrialOutcome], None]


# run names tell outcomes apart in the MLflow runs table (pruned and failed share one icon there)
RUN_NAMES = {TrialState.COMPLETE: "trial-{}", TrialState.PRUNED: "trial-{} (pruned)",
             TrialState.FAIL: "trial-{} (failed)"}


class LinkedRun:
    """A trial's run that records its id on the Optuna trial at the end of the first epoch (the
    recording process creates the run meanwhile; only an epoch shorter than that waits for it),
    or as the trial closes if it ends before. A worker lost after its first epoch leaves the id for
    whoever closes the run; before, the run is found by its trial number."""

    def __init__(self, run: RunRecords, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self.run, self.storage, self.trial_id = run, storage, trial_id
        self.linked = False

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def link(self) -> None:
        """Record the run's id on the trial, once."""
        if not self.linked:
            self.storage.set_trial_user_attr(self.trial_id, RUN_ID, self.run.run_id)
            self.linked = True

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.log_params(params)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.log_epoch(epoch, metrics)
        try:
            self.link()  # before the epoch is reported: a trial with a reported epoch has its run's id
        except STORAGE_ERRORS as e:  # the search stops, as on any failure of the storage
            raise FatalError(f"Optuna storage failed while recording the trial's run id: {e}") from e

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.run.log_metrics(metrics)

    def log_weights(self, folder: Path) -> None:
        self.run.log_weights(folder)

    def end(self, status: str, tags: dict[str, str]) -> None:
        self.run.end(status, tags)


def _open_trial(handle: StudyHandle, trial: optuna.Trial, runs: Tracker | Recorder) -> LinkedRun:
    """Record who runs the trial (for the dead-worker sweep) and open its MLflow child run."""
    pid = os.getpid()
    worker = {"host": socket.gethostname(), "pid": pid, "started": _started(pid)}
    handle.storage.set_trial_user_attr(trial._trial_id, WORKER, worker)
    run = runs.start_trial(handle.experiment_id, handle.parent_run_id, handle.name, trial.number)
    return LinkedRun(run, handle.storage, trial._trial_id)


@dataclass
class _Ending:
    """How a trial ended, as `run_next_trial` caught it."""

    state: TrialState
    value: float | None
    reason: str
    seconds: float
    escaping: BaseException | None  # an interrupt or fatal error to raise once the trial is closed
    run_status: str | None  # the MLflow status when not the one of `state` (KILLED on an interrupt)


def _close_trial(handle: StudyHandle, study: optuna.Study, trial: optuna.Trial, run: LinkedRun | None,
                 end: _Ending) -> None:
    """Close the trial in Optuna, then its run in MLflow, with the true outcome and its reason. A
    trial whose run could not be created fails with that reason (a complete trial has its run)."""
    run_id, lost = None, None
    if run is not None:
        try:
            run_id = run.run_id
        except TrackingError as e:
            lost = e
            if end.escaping is None:
                end = replace(end, state=TrialState.FAIL, value=None, reason=str(e), escaping=e)
    tags = {STATE_TAG: end.state.name, "automl.seconds": f"{end.seconds:.3f}",
            "mlflow.runName": RUN_NAMES[end.state].format(trial.number)}
    if end.reason:
        tags[REASON_TAG] = end.reason[:5000]
    try:
        if run is not None and run_id:
            run.link()
        attr = {TrialState.FAIL: FAIL_REASON, TrialState.PRUNED: PRUNED_REASON}.get(end.state)
        if attr:
            handle.storage.set_trial_user_attr(trial._trial_id, attr, end.reason)
        handle.storage.set_trial_user_attr(trial._trial_id, SECONDS, round(end.seconds, 3))
        study.tell(trial, end.value, state=end.state)
    except STORAGE_ERRORS as e:
        if run is not None:
            with contextlib.suppress(Exception):
                run.end("FAILED", {**tags, REASON_TAG: f"Optuna storage failed: {e}"})
        raise FatalError(f"Optuna storage failed while closing trial {trial.number}: {e}") from e
    if run is not None and (lost is not None or isinstance(end.escaping, TrackingError)):
        # e.g. only the artifact store failed: close the run while the database still answers
        with contextlib.suppress(Exception):
            run.end("FAILED", {**tags, REASON_TAG: str(end.escaping or lost)[:5000]})
    elif run is not None:
        run.end(end.run_status or run_status_for(end.state.name), tags)
    if lost is not None and end.escaping is lost:
        raise lost


def run_next_trial(handle: StudyHandle, objective: Objective, tracker: Tracker,
                   study: optuna.Study | None = None, recorder: Recorder | None = None,
                   check_stale: bool = True) -> TrialOutcome | None:
    """Claim a queued trial, run it, and close it in both stores with its true outcome.

    `study`: the worker's Study object, kept from trial to trial, so that its trial cache reads
    only the trials that changed since (a freshly loaded study reads every trial of the study).
    `recorder`: the child process that writes the trial's run (default: written here).
    `check_stale`: first fail the trials whose heartbeat has gone stale (with heartbeats on).
    Returns None when no trial is queued. Ctrl-C, SIGTERM and fatal errors still close the trial
    (FAIL) and its run (KILLED or FAILED), then propagate.
    """
    started = time.monotonic()
    study = study or handle.load()
    if check_stale:
        optuna.storages.fail_stale_trials(study)
    signals = SignalHold()
    try:
        trial = claim_trial(study, handle.storage, signals)
    except BaseException:
        signals.release(raise_pending=False)  # the error on its way says more
        raise
    if trial is None:
        return None
    storage = handle.storage
    value: float | None = None
    reason = ""
    escaping: BaseException | None = None
    run_status = None
    run: LinkedRun | None = None
    with Heartbeat(storage, trial._trial_id):
        try:
            run = _open_trial(handle, trial, recorder or tracker)
            signals.release()  # a signal held since the claim is raised here
            value = objective(trial, run)
            state = TrialState.COMPLETE
        except optuna.TrialPruned as e:
            state, reason = TrialState.PRUNED, str(e)
        except TrialFailed as e:
            state, reason = TrialState.FAIL, str(e)
        except KeyboardInterrupt as e:
            state, escaping, run_status = TrialState.FAIL, e, "KILLED"
            reason = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"
        except BaseException as e:
            state, escaping = TrialState.FAIL, e
            reason = f"{type(e).__name__}: {e}"
        finally:
            signals.release(raise_pending=False)
            signals.hold()  # closing the trial is not interrupted; a signal waits until it is done

    seconds = time.monotonic() - started
    try:
        _close_trial(handle, study, trial, run, _Ending(state, value, reason, seconds, escaping, run_status))
    finally:
        signals.release(raise_pending=escaping is None)
    if escaping is not None:
        raise escaping
    try:
        best = champion_trial(study)
    except ValueError:  # no complete trial yet
        best = None
    if best is not None and best.number == trial.number:
        tracker.log_best_so_far(handle.parent_run_id, handle.space.metric, best.value, trial.number)
    return TrialOutcome(trial.number, state, primary_value(value), seconds, reason, best)


def stop_if_done(handle: StudyHandle, tracker: Tracker) -> str | None:
    """After a trial: when a stopping rule of the space fires (`budget.goal`, `budget.patience`),
    close the queue (the trials not run are marked FAIL with `not_run`), tag the study run with
    the reason and return it."""
    space = handle.space
    if space.goal is None and space.patience is None:
        return None
    study = handle.load()
    reason = should_stop(study, space)
    if reason is None:
        return None
    signals = SignalHold()
    signals.hold()  # the queue is closed and the stop recorded together
    try:
        try:
            stop_search(study, handle.storage, reason)
        except STORAGE_ERRORS as e:
            raise FatalError(f"Optuna storage failed while stopping the search: {e}") from e
        tracker.set_tags(handle.parent_run_id, {STOP_REASON_TAG: reason[:5000]})
    finally:
        signals.release()
    return reason


def run_worker(
    handle: StudyHandle,
    objective: Objective,
    tracker: Tracker,
    deadline: float | None = None,
    report: ReportFn | None = None,
    linger: bool = False,
    record_in_child: bool = True,
) -> int:
    """Claim and run trials until the pool is empty, a stopping rule fires (`stop_if_done`) or
    `deadline` (monotonic) passes.

    With `record_in_child` the trials' MLflow runs are written by a child process
    (`automl.recorder`; inline where none can be made), all of them by the time this returns. A
    `RemoteTracker`'s child writes them in any case, and is left open for the caller to close.

    With `linger` (lost trials are retried), an empty pool is not the end while trials still run
    elsewhere: one of them may be lost and queued again, so the worker waits and checks."""
    done = 0
    study = handle.load()
    gc.collect()
    gc.freeze()  # libraries and data stay; collections then only scan new objects
    recorder: Recorder | None = tracker.recorder if isinstance(tracker, RemoteTracker) else None
    shared = recorder is not None  # the RemoteTracker's child records the trials as well
    stale_checked = -math.inf
    try:
        if recorder is None and record_in_child:
            recorder = Recorder.start(tracker)
        while deadline is None or time.monotonic() < deadline:
            # stale heartbeats, looked for once per heartbeat interval (a trial takes milliseconds)
            check_stale = time.monotonic() - stale_checked >= (handle.storage.get_heartbeat_interval() or 0)
            if check_stale:
                stale_checked = time.monotonic()
            outcome = run_next_trial(handle, objective, tracker, study, recorder, check_stale)
            if outcome is None:
                running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if linger and running:
                    time.sleep(handle.storage.get_heartbeat_interval() or 1)
                    continue
                break
            done += 1
            release_memory()
            gc.freeze()  # what the trial left alive (modules it imported, caches) is never scanned again
            if report is not None:
                report(outcome)
            if stop_if_done(handle, tracker) is not None:
                break  # the queue is closed: workers elsewhere find it empty
    except BaseException:
        if recorder is not None and not shared:  # a shared one closes the runs left open as it closes
            with contextlib.suppress(TrackingError):  # the error on its way says more
                recorder.close(raise_signal=False)
        raise
    if recorder is not None:  # every run written before the search goes on (best model, summary)
        if shared:
            recorder.flush()
        else:
            recorder.close()
    return done
