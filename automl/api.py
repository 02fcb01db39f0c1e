"""The use cases: search, worker, best, report, studies, predict.

The only module that composes storage, study record, tracking, data, the worker loop and
publishing. `automl.search(...)` and the command line both call it, so both write the same records.
Bad input raises `UsageError` subclasses (one line each); a search stopped by Ctrl-C or SIGTERM
closes both stores first and then re-raises the interrupt.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automl import checks, keys
from automl.errors import FatalError, UsageError
from automl.requests import SearchRequest, WorkerRequest

Say = Callable[[str], None]
DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "digits_mlp.yaml"


def _print(line: str) -> None:
    print(line, flush=True)


@dataclass
class Best:
    """The best trial of a search: its trained network (eval mode), parameters and scores."""

    trial: int
    params: dict[str, Any]
    metrics: dict[str, float]  # the validation metric and the test scores
    model: Any = None  # torch.nn.Module


@dataclass
class SearchResult:
    """What `automl.search` returns."""

    study_name: str
    study: Any  # optuna.Study
    best: Best | None
    model_uri: str
    tracking_uri: str
    storage: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def trials(self) -> Any:
        """One row per trial (the columns of `automl report`), best first."""
        from automl.report import trials_table

        return trials_table(self.study)


def search(space: Any = None, **options: Any) -> SearchResult:
    """Run (or resume) a search; keyword arguments mirror the command line's flags.

    >>> result = automl.search("search_spaces/digits_mlp.yaml", trials=30, seed=0)
    >>> result.best.model, result.best.params, result.trials, result.model_uri
    """
    progress = options.pop("progress", True)
    request = SearchRequest(space=DEFAULT_SPACE if space is None else space, quiet=not progress, **options)
    return run_search(request)


# --- search -------------------------------------------------------------------------------------


def _as_space(request: SearchRequest) -> Any:
    """The validated space of a request (parsed once per process)."""
    from automl.space import Space

    given = request.space
    if isinstance(given, Space):
        space = given
    elif isinstance(given, dict):
        space = Space.from_dict(given)
    elif isinstance(given, (str, Path)):
        space = Space.from_yaml(given)
    else:
        raise UsageError(f"space: expected a path, YAML text, a dict or an automl.Space, got {type(given).__name__}")
    if request.model is not None:
        space = space.with_builder(request.model)
    return space


def _load_data(space: Any, seed: int, data_dir: str, download: bool, python_data: Any = None) -> Any:
    from automl.data import dataset_from_python, load_dataset

    if python_data is not None:
        return dataset_from_python(python_data, task=space.task, seed=seed,
                                   validation_fraction=space.validation_fraction,
                                   test_fraction=space.test_fraction)
    return load_dataset(
        space.dataset, seed=seed, data_dir=data_dir,
        validation_fraction=space.validation_fraction, test_fraction=space.test_fraction,
        path=space.data_path, target=space.target, task=space.task,
        image_size=space.image_size, color=space.color, download=download,
    )


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while a search or a worker starts: it imports torch, MLflow, Optuna
    and SQLAlchemy, hundreds of thousands of objects and hardly any garbage, and Python would scan
    the growing heap a dozen times on the way (1-2 s measured). Earlier garbage is collected
    first; what the start-up made is then frozen (`gc.freeze`: long-lived objects that later
    collections skip), its few import-time reference cycles with it."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _setup_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


@dataclass
class _Search:
    """A search under way: what the phases of `run_search` share."""

    request: SearchRequest
    space: Any
    name: str
    storage_url: str
    tracking_uri: str
    device: Any
    gpus: list[str]
    workers: int
    seed: int
    data: Any = None
    timeout: float | None = None  # no new trial starts after this many seconds
    storage: Any = None
    tracker: Any = None  # a Tracker, or a RemoteTracker whose MLflow calls `mlflow_process` makes
    handle: Any = None
    study: Any = None
    mlflow_process: Any = None  # automl.recorder.Recorder, forked as the search starts

    @property
    def in_process(self) -> bool:
        """Whether this process runs every trial itself (one local worker, at most one GPU)."""
        return self.request.launcher == "local" and self.workers == 1 and len(self.gpus) <= 1


def _check_numbers(request: SearchRequest) -> None:
    """The numeric options (the command line's types check the same)."""
    for flag, value, low in (("--trials", request.trials, 1), ("--workers", request.workers, 0),
                             ("--retry-failed", request.retry_failed, 0), ("--threads", request.threads, 1),
                             ("--heartbeat-interval", request.heartbeat_interval, 1),
                             ("--grace-period", request.grace_period, 1),
                             ("--warm-start-k", request.warm_start_k, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise UsageError(f"{flag}: must be a whole number of at least {low}, got {value!r}")
    if request.timeout is not None and not (isinstance(request.timeout, (int, float)) and request.timeout > 0):
        raise UsageError(f"--timeout: must be a positive number of seconds, got {request.timeout!r}")


def _prepare(request: SearchRequest) -> _Search:
    """Check every input and load the data: nothing is created yet."""
    from automl import launch
    from automl.train import resolve_device

    _check_numbers(request)
    space = _as_space(request)
    if request.pruner == "percentile":
        raise UsageError("--pruner: percentile needs its `percentile` option: set it in the space's pruner section")
    space = space.with_algorithms(request.sampler, request.pruner)
    name = checks.check_study_name(request.study or space.name)
    storage_url = checks.storage_url(request.storage)
    device = resolve_device(request.device)
    gpus = launch.visible_gpus() if device.type == "cuda" else []
    workers = request.workers if request.workers is not None else (
        len(gpus) * request.workers_per_gpu if gpus else 1)
    if request.launcher == "ray" and workers < 1:
        raise UsageError("--workers: the Ray launcher needs at least one worker")
    if request.data is not None and (workers != 1 or len(gpus) > 1):
        raise UsageError("data: data given from Python trains in this process only: use workers=1")
    seed = 0 if request.seed is None else request.seed
    data = _load_data(space, seed, request.data_dir, request.download, request.data)
    if space.builder is not None:  # the user's network: built once and run on two inputs first
        from automl.space import check_space_builder

        check_space_builder(space, data.input_shape, data.n_outputs, seed)
    tracking_uri = checks.tracking_uri(request.tracking_uri)
    return _Search(request, space, name, storage_url, tracking_uri, device, gpus, workers, seed, data,
                   request.timeout or space.timeout)


def _adopt_stored(s: _Search, attrs: dict[str, Any]) -> None:
    """A resumed study keeps the seed and the tracking store it began with, unless the request
    names them (a seed other than the study's is refused; another store is refused later)."""
    request = s.request
    if request.tracking_uri is None:
        s.tracking_uri = checks.tracking_uri(None, attrs.get(keys.TRACKING_URI))
    stored_seed = attrs.get(keys.SEED, s.seed)
    if stored_seed != s.seed:
        if request.seed is not None:
            raise UsageError(f"--seed: study {s.name!r} was created with seed {stored_seed}, not {s.seed}")
        s.seed = stored_seed
        s.data = _load_data(s.space, s.seed, request.data_dir, request.download, request.data)


def _tracker(s: _Search) -> Any:
    """The search's tracker: a `RemoteTracker` where the search has its MLflow process (the store
    is opened there meanwhile), else a `Tracker` made here."""
    from automl.recorder import RemoteTracker

    if s.mlflow_process is not None:
        return RemoteTracker(s.mlflow_process, s.tracking_uri)
    from automl.tracking import Tracker

    return Tracker(s.tracking_uri)


def _open_early(mlflow_process: Any, request: SearchRequest) -> Any:
    """A `RemoteTracker` on the request's tracking store, opened by the MLflow process while this
    one checks the inputs and loads the data; None where opening it might create something (a new
    SQLite file, MLflow's tables in another database) before the inputs are known to be good."""
    from automl.locks import storage_exists
    from automl.recorder import RemoteTracker

    if mlflow_process is None:
        return None
    try:
        uri = checks.tracking_uri(request.tracking_uri)
    except Exception:  # noqa: BLE001 - reported by the checks of `_prepare`
        return None
    existing = storage_exists(uri) if checks.sqlite_file(uri) is not None else uri.startswith(("http://", "https://"))
    return RemoteTracker(mlflow_process, uri) if existing else None


def _open_study(s: _Search, say: Say) -> int:
    """Create or resume the study, its MLflow run and its budget. Returns how many trials the budget gained."""
    import optuna

    from automl import budget, record, stopping, storage
    from automl.recorder import RemoteTracker
    from automl.worker import close_stale_run

    request = s.request
    s.storage = storage.open_storage(s.storage_url, request.heartbeat_interval, request.grace_period,
                                     close_stale_run(request.tracking_uri, request.retry_failed))
    names = optuna.study.get_all_study_names(s.storage)
    if request.resume and s.name not in names:
        raise UsageError(f"--resume: no study named {s.name!r} in {checks.mask_url(s.storage_url)}")
    for source in request.warm_start or []:
        if source not in names:
            raise UsageError(f"--warm-start: no study named {source!r} in {checks.mask_url(s.storage_url)}")
    if s.name in names:
        _adopt_stored(s, record.stored_attrs(s.storage, s.name))
    if s.tracker is None or s.tracker.uri != s.tracking_uri:  # not opened early, or not the study's
        s.tracker = _tracker(s)
    if isinstance(s.tracker, RemoteTracker):
        s.tracker.ready()  # a store that cannot be opened stops the search before the study is made
    # never while another search of this study opens it or publishes its summary; the budget lock
    # (which the workers' refills take) only while the budget changes
    with storage.budget_lock(s.storage_url, s.name, "summary"):
        identity = s.data.identity()
        study, created = record.create_or_load(s.name, s.storage, s.space, s.seed, identity)
        s.space = record.keep_algorithms(study, s.space, request.sampler, request.pruner)
        record.check_tracking(study, s.tracker)
        experiment_id, parent = record.attach_tracking(study, s.tracker, _study_params(s), identity, say)
        with storage.budget_lock(s.storage_url, s.name):
            queued = budget.top_up_budget(study, request.trials or s.space.trials, s.storage_url,
                                          at_least=request.warm_start_k if request.warm_start else 0)
            n_trials = budget.budget_of(study)
            placed = (stopping.warm_start(study, s.storage, list(request.warm_start), s.space,
                                          k=request.warm_start_k) if request.warm_start else [])
        if queued and keys.STOP_REASON_TAG in s.tracker.tags(parent):  # a larger budget goes on
            s.tracker.delete_tag(parent, keys.STOP_REASON_TAG)
        if placed:
            say(f"  warm start: the first {len(placed)} queued trial(s) run the best parameters of "
                f"{', '.join(request.warm_start or [])}")
    s.handle = record.StudyHandle(s.name, s.storage, s.space, record.make_sampler(s.space, s.seed),
                                  record.make_pruner(s.space), s.seed, experiment_id, parent)
    s.study = study
    sizes = f"{len(s.data.train)}/{len(s.data.val)}/{len(s.data.test)}"
    say(f"study {s.name}: {'created' if created else 'resumed'}, {n_trials} trials in all, {queued} more "
        f"now; data {s.data.name} (train/val/test {sizes}); device {s.device}; workers {s.workers}")
    say(f"  optuna storage {checks.mask_url(s.storage_url)}; mlflow {checks.mask_url(s.tracking_uri)} "
        f"(experiment {experiment_id}, run {parent})")
    return queued


def _study_params(s: _Search) -> dict[str, Any]:
    space = s.space
    return {"dataset": space.dataset, "metric": space.metric, "direction": space.direction,
            "epochs": space.epochs, "sampler": space.sampler, "pruner": space.pruner,
            "seed": s.seed, "space_file": space.source, "space_digest": space.digest,
            "family": space.family}


def _run_trials(s: _Search, progress: Any, deadline: float | None) -> None:
    """Run the trials here, in worker processes or Ray tasks, and wait for workers elsewhere."""
    from automl import launch, worker
    from automl.objective import Objective

    request = s.request
    swept = worker.sweep(s.study, s.storage, s.tracker, s.handle.parent_run_id, s.handle.experiment_id)
    if swept and not request.quiet:
        _print(f"  {swept} trial(s) left running by a dead worker marked failed")
    s.tracker.set_status(s.handle.parent_run_id, "RUNNING")
    plan = WorkerRequest(
        s.name, checks.absolute_sqlite(s.storage_url), checks.absolute_sqlite(s.tracking_uri), request.device,
        str(Path(request.data_dir).resolve()), False, s.timeout, request.heartbeat_interval,
        request.grace_period, request.retry_failed, request.threads, request.quiet)
    if request.launcher == "ray":
        launch.run_ray_workers(run_worker, plan, s.workers)
    elif s.in_process:
        objective = Objective(s.space, s.data.to(s.device), s.seed)
        worker.run_worker(s.handle, objective, s.tracker, deadline, progress.trial,
                          linger=request.retry_failed > 0)
    elif s.workers > 0:
        launch.run_local_workers(plan, s.workers, s.gpus, s.handle, progress)
    launch.wait_for_other_workers(s.handle, progress, deadline, include_queued=s.workers == 0)


def run_search(request: SearchRequest, say: Say = _print) -> SearchResult:
    """Run a search: check inputs, open the study, run trials, publish the best model.

    Ctrl-C / SIGTERM: the running trial is closed, the best model so far is still published, the
    study run is closed KILLED, then the interrupt is raised again. A fatal error closes the study
    run FAILED and is raised."""
    from automl.recorder import Recorder

    mlflow_process = None
    try:
        with _collector_paused():
            # first of all: the process that makes every MLflow call imports MLflow meanwhile
            mlflow_process = Recorder.fork()
            s = _start(request, say, mlflow_process)
        return _search(s, say)
    finally:
        if mlflow_process is not None:  # a search that stopped before it started (else closed already)
            mlflow_process.abandon()


def _start(request: SearchRequest, say: Say, mlflow_process: Any) -> _Search:
    """Check the inputs, load the data, open the study (the MLflow process opens the store meanwhile)."""
    early = _open_early(mlflow_process, request)  # first: the store opens while the rest is imported
    from automl import plots, progress, publish  # noqa: F401 - what `_search` needs, while the collector waits
    from automl.storage import quiet_optuna

    quiet_optuna()
    s = _prepare(request)
    s.mlflow_process, s.tracker = mlflow_process, early
    _setup_threads(request.threads)
    _open_study(s, say)
    return s


def _search(s: _Search, say: Say) -> SearchResult:
    """Run the trials and publish the best model; whatever happens, close the study run, the MLflow
    process and the storage."""
    from automl import storage
    from automl.budget import pool
    from automl.plots import PlotJob
    from automl.progress import Progress
    from automl.publish import finalize, log_plots

    request = s.request
    plots: PlotJob | None = None
    progress: Progress | None = None
    deadline = time.monotonic() + s.timeout if s.timeout else None
    stop: BaseException | None = None
    status = "FINISHED"
    best = result = None
    try:
        try:
            planned = pool(s.study)  # one reading: trials in all (the budget not queued yet too), those done
            progress = Progress(planned.n_trials + planned.unopened, planned.n_trials - len(planned.waiting),
                                s.space.metric, request.quiet)
            plots = PlotJob()  # its process imports the plotting libraries while the trials run
            _run_trials(s, progress, deadline)
        except KeyboardInterrupt as e:
            stop, status = e, "KILLED"
        except Exception as e:  # FatalError, or a bug: the study run is closed FAILED all the same
            stop, status = e, "FAILED"
        finally:
            if progress is not None:
                progress.close()
        if stop is None or isinstance(stop, KeyboardInterrupt):  # after a failure nothing more is written
            try:
                with storage.budget_lock(s.storage_url, s.name, "summary"):
                    if stop is None and s.space.final_seeds > 1:  # the seed-robust champion
                        from automl.final import FinalProcesses, run_final

                        spread = None  # the retraining spread over processes, as the trials were
                        if s.workers > 1 and request.launcher == "local" and request.data is None:
                            spread = FinalProcesses(s.workers, _load_data, request.data_dir, str(s.device),
                                                    request.threads, tuple(s.gpus))
                        run_final(s.handle.load(), s.space, s.data if spread else s.data.to(s.device), s.tracker,
                                  s.seed, say, spread)
                    best = finalize(s.handle, s.tracker, s.data, say, interrupted=stop is not None, plots=plots)
                result = _result(s, best)
                _print_summary(s, result, best, say)  # as soon as the model is registered
                log_plots(s.handle, s.tracker, plots)
            except KeyboardInterrupt as e:
                stop, status = stop or e, "KILLED"
            except FatalError as e:
                stop = stop or e
                status = "FAILED" if status == "FINISHED" else status
            except Exception as e:  # an unexpected failure still closes the study run
                stop = stop or FatalError(f"publishing the best model failed: {type(e).__name__}: {e}")
                status = "FAILED" if status == "FINISHED" else status
    finally:
        try:
            if plots is not None:
                plots.cleanup()
        finally:
            _close(s, stop, status)
    if stop is not None:
        raise stop
    assert result is not None
    return result


def _close(s: _Search, stop: BaseException | None, status: str) -> None:
    """Close the study run with the search's status, then the MLflow process (once it has written
    what it was sent and closed the runs left open; a search stopped by a signal waits 30 s at
    most) and the storage."""
    from automl.recorder import CLOSE_TIMEOUT_S
    from automl.runs import REASON_TAG

    try:
        with _closing_errors(stop):
            why = {REASON_TAG: str(stop)[:5000]} if status == "FAILED" and stop is not None else None
            try:
                s.tracker.set_status(s.handle.parent_run_id, status, why)
            finally:
                if s.mlflow_process is not None:
                    s.mlflow_process.close(timeout=30 if status == "KILLED" else CLOSE_TIMEOUT_S, raise_signal=False)
    finally:
        s.storage.engine.dispose()  # SQLite removes its -wal/-shm files with the last connection


@contextlib.contextmanager
def _closing_errors(stop: BaseException | None) -> Iterator[None]:
    """A failure to close the study run is raised unless an earlier error is on its way already."""
    try:
        yield
    except FatalError:
        if stop is None:
            raise


def _result(s: _Search, best: Any) -> SearchResult:
    """What the search found (the study loaded afresh, with its counts)."""
    from automl.record import counts

    study = s.handle.load()
    chosen = None
    if best is not None:
        metrics = {s.space.metric: best.value, **best.test_metrics}
        chosen = Best(best.trial, dict(study.trials[best.trial].params), metrics, best.model)
    return SearchResult(s.name, study, chosen, f"models:/{s.name}@champion", checks.mask_url(s.tracking_uri),
                        checks.mask_url(s.storage_url), counts(study))


def _print_summary(s: _Search, result: SearchResult, best: Any, say: Say) -> None:
    from automl.selection import champion_note, champion_trial
    from automl.stopping import stop_reason

    study, totals = result.study, result.counts
    queued = f", {totals['WAITING']} still queued" if totals["WAITING"] else ""
    not_run = f", {totals['NOT_RUN']} not run" if totals["NOT_RUN"] else ""
    say(f"study {s.name}: {totals['COMPLETE']} complete, {totals['PRUNED']} pruned, {totals['FAIL']} failed"
        f"{not_run}{queued}")
    reason = stop_reason(study)
    if reason:
        say(f"  stopped early: {reason}")
    if totals["COMPLETE"]:
        trial = champion_trial(study)
        line = f"best trial {trial.number}: {s.space.metric}={trial.value:.4f}"
        if best is not None:
            test = ", ".join(f"{k}={v:.4f}" for k, v in best.test_metrics.items())
            line += f"; {test}; model version {best.version}"
        say(line)
        note = champion_note(study)  # multi-objective: how the champion was chosen
        if note:
            say(f"  {note}")
        say(f"  reload: automl.load_best({s.name!r}) or mlflow.pytorch.load_model('models:/{s.name}@champion')")
    say(f"  view: automl ui --tracking-uri {checks.mask_url(s.tracking_uri)}")


# --- worker -------------------------------------------------------------------------------------


def run_worker(request: WorkerRequest) -> int:
    """Join a study and run its queued trials until none is left (or the timeout). Returns trials run."""
    with _collector_paused():
        from automl import record, storage
        from automl.objective import Objective
        from automl.progress import Progress
        from automl.queries import load_study
        from automl.storage import quiet_optuna
        from automl.tracking import Tracker
        from automl.train import resolve_device
        from automl.worker import close_stale_run
        from automl.worker import run_worker as loop

        quiet_optuna()
        name = checks.check_study_name(request.study)
        storage_url = checks.storage_url(request.storage)
        device = resolve_device(request.device)
        _setup_threads(request.threads)
        study = load_study(name, storage_url)
        space = record.space_of(study)
        attrs = study.user_attrs
        tracking_uri = checks.tracking_uri(request.tracking_uri, attrs.get(keys.TRACKING_URI))
        if keys.PARENT_RUN_ID not in attrs:
            raise UsageError(f"--study: study {name!r} has no MLflow run yet; start it with `automl search`")
        seed = int(attrs.get(keys.SEED, 0))
        data = _load_data(space, seed, request.data_dir, request.download)
        opened = storage.open_storage(storage_url, request.heartbeat_interval, request.grace_period,
                                      close_stale_run(request.tracking_uri, request.retry_failed))
    handle = record.StudyHandle(name, opened, space,
                                record.make_sampler(space, seed + 7919 * (request.worker_index + 1)),
                                record.make_pruner(space), seed, attrs[keys.EXPERIMENT_ID],
                                attrs[keys.PARENT_RUN_ID])
    deadline = time.monotonic() + request.timeout if request.timeout else None
    progress = Progress(int(attrs.get(keys.BUDGET, 0)), 0, space.metric, request.quiet)
    try:
        return loop(handle, Objective(space, data.to(device), seed), Tracker(tracking_uri), deadline,
                    progress.trial, linger=request.retry_failed > 0, record_in_child=request.record_in_child)
    finally:
        progress.close()
        opened.engine.dispose()
