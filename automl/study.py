"""Studies: storage, sampler and pruner; the trial budget; the worker loop; the final summary.

The study's trial budget is a pool of WAITING trials created once (under a lock), so any number
of workers on any number of machines run exactly `--trials` trials between them: a worker claims
a waiting trial atomically and stops when none is left. Each trial is recorded in Optuna and in
its own MLflow child run, and both are always closed with the trial's true outcome.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psutil
import sqlalchemy
from filelock import FileLock
from optuna.trial import FrozenTrial, TrialState

from automl.checkpoint import load_checkpoint
from automl.data import Dataset
from automl.errors import FatalError, Terminated, TrialFailed, UsageError
from automl.keys import (
    BUDGET,
    EXPERIMENT_ID,
    FAIL_REASON,
    METRIC,
    PARENT_RUN_ID,
    PRUNED_REASON,
    PRUNER,
    RUN_ID,
    SAMPLER,
    SECONDS,
    SEED,
    SPACE_DIGEST,
    SPACE_SOURCE,
    SPACE_TEXT,
    TRACKING_URI,
    WORKER,
)
from automl.objective import STORAGE_ERRORS, Objective, release_memory
from automl.plots import PlotJob
from automl.report import trials_table
from automl.space import PRUNERS, SAMPLERS, SearchSpace, parse_space
from automl.tracking import (
    BEST_DIR,
    BEST_TRIAL_TAG,
    REASON_TAG,
    STATE_TAG,
    WEIGHTS_DIR,
    Tracker,
    TrackingError,
    TrialRun,
    run_status_for,
)
from automl.train import evaluate

SQLITE_TIMEOUT_S = 120


# --- storage, sampler, pruner ----------------------------------------------------------------------


def _sqlite_immediate_transactions(engine: sqlalchemy.engine.Engine) -> None:
    """Take SQLite's write lock when a transaction begins, so concurrent processes wait for it
    (busy timeout) instead of failing with 'database is locked' on a lock upgrade."""

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        # WAL: readers never block the writer; NORMAL: no fsync per commit (a crashed process
        # loses nothing it committed; only a power cut can lose the last transactions).
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """Serialise opening an SQLite storage across processes on this machine: the first one to
    open a new file creates Optuna's tables, and two doing it at once collide."""
    parsed = sqlalchemy.engine.make_url(url)
    lock: FileLock | None = None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        lock = FileLock(f"{parsed.database}.lock", timeout=SQLITE_TIMEOUT_S)
        try:
            lock.acquire()
        except OSError:  # a folder that cannot hold the lock: SQLite says what is wrong with it
            lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage; SQLite gets a long busy timeout and immediate transactions."""
    engine_kwargs: dict[str, Any] = {}
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S, "isolation_level": None}
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        with _creation_lock(url):
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=on_stale,
            )
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise FatalError(f"cannot open the Optuna storage {url}: {first}") from None
    except ImportError as e:
        raise UsageError(f"--storage: {url}: {e}") from None
    if is_sqlite:
        _sqlite_immediate_transactions(storage.engine)
        storage.engine.dispose()  # connections made before the listeners lack the pragmas
    return storage


def make_sampler(space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    return SAMPLERS[space.sampler](**space.sampler_options, seed=seed)


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    return PRUNERS[space.pruner](**space.pruner_options)


@contextlib.contextmanager
def budget_lock(url: str, study_name: str) -> Iterator[None]:
    """Serialise budget top-ups and final summaries of one study across processes."""
    parsed = sqlalchemy.engine.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        with FileLock(f"{parsed.database}.{study_name}.lock", timeout=600):
            yield
    elif backend == "postgresql":
        key = int(hashlib.sha256(study_name.encode()).hexdigest()[:15], 16)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
    else:
        yield


# --- the study record ----------------------------------------------------------------------------


@dataclass
class StudyHandle:
    """A study with what the worker loop needs around it."""

    name: str
    storage: optuna.storages.RDBStorage
    space: SearchSpace
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    seed: int
    experiment_id: str
    parent_run_id: str

    def load(self) -> optuna.Study:
        """A fresh Study object (fresh trial cache for the sampler) on the shared storage."""
        return optuna.load_study(study_name=self.name, storage=self.storage,
                                 sampler=self.sampler, pruner=self.pruner)


def space_of(study: optuna.Study) -> SearchSpace:
    """The search space a study was created with, with its --sampler/--pruner choices (workers
    need no YAML file)."""
    attrs = study.user_attrs
    if SPACE_TEXT not in attrs:
        raise UsageError(f"study {study.study_name!r} was not created by automl (no search space stored)")
    space = parse_space(attrs[SPACE_TEXT], attrs.get(SPACE_SOURCE, "stored search space"))
    return with_algorithms(space, attrs.get(SAMPLER), attrs.get(PRUNER))


def with_algorithms(space: SearchSpace, sampler: str | None, pruner: str | None) -> SearchSpace:
    """The space with another sampler or pruner (their YAML options apply only to their own)."""
    changes: dict[str, Any] = {}
    if sampler and sampler != space.sampler:
        changes.update(sampler=sampler, sampler_options={})
    if pruner and pruner != space.pruner:
        changes.update(pruner=pruner, pruner_options={})
    return dataclasses.replace(space, **changes) if changes else space


def create_or_load(
    name: str, storage: optuna.storages.RDBStorage, space: SearchSpace, seed: int
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when it exists with the same space. Returns (study, created)."""
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=space.direction)
        study.set_user_attr(SPACE_TEXT, space.text)
        study.set_user_attr(SPACE_SOURCE, space.source)
        study.set_user_attr(SPACE_DIGEST, space.digest)
        study.set_user_attr(SEED, seed)
        study.set_user_attr(METRIC, space.metric)
        study.set_user_attr(SAMPLER, space.sampler)
        study.set_user_attr(PRUNER, space.pruner)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
    stored = study.user_attrs.get(SPACE_DIGEST)
    if stored is None:
        # created by another process an instant ago: wait for its attributes
        for _ in range(50):
            time.sleep(0.1)
            stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get(SPACE_DIGEST)
            if stored is not None:
                break
        study = optuna.load_study(study_name=name, storage=storage)
    if stored != space.digest:
        raise UsageError(
            f"--study: study {name!r} already exists with another search space "
            f"({study.user_attrs.get(SPACE_SOURCE, 'unknown')}); use another --study name"
        )
    return study, False


