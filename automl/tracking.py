"""MLflow records: one experiment per study, a parent run per study, a nested child run per trial.

Everything goes through an explicit `MlflowClient` (no process-global active run), so trials in
threads, worker processes and other machines all attach to the right parent. Per-epoch metrics
are one asynchronous batch call each, off the training loop's path. Any MLflow failure becomes a
`TrackingError`, which stops the search with a clear message.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")  # fail within about a minute,
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # not after MLflow's default
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")  # of several minutes
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline tool: no usage reports
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
from mlflow.entities import DatasetInput, Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from automl.checks import DEFAULT_TRACKING_URI, mask_text, mask_url  # noqa: E402
from automl.errors import FatalError, UsageError  # noqa: E402
from automl.locks import creation_lock, storage_exists  # noqa: E402
from automl.runs import (  # noqa: E402, F401 - the record names, re-exported for callers of this module
    BEST_DIR,
    BEST_TRIAL_TAG,
    CHAMPION,
    FINAL_WEIGHTS_DIR,
    REASON_TAG,
    ROLE_TAG,
    STATE_TAG,
    STUDY_TAG,
    TRIAL_TAG,
    WEIGHTS_DIR,
    NullTrialRun,
    RegisteredVersion,
    RunRecords,
    TrackingError,
    downloaded,
    now_ms,
    run_status_for,
)

if TYPE_CHECKING:  # not imported here: the search's MLflow process imports this module before torch
    import numpy as np
    import pandas as pd
    import torch

MAX_PARAM_LENGTH = 6000
FLUSH_SECONDS = 2.0  # per-epoch metrics reach the store at most this late while a trial runs
MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limits: 1000 entries in all,
MAX_PARAMS_PER_CALL = 100  # of which at most 100 params
MAX_TAGS_PER_CALL = 100  # and 100 tags
# the MLflow UI opens such experiments in its "Model training" view (runs, metrics), not GenAI's
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}

T = TypeVar("T")


def _fatal(action: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Turn any failure of an MLflow call into a one-line `TrackingError`."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def call(self: Any, *args: Any, **kwargs: Any) -> T:
            try:
                return fn(self, *args, **kwargs)
            except FatalError:  # already one clear line (a TrackingError, a CheckpointError, ...)
                raise
            except Exception as e:  # MlflowException, OSError, requests and sqlalchemy errors
                first = mask_text(_first_line(e)[:300], self.uri)
                raise TrackingError(f"MLflow tracking ({mask_url(self.uri)}) failed to {action}: {first}") from e

        return call

    return wrap


def _params(values: dict[str, Any]) -> list[Param]:
    return [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in values.items()]


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class TrialRun:
    """The child run of one trial, open while the trial trains.

    Its parameters and metrics are buffered and written together: one batched call at most every
    FLUSH_SECONDS while the trial trains, and one at its end that also carries the final tags. A
    short trial thus costs three store writes (create, one batch, close) instead of one per call.
    """

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker = tracker
        self.uri = tracker.uri
        self.run_id = run_id
        self._pending: list[Future[None]] = []
        self._params: list[Param] = []
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()

    def log_params(self, params: dict[str, Any]) -> None:
        """Record the trial's parameters; they reach the store with the next batch of metrics
        (the first epoch's, when it ends FLUSH_SECONDS or more after the run opened)."""
        self._params.extend(_params(params))

    def log_epoch(self, epoch: int, metrics: dict[str, float], stamp: int | None = None) -> None:
        """Record one epoch's metrics (with `step=epoch`). They are sent in one batched call at
        most every FLUSH_SECONDS, and at the end of the trial, so short epochs do not pay a store
        round trip each. A search's trial runs are written by the recording process
        (`automl.recorder`), which calls this; where runs are written in the training process
        (Ray tasks, no fork), a tracking server is written from a background thread (`end` waits
        for it and raises its failure) and a local store inline. `stamp`: when the epoch ended
        (ms), default now."""
        stamp = stamp or now_ms()
        self._buffer.extend(Metric(k, float(v), stamp, epoch) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def _take(self) -> tuple[list[Param], list[Metric]]:
        params, metrics = self._params, self._buffer
        self._params, self._buffer = [], []
        self._last_flush = time.monotonic()
        return params, metrics

    def flush(self) -> None:
        """Send the buffered parameters and metrics now."""
        params, metrics = self._take()
        if params or metrics:
            self._submit(self._send, params, metrics)

    def _submit(self, write: Callable[..., None], *args: Any) -> None:
        """Write inline to a local store; to a server from the background thread (`end` waits)."""
        if self.tracker.background is None:
            write(*args)
        else:
            self._pending.append(self.tracker.background.submit(write, *args))

    @_fatal("log the trial's data")
    def _send_data(self, datasets: list[DatasetInput]) -> None:
        self.tracker.client.log_inputs(self.run_id, datasets=datasets)

    @_fatal("log the trial's parameters and metrics")
    def _send(self, params: list[Param], metrics: list[Metric], tags: list[RunTag] | None = None) -> None:
        """One `log_batch` call, or more where MLflow's per-call limits require."""
        tags = tags or []
        while params or metrics or tags:
            p, t = params[:MAX_PARAMS_PER_CALL], tags[:MAX_TAGS_PER_CALL]
            m = metrics[:MAX_METRICS_PER_CALL - len(p) - len(t)]
            self.tracker.client.log_batch(self.run_id, metrics=m, params=p, tags=t)
            params, metrics, tags = params[len(p):], metrics[len(m):], tags[len(t):]

    def log_metrics(self, metrics: dict[str, float], stamp: int | None = None) -> None:
        """Summary metrics of the trial (no step), e.g. `best_val_accuracy`, `best_epoch`."""
        if metrics:
            stamp = stamp or now_ms()
            self._buffer.extend(Metric(k, float(v), stamp, 0) for k, v in metrics.items())

    @_fatal("log the trial's weights")
    def log_weights(self, folder: Path) -> None:
        self.tracker.client.log_artifacts(self.run_id, str(folder), WEIGHTS_DIR)

    @_fatal("close the trial run")
    def end(self, status: str, tags: dict[str, str]) -> None:
        """Wait for the batches in flight, send what is buffered together with the final tags, then
        set the run status. The run is closed with its tags even when its last records could not
        be sent (and that failure is raised)."""
        final_tags = [RunTag(k, v) for k, v in tags.items()]
        try:
            pending, self._pending = self._pending, []
            for operation in pending:
                operation.result()
            self._send(*self._take(), final_tags)
            final_tags = []
        finally:
            if final_tags:
                self.tracker.client.log_batch(self.run_id, tags=final_tags)
            self.tracker.client.set_terminated(self.run_id, status)


class Tracker:
    """Study-level MLflow operations on one tracking URI."""

    def __init__(self, uri: str = DEFAULT_TRACKING_URI, create: bool = True) -> None:
        self.uri = uri
        if not create and not storage_exists(uri):
            raise UsageError(f"--tracking-uri: no MLflow store at {mask_url(uri)} (nothing was tracked there yet)")
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        remote = uri.startswith(("http://", "https://", "databricks"))
        self.background = ThreadPoolExecutor(1, thread_name_prefix="automl-tracking") if remote else None
        self._system_tags: dict[str, str] | None = None
        self._datasets: dict[str, list[DatasetInput]] = {}  # per study run: its dataset inputs
        if not remote:
            self._open_store()

    def detach(self) -> list[Any]:
        """In a forked child (`automl.recorder`): write inline, on connections of its own, as
        SQLAlchemy asks after a fork. Returns the parent's connection pools (`detach_engines`)."""
        self.background = None
        return detach_engines()

    @_fatal("open the tracking store")
    def _open_store(self) -> None:
        """Create a new database's tables now, one process at a time (MLflow's schema creation
        races when two searches start at once in an empty folder)."""
        with creation_lock(self.uri):
            self.client._tracking_client.store  # noqa: B018 - creating the store creates the tables

    @_fatal("read a run")
    def run_state(self, run_id: str) -> str | None:
        """A run's status, "deleted" for a deleted run, None when there is no such run."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        return "deleted" if run.info.lifecycle_stage == "deleted" else run.info.status

    @_fatal("find the experiment")
    def find_experiment(self, study_name: str | None) -> str | None:
        """The experiment id of a study (the most recently created one when `study_name` is None)."""
        if study_name is not None:
            found = self.client.get_experiment_by_name(study_name)
            return found.experiment_id if found is not None else None
        experiments = self.client.search_experiments(order_by=["creation_time DESC"], max_results=1)
        return experiments[0].experiment_id if experiments else None

    @_fatal("find a registered version")
    def find_version(self, study_name: str, tags: dict[str, str]) -> RegisteredVersion | None:
        """The registered version of `study_name` whose tags include `tags`, if any."""
        try:
            versions = self.client.search_model_versions(f"name = '{study_name}'")
        except MlflowException:
            return None
        for version in versions:
            if all(version.tags.get(k) == v for k, v in tags.items()):
                return _registered(version)
        return None

    @_fatal("open the experiment")
    def experiment_id(self, study_name: str) -> str:
        """The experiment named after the study, created on first use."""
        found = self.client.get_experiment_by_name(study_name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        try:
            return self.client.create_experiment(study_name, tags=EXPERIMENT_TAGS)
        except MlflowException:  # another process created it first
            found = self.client.get_experiment_by_name(study_name)
            if found is None:
                raise
            return found.experiment_id

    @_fatal("start the study run")
    def start_study_run(
        self, experiment_id: str, study_name: str, params: dict[str, Any], space_text: str,
        data: dict[str, Any] | None = None,
    ) -> str:
        run = self.client.create_run(
            experiment_id,
            run_name=study_name,
            tags={**self.system_tags(), ROLE_TAG: "study", STUDY_TAG: study_name},
        )
        run_id = run.info.run_id
        try:
            self.client.log_batch(run_id, params=_params(params))
            self.client.log_text(run_id, space_text, "search_space.yaml")
            if data:
                self.log_data(run_id, data)
        except Exception as e:  # e.g. the artifact store cannot be written: never left RUNNING
            self._close_failed(run_id, e)
            raise
        return run_id

    def _close_failed(self, run_id: str, error: BaseException) -> None:
        """Close a run that could not be set up FAILED, with the reason, while the store answers."""
        with contextlib.suppress(Exception):
            self.client.log_batch(run_id, tags=[RunTag(REASON_TAG, _first_line(error)[:5000])])
            self.client.set_terminated(run_id, "FAILED")

    def system_tags(self) -> dict[str, str]:
        """MLflow's usual run tags (source name and type, user, git commit in a repository), resolved
        once per process: `create_run` does not add them by itself."""
        if self._system_tags is None:
            from mlflow.tracking.context.registry import resolve_tags

            self._system_tags = {k: str(v) for k, v in resolve_tags().items()}
        return self._system_tags

    def log_data(self, run_id: str, data: dict[str, Any]) -> None:
        """Record the data a run trains on as an MLflow dataset input (name, source, digest, shape)."""
        dataset = mlflow.entities.Dataset(
            name=str(data.get("name")), digest=str(data.get("digest"))[:36], source_type="automl",
            source=json.dumps({"source": str(data.get("source"))}),
            profile=json.dumps({"rows": data.get("rows"), "shapes": data.get("shapes")}, default=str),
        )
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, [])])

    @_fatal("log the best value so far")
    def log_best_so_far(self, run_id: str, metric: str, value: float, trial_number: int) -> None:
        """The study's best value after a trial, with `step` = trial number (a live progress chart)."""
        self.client.log_batch(run_id, metrics=[Metric(f"best_so_far_{metric}", float(value), now_ms(),
                                                      trial_number)])

    @_fatal("start a trial run")
    def start_trial(
        self, experiment_id: str, parent_run_id: str, study_name: str, number: int
    ) -> TrialRun:
        datasets = self._study_data(parent_run_id)
        run = self.client.create_run(
            experiment_id,
            run_name=f"trial-{number}",
            tags={
                **self.system_tags(),
                "mlflow.parentRunId": parent_run_id,
                ROLE_TAG: "trial",
                STUDY_TAG: study_name,
                TRIAL_TAG: str(number),
                STATE_TAG: "RUNNING",
            },
        )
        trial_run = TrialRun(self, run.info.run_id)
        if datasets:  # the study's data, on each trial run too: one call per trial
            try:
                trial_run._submit(trial_run._send_data, datasets)
            except Exception as e:  # the run is not handed back, so it is closed here
                self._close_failed(trial_run.run_id, e)
                raise
        return trial_run

    def _study_data(self, parent_run_id: str) -> list[DatasetInput]:
        """The dataset inputs of a study run (as `log_data` wrote them), read once per process."""
        if parent_run_id not in self._datasets:
            inputs = self.client.get_run(parent_run_id).inputs
            found = inputs.dataset_inputs if inputs is not None else []
            self._datasets[parent_run_id] = [DatasetInput(d.dataset, list(d.tags)) for d in found]
        return self._datasets[parent_run_id]

    @_fatal("update a run")
    def set_status(self, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
        """Close (or reopen, with RUNNING) a run, with optional tags."""
        if tags:
            self.set_tags(run_id, tags)
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status)

    @_fatal("tag a run")
    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    @_fatal("remove a run's tag")
    def delete_tag(self, run_id: str, key: str) -> None:
        self.client.delete_tag(run_id, key)

    @_fatal("read a run's tags")
    def tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    @_fatal("log metrics")
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Metrics on a run (open or closed) in one call, e.g. a trial's scores over extra seeds."""
        stamp = now_ms()
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()])

    @_fatal("read a run's metrics")
    def metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    @_fatal("download weights")
    def download(self, run_id: str, path: str, into: Path) -> Path:
        return Path(self.client.download_artifacts(run_id, path, str(into)))

    def artifacts(self, run_id: str, path: str) -> contextlib.AbstractContextManager[Path]:
        """A run's artifact folder `path`, downloaded into a temporary folder for the block."""
        return downloaded(self, run_id, path)

    def artifact_location(self, run_id: str, path: str) -> str:
        """Where a run keeps an artifact: a local path for a local store, else its URI."""
        try:
            root = self.client.get_run(run_id).info.artifact_uri
        except Exception:
            return f"artifact {path} of MLflow run {run_id}"
        if root.startswith("file://"):
            root = root.removeprefix("file://")
        return f"{root.rstrip('/')}/{path}"

    @_fatal("log the study summary")
    def log_summary(
        self, run_id: str, params: dict[str, Any], metrics: dict[str, float],
        tags: dict[str, str], trials: pd.DataFrame, model_id: str | None = None,
    ) -> None:
        """The study's summary on its run; with `model_id`, its best model's scores (`best_*`,
        `test_*`) are that logged model's metrics too (MLflow's Models tab shows them)."""
        stamp = now_ms()

        def linked(key: str) -> str | None:
            return model_id if key.startswith(("best_", "test_")) else None

        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), stamp, 0, model_id=linked(k)) for k, v in metrics.items()],
            params=[p for p in _params(params) if p.key not in self._logged_params(run_id)],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trials.csv"
            trials.to_csv(path, index=False)
            self.client.log_artifact(run_id, str(path))

    def _logged_params(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.params)

    @_fatal("log files to the study run")
    def log_folder(self, run_id: str, folder: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    @_fatal("log the best model")
    def log_model(
        self, run_id: str, model: torch.nn.Module, example: np.ndarray, study_name: str,
        version_tags: dict[str, str], weights: Path | None = None, *, trained_by: str | None = None,
        description: str = "", params: dict[str, Any] | None = None,
    ) -> tuple[str, str]:
        """Log the best model on the study run and register a version: one MLflow model whose
        `pytorch` flavor is pt2 (pickle plus the builder's code where torch.export fails) and whose
        pyfunc (`automl.serving`) answers labels and probabilities like `automl predict`.
        `weights` is its checkpoint folder (default: the run's `best_model` artifacts). The format
        is tagged on the run as `automl.model_format`. The version carries `version_tags` and
        `description` and points at `trained_by` (the winning trial's run; default `run_id`);
        the logged model (in the study's experiment) holds the study run's params and `params`.
        Returns (model URI, registered version).
        """
        from automl.serving import FORMAT_KEY, log_served_model

        with _lines_hidden():  # MLflow's own "Successfully registered ..." lines: the search's say it
            run = self.client.get_run(run_id)
            # created here so that it belongs to the study's experiment (MLflow would put it in the
            # active one: Default), with the study's settings and the winning trial's params
            logged = self.client.create_logged_model(
                run.info.experiment_id, name="model", source_run_id=run_id, tags=self.system_tags(),
                params={**run.data.params, **{k: str(v)[:MAX_PARAM_LENGTH] for k, v in (params or {}).items()}})
            with tempfile.TemporaryDirectory() as tmp:
                if weights is None:
                    weights = Path(self.client.download_artifacts(run_id, BEST_DIR, tmp))
                with self._fluent_uris(), _no_requirement_check():
                    model_uri, model_format = log_served_model(run_id, model, weights, example, logged.model_id)
            self.client.set_tag(run_id, FORMAT_KEY, model_format)
            model_id = logged.model_id
            try:
                self.client.create_registered_model(study_name, description=f"Best networks of the automl study "
                                                                           f"{study_name!r}; @champion is the best.")
            except MlflowException as e:
                if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            with self._fluent_uris():  # the registry store looks the logged model up through MLflow's globals
                version = self.client.create_model_version(
                    study_name, model_uri, run_id=trained_by or run_id, tags=version_tags,
                    description=description or None, model_id=model_id)
            return model_uri, str(version.version)

    @contextlib.contextmanager
    def _fluent_uris(self) -> Iterator[None]:
        """Point MLflow's process-global URIs at this tracker for a fluent-API call, then restore
        them (a caller's own MLflow session in the same process is left as it was)."""
        tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(tracking)
            mlflow.set_registry_uri(registry)

    @_fatal("read the registered champion")
    def champion(self, study_name: str) -> RegisteredVersion | None:
        """The model version holding the champion alias, if any."""
        try:
            return _registered(self.client.get_model_version_by_alias(study_name, CHAMPION))
        except MlflowException:
            return None

    @_fatal("move the champion alias")
    def set_champion(self, study_name: str, version: str) -> None:
        self.client.set_registered_model_alias(study_name, CHAMPION, version)

    @_fatal("find the study run")
    def study_runs(self, study_name: str) -> list[Any]:
        """Parent runs of a study, newest first."""
        experiment = self.client.get_experiment_by_name(study_name)
        if experiment is None:
            return []
        return self.client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'study'",
            order_by=["attributes.start_time DESC"],
        )

    @_fatal("find a trial's run")
    def find_trial_run(self, experiment_id: str, parent_run_id: str, number: int) -> str | None:
        """The id of trial `number`'s run under a study run, if there is one."""
        found = self.client.search_runs(
            [experiment_id], max_results=1,
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{number}'",
        )
        return found[0].info.run_id if found else None

    @_fatal("list the open trial runs")
    def running_trial_runs(self, parent_run_id: str, experiment_id: str) -> list[tuple[str, str]]:
        """(run id, trial number tag) of the trial runs under a study run that are still RUNNING."""
        return [(run.info.run_id, run.data.tags.get(TRIAL_TAG, ""))
                for run in self.trial_runs(parent_run_id, experiment_id) if run.info.status == "RUNNING"]

    @_fatal("list the trial runs")
    def trial_runs(self, parent_run_id: str, experiment_id: str) -> list[Any]:
        return self.client.search_runs(
            [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            max_results=50000,
        )


def detach_engines() -> list[Any]:
    """In a forked child: MLflow's stores open connections of their own from now on, as SQLAlchemy
    asks after a fork. Returns the parent's connection pools, for the child to keep: freed, they
    would close connections the parent still uses."""
    inherited = []
    for name in ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store"):
        store_class = getattr(sys.modules.get(name), "SqlAlchemyStore", None)
        for engine in getattr(store_class, "_engine_map", {}).values():
            inherited.append(engine.pool)
            engine.dispose(close=False)
    return inherited


def _registered(version: Any) -> RegisteredVersion:
    return RegisteredVersion(str(version.version), str(version.source), dict(version.tags))


@contextlib.contextmanager
def _lines_hidden() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def _no_requirement_check() -> Iterator[None]:
    """Skip MLflow's check that the running environment satisfies the model's requirements while
    the model is saved: they are this environment's own versions, and the check maps every module
    of every installed package first (`importlib.metadata.packages_distributions`: 1 to 4 s in a
    large environment, the largest part of the end of a small search)."""
    from mlflow.utils import environment

    check = environment.warn_dependency_requirement_mismatches
    environment.warn_dependency_requirement_mismatches = lambda *args, **kwargs: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = check