def attach_tracking(study: optuna.Study, tracker: Tracker, params: dict[str, Any]) -> tuple[str, str]:
    """The study's experiment and parent run, created once and remembered in the study."""
    attrs = study.user_attrs
    experiment_id = tracker.experiment_id(study.study_name)
    parent = attrs.get(PARENT_RUN_ID)
    if parent is None or tracker.run_status(parent) is None:
        parent = tracker.start_study_run(experiment_id, study.study_name, params,
                                         attrs.get(SPACE_TEXT, ""))
        study.set_user_attr(EXPERIMENT_ID, experiment_id)
        study.set_user_attr(PARENT_RUN_ID, parent)
        study.set_user_attr(TRACKING_URI, tracker.uri)
    return experiment_id, parent


def queued_total(study: optuna.Study) -> int:
    """Trials still waiting in the budget pool."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def top_up_budget(study: optuna.Study, n_trials: int) -> int:
    """Queue WAITING trials until the study holds `n_trials` trials in all. Returns how many were queued.

    Call under `budget_lock`: the count and the queueing must not interleave with another process.
    """
    study.set_user_attr(BUDGET, n_trials)
    existing = len(study.get_trials(deepcopy=False))
    for _ in range(n_trials - existing):
        study.enqueue_trial({}, skip_if_exists=False)
    return max(0, n_trials - existing)


# --- sweeping up after dead workers ----------------------------------------------------------------


def _process_alive(pid: int, started: float | None) -> bool:
    try:
        process = psutil.Process(pid)
        return started is None or abs(process.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


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
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, reason)
                if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                    failed += 1
    states = {t.user_attrs.get(RUN_ID): t for t in study.get_trials(deepcopy=False)}
    for run in tracker.trial_runs(parent_run_id, experiment_id):
        if run.info.status != "RUNNING":
            continue
        trial = states.get(run.info.run_id)
        if trial is None or trial.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        reason = trial.user_attrs.get(FAIL_REASON, "the worker stopped before closing this run")
        tracker.set_status(run.info.run_id, run_status_for(trial.state.name),
                           {STATE_TAG: trial.state.name, REASON_TAG: reason})
    return failed


def close_stale_run(tracker_uri: str, retry: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Heartbeat callback: a trial whose worker went silent is FAIL; close its run, maybe retry it."""
    retry_callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retry) if retry else None

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get(RUN_ID)
        if run_id:
            Tracker(tracker_uri).set_status(
                run_id, "FAILED",
                {STATE_TAG: "FAIL", REASON_TAG: "worker lost: no heartbeat within the grace period"},
            )
        if retry_callback is not None:
            retry_callback(study, trial)

    return callback


# --- the worker loop ---------------------------------------------------------------------------


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


def claim_trial(study: optuna.Study, storage: optuna.storages.RDBStorage) -> optuna.Trial | None:
    """Atomically take one WAITING trial from the budget pool, or None when the pool is empty.

    `study` must be freshly loaded (its trial cache not yet read): samplers read that cache."""
    # one read fills the study's trial cache (which must know the trial) and lists the pool;
    # the cache re-reads unfinished trials on its next read, so it sees the claim
    for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, waiting._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


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


class SignalHold:
    """Defers Ctrl-C and SIGTERM between `hold()` and `release()`, which raises a deferred one.

    Used around the bookkeeping that opens and closes a trial, so that a signal never leaves a
    trial or a run half-open: it takes effect inside the trial's own `try`, or right after."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: Any) -> None:
        self.pending = self.pending or signum

    def hold(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._record) for s in (signal.SIGINT, signal.SIGTERM)
                             if signal.getsignal(s) is not signal.SIG_IGN}  # ignored stays ignored

    def release(self, raise_pending: bool = True) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
        if raise_pending and self.pending is not None:
            signum, self.pending = self.pending, None
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _open_trial(handle: StudyHandle, trial: optuna.Trial, tracker: Tracker) -> TrialRun:
    """Record who runs the trial (for the dead-worker sweep) and open its MLflow child run."""
    storage = handle.storage
    worker = {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}
    storage.set_trial_user_attr(trial._trial_id, WORKER, worker)
    run = tracker.start_trial(handle.experiment_id, handle.parent_run_id, handle.name, trial.number)
    storage.set_trial_user_attr(trial._trial_id, RUN_ID, run.run_id)
    return run


def run_next_trial(handle: StudyHandle, objective: Objective, tracker: Tracker) -> TrialOutcome | None:
    """Claim a queued trial, run it, and close it in both stores with its true outcome.

    Returns None when no trial is queued. Ctrl-C, SIGTERM and fatal errors still close the trial
    (FAIL) and its run (KILLED or FAILED), then propagate.
    """
    started = time.monotonic()
    study = handle.load()
    optuna.storages.fail_stale_trials(study)
    signals = SignalHold()
    signals.hold()
    trial = claim_trial(study, handle.storage)
    if trial is None:
        signals.release()
        return None
    storage = handle.storage
    value: float | None = None
    reason = ""
    escaping: BaseException | None = None
    run_status = None
    run: TrialRun | None = None
    with Heartbeat(storage, trial._trial_id):
        try:
            run = _open_trial(handle, trial, tracker)
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
    tags = {STATE_TAG: state.name, "automl.seconds": f"{seconds:.3f}"}
    if reason:
        tags[REASON_TAG] = reason[:5000]
    try:
        try:
            attr = {TrialState.FAIL: FAIL_REASON, TrialState.PRUNED: PRUNED_REASON}.get(state)
            if attr:
                storage.set_trial_user_attr(trial._trial_id, attr, reason)
            storage.set_trial_user_attr(trial._trial_id, SECONDS, round(seconds, 3))
            study.tell(trial, value, state=state)
        except STORAGE_ERRORS as e:
            if run is not None:
                with contextlib.suppress(Exception):
                    run.end("FAILED", {**tags, REASON_TAG: f"Optuna storage failed: {e}"})
            raise FatalError(f"Optuna storage failed while closing trial {trial.number}: {e}") from e
        if run is not None and not isinstance(escaping, TrackingError):
            run.end(run_status or run_status_for(state.name), tags)
    finally:
        signals.release(raise_pending=escaping is None)
    if escaping is not None:
        raise escaping
    try:
        best = study.best_trial
    except ValueError:  # no complete trial yet
        best = None
    return TrialOutcome(trial.number, state, value, seconds, reason, best)


def run_worker(
    handle: StudyHandle,
    objective: Objective,
    tracker: Tracker,
    deadline: float | None = None,
    report: ReportFn | None = None,
    linger: bool = False,
) -> int:
    """Claim and run trials until the pool is empty or `deadline` (monotonic) passes.

    With `linger` (lost trials are retried), an empty pool is not the end while trials still run
    elsewhere: one of them may be lost and queued again, so the worker waits and checks."""
    done = 0
    gc.collect()
    gc.freeze()  # libraries and data stay; the per-trial collection then only scans new objects
    while deadline is None or time.monotonic() < deadline:
        outcome = run_next_trial(handle, objective, tracker)
        if outcome is None:
            running = handle.load().get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if linger and running:
                time.sleep(handle.storage.get_heartbeat_interval() or 1)
                continue
            break
        done += 1
        release_memory()
        if report is not None:
            report(outcome)
    return done


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM raises `Terminated` (a KeyboardInterrupt), so the running trial is
    closed like on Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- summary and the best model ------------------------------------------------------------------


def counts(study: optuna.Study) -> dict[str, int]:
    result = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        result[t.state.name] += 1
    return result


@dataclass
class BestModel:
    """What `finalize` logged about the best trial."""

    trial: int
    value: float
    test_metrics: dict[str, float]
    model_uri: str
    version: str
    champion: bool | None  # whether this search moved the champion alias (None: logged earlier)


def better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def finalize(
    handle: StudyHandle, tracker: Tracker, data: Dataset, say: Callable[[str], None] = print
) -> BestModel | None:
    """Summarise the study on its parent run; log, register and crown the best model.

    Idempotent: the best model is logged once per best trial. Raises FatalError when no trial
    completed (nothing is logged or registered then).
    """
    study = handle.load()
    totals = counts(study)
    summary_metrics = {f"n_{k.lower()}": float(v) for k, v in totals.items()
                       if k in ("COMPLETE", "PRUNED", "FAIL")}
    table = trials_table(study)
    finished = totals["COMPLETE"] + totals["PRUNED"] + totals["FAIL"]
    if totals["COMPLETE"] == 0:
        tracker.log_summary(handle.parent_run_id, {}, summary_metrics, {}, table)
        if finished:
            raise FatalError(f"all {finished} finished trial(s) of study {handle.name!r} failed or "
                             "were pruned; no best model was logged")
        return None
    plots = PlotJob(study)  # drawn in a child process while the best model is logged
    try:
        best = _log_best(handle, tracker, data, study, summary_metrics, table, say)
        folder = plots.result()
        if folder is not None:
            tracker.log_folder(handle.parent_run_id, folder, "plots")
        return best
    finally:
        plots.cleanup()


def _log_best(handle: StudyHandle, tracker: Tracker, data: Dataset, study: optuna.Study,
              summary_metrics: dict[str, float], table: Any, say: Callable[[str], None]) -> BestModel:
    """Evaluate the best trial's kept weights on the test split; log, register and crown it."""
    space = handle.space
    best = study.best_trial
    metric = space.metric
    test_metric = "test_" + metric.removeprefix("val_")
    tags = tracker.tags(handle.parent_run_id)
    best_tags = {f"best.{k}": str(v) for k, v in best.params.items()}
    summary_metrics[f"best_{metric}"] = float(best.value)
    if tags.get(BEST_TRIAL_TAG) == str(best.number):  # already logged by an earlier summary
        tracker.log_summary(handle.parent_run_id, {}, summary_metrics, best_tags, table)
        logged = tracker.metrics(handle.parent_run_id)
        return BestModel(best.number, float(best.value), {k: v for k, v in logged.items() if k.startswith("test_")},
                         tags.get("automl.best_model_uri", ""), tags.get("automl.registered_version", ""), None)

    run_id = best.user_attrs.get(RUN_ID)
    with tempfile.TemporaryDirectory() as tmp:
        weights = tracker.download(run_id, WEIGHTS_DIR, Path(tmp))
        model = load_checkpoint(weights, "cpu")
        test_split = data.to("cpu").test
        test = {f"test_{k}": v for k, v in evaluate(model, test_split, data.task).items()}
        (weights / "metadata.json").write_text(json.dumps({
            "study": handle.name, "trial": best.number, "metric": metric, "value": best.value,
            "direction": space.direction, "params": best.params, "trial_run_id": run_id,
            "study_run_id": handle.parent_run_id, **test,
        }, indent=2))
        tracker.log_folder(handle.parent_run_id, weights, BEST_DIR)
        example = test_split.x[:4].float().numpy()
        version_tags = {"study": handle.name, "trial": str(best.number), test_metric: str(test[test_metric]),
                        "direction": space.direction, "study_run_id": handle.parent_run_id}
        model_uri, version = tracker.log_model(handle.parent_run_id, model, example, handle.name,
                                               version_tags)
    current = tracker.champion(handle.name)
    crown = True
    if current is not None and test_metric in current.tags:
        crown = better(test[test_metric], float(current.tags[test_metric]), space.direction)
    if crown:
        tracker.set_champion(handle.name, version)
        say(f"Registered {handle.name} version {version} as @champion "
            f"({test_metric}={test[test_metric]:.4f})")
    else:
        say(f"Registered {handle.name} version {version}; @champion stays on version "
            f"{current.version} ({test_metric}={float(current.tags[test_metric]):.4f} vs "
            f"{test[test_metric]:.4f})")
    summary_metrics.update(test)
    tracker.log_summary(
        handle.parent_run_id, {}, summary_metrics,
        {**best_tags, BEST_TRIAL_TAG: str(best.number), "automl.best_model_uri": model_uri,
         "automl.registered_version": version},
        table,
    )
    return BestModel(best.number, float(best.value), test, model_uri, version, crown)
