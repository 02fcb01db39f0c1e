"""The recording child (automl.recorder): trial runs written by another process, in order, with the
same records as inline; its MLflow failures reach the training process as one TrackingError; what
was sent before the training process is killed is still written; the sweep closes a run whose
trial never learnt its id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest

from automl.recorder import Recorder, fork_is_safe
from automl.recording_child import LEFT_OPEN
from automl.tracking import STATE_TAG, TRIAL_TAG, Tracker, TrackingError
from tests.conftest import ROOT, TINY_SPACE, make_stores


def _study_run(tracking_uri: str, name: str = "rec") -> tuple[Tracker, str, str]:
    tracker = Tracker(tracking_uri)
    experiment = tracker.experiment_id(name)
    parent = tracker.start_study_run(experiment, name, {"dataset": "digits"}, "space: text",
                                     data={"name": "digits", "digest": "abc", "source": "sklearn", "rows": 3})
    return tracker, experiment, parent


def test_a_trial_run_is_written_by_the_child_with_every_record(tmp_path: Path, mlflow_template: Path) -> None:
    stores = make_stores(tmp_path, mlflow_template)
    tracker, experiment, parent = _study_run(stores.tracking_uri)
    recorder = Recorder.start(tracker)
    assert recorder is not None and recorder.process.pid != os.getpid() and recorder.process.is_alive()
    run = recorder.start_trial(experiment, parent, "rec", 7)
    run.log_params({"lr": 0.01, "width": 32})
    for epoch in (1, 2, 3):
        run.log_epoch(epoch, {"val_accuracy": 0.5 + epoch / 10, "train_loss": 1.0 / epoch})
    run.log_metrics({"best_val_accuracy": 0.8, "best_epoch": 3})
    weights = tmp_path / "tmp" / "weights"
    weights.mkdir(parents=True)
    (weights / "model.safetensors").write_bytes(b"not really weights")
    run.log_weights(weights)
    assert not weights.exists()  # handed over: the child removes its copy once logged
    run.end("FINISHED", {STATE_TAG: "COMPLETE", "mlflow.runName": "trial-7"})
    run_id = run.run_id
    recorder.close()
    assert not recorder.process.is_alive()

    client = stores.client()
    written = client.get_run(run_id)
    assert written.info.status == "FINISHED" and written.info.run_name == "trial-7"
    assert written.data.params == {"lr": "0.01", "width": "32"}
    assert written.data.tags[TRIAL_TAG] == "7" and written.data.tags["mlflow.parentRunId"] == parent
    assert written.data.metrics["best_val_accuracy"] == 0.8
    history = client.get_metric_history(run_id, "val_accuracy")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.6), (2, 0.7), (3, 0.8)]
    assert [d.dataset.name for d in written.inputs.dataset_inputs] == ["digits"]
    assert [f.path for f in client.list_artifacts(run_id, "weights")] == ["weights/model.safetensors"]


def test_a_failure_in_the_child_stops_the_training_process_with_its_message(
        tmp_path: Path, mlflow_template: Path) -> None:
    """The child's failure is raised at the next record; runs are still created and closed (the
    failed one, the next one, and one the search never closed)."""
    stores = make_stores(tmp_path, mlflow_template)
    tracker, experiment, parent = _study_run(stores.tracking_uri)
    recorder = Recorder.start(tracker)
    assert recorder is not None
    failing = recorder.start_trial(experiment, parent, "rec", 0)
    failing.log_params({"lr": 0.01})
    failing.log_epoch(1, {"val_accuracy": 0.5})
    failing.log_params({"lr": 0.02})  # MLflow refuses to change a logged parameter (written at `end`)
    failing.end("FINISHED", {})
    deadline = time.monotonic() + 30
    while recorder.error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    nxt = recorder.start_trial(experiment, parent, "rec", 1)  # opening a run never raises an old failure
    assert nxt.run_id  # nor does learning its id
    with pytest.raises(TrackingError, match="failed to log the trial's param"):
        nxt.end("FINISHED", {STATE_TAG: "COMPLETE"})  # sent, then the failure is raised
    left_open = recorder.start_trial(experiment, parent, "rec", 2)
    with pytest.raises(TrackingError, match=r"MLflow tracking \(sqlite:///.*\) failed to log the trial's param"):
        recorder.close()
    assert not recorder.process.is_alive()
    with pytest.raises(TrackingError, match="failed to log the trial's param"):  # every later record too
        left_open.log_epoch(2, {"val_accuracy": 0.6})
    runs = {r.data.tags[TRIAL_TAG]: r for r in tracker.trial_runs(parent, experiment)}
    assert runs["0"].info.status == "FINISHED"  # closed all the same, its tags written
    assert runs["1"].info.status == "FINISHED" and runs["1"].data.tags[STATE_TAG] == "COMPLETE"
    assert runs["2"].info.status == "FAILED" and runs["2"].data.tags["automl.fail_reason"] == LEFT_OPEN


def test_a_recording_process_that_dies_is_named_and_never_waited_for(tmp_path: Path,
                                                                      mlflow_template: Path) -> None:
    stores = make_stores(tmp_path, mlflow_template)
    tracker, experiment, parent = _study_run(stores.tracking_uri)
    recorder = Recorder.start(tracker)
    assert recorder is not None
    run = recorder.start_trial(experiment, parent, "rec", 0)
    assert run.run_id
    os.kill(recorder.process.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(TrackingError, match=r"the recording process ended unexpectedly \(exit code -9\)"):
        for epoch in range(1, 100000):  # noticed within about a second, however much is sent
            run.log_epoch(epoch, {"val_accuracy": 0.5, "note": 1.0})
            time.sleep(0.0001)
    with pytest.raises(TrackingError, match="ended unexpectedly"):
        recorder.close()
    assert time.monotonic() - started < 30
    assert not recorder.reader.is_alive()  # the reply thread ended too (the child died idle)


KILLED_PARENT = """
import os, signal, sys
sys.path.insert(0, {root!r})
from automl.recorder import Recorder, fork_is_safe
from automl.recording_child import LEFT_OPEN
from automl.tracking import Tracker
tracker = Tracker({uri!r})
recorder = Recorder.start(tracker)
run = recorder.start_trial({experiment!r}, {parent!r}, "rec", 3)
run.log_params({{"lr": 0.5}})
run.log_epoch(1, {{"val_accuracy": 0.25}})
run.end("FINISHED", {{"automl.trial_state": "COMPLETE"}})
open_run = recorder.start_trial({experiment!r}, {parent!r}, "rec", 4)  # still training when killed
open_run.log_params({{"lr": 0.1}})
open_run.log_epoch(1, {{"val_accuracy": 0.75}})
recorder.messages.close()
recorder.messages.join_thread()  # the records are in the pipe; then the process dies unannounced
print(recorder.process.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_was_sent_before_a_kill_is_still_written(tmp_path: Path, mlflow_template: Path) -> None:
    stores = make_stores(tmp_path, mlflow_template)
    tracker, experiment, parent = _study_run(stores.tracking_uri)
    script = KILLED_PARENT.format(root=str(ROOT), uri=stores.tracking_uri, experiment=experiment, parent=parent)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    child = int(done.stdout.split()[0])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the child writes what it was sent, then ends by itself
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the recording child outlived its parent")
    runs = {r.data.tags[TRIAL_TAG]: r for r in tracker.trial_runs(parent, experiment)}
    assert runs["3"].info.status == "FINISHED" and runs["3"].data.params == {"lr": "0.5"}
    assert runs["3"].data.metrics["val_accuracy"] == 0.25
    # the open run keeps its buffered records; a resume's sweep closes it
    assert runs["4"].info.status == "RUNNING" and runs["4"].data.params == {"lr": "0.1"}
    assert runs["4"].data.metrics["val_accuracy"] == 0.75


def test_the_sweep_closes_a_run_whose_trial_never_learnt_its_id(tmp_path: Path, mlflow_template: Path) -> None:
    """A worker killed before its trial's first epoch ended leaves the trial RUNNING without the
    run's id (it is recorded then): a resume's sweep finds the run by trial number, records its id
    and closes it."""
    from automl.keys import WORKER
    from automl.worker import sweep

    stores = make_stores(tmp_path, mlflow_template)
    tracker, experiment, parent = _study_run(stores.tracking_uri)
    storage = optuna.storages.RDBStorage(stores.storage_url)
    study = optuna.create_study(study_name="rec", storage=storage)
    trial = study.ask()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    storage.set_trial_user_attr(trial._trial_id, WORKER, {"host": socket.gethostname(), "pid": dead.pid,
                                                           "started": None})
    run = tracker.start_trial(experiment, parent, "rec", trial.number)
    assert sweep(study, storage, tracker, parent, experiment) == 1
    closed = stores.client().get_run(run.run_id)
    assert closed.info.status == "FAILED" and "died mid-trial" in closed.data.tags["automl.fail_reason"]
    assert study.trials[0].user_attrs["mlflow_run_id"] == run.run_id  # the trial learns it now


def test_no_child_is_forked_while_another_thread_runs(tmp_path: Path, mlflow_template: Path) -> None:
    """Another thread may be inside SQLite at the fork, and the child would wait on its lock forever
    (seen with two workers in threads): then the trials are recorded inline."""
    stores = make_stores(tmp_path, mlflow_template)
    tracker, _, _ = _study_run(stores.tracking_uri)
    assert fork_is_safe(), threading.enumerate()
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, name="a user's thread")
    other.start()
    try:
        assert not fork_is_safe() and Recorder.start(tracker) is None
    finally:
        stop.set()
        other.join()
    recorder = Recorder.start(tracker)  # its own reply thread does not count
    assert recorder is not None and fork_is_safe()
    recorder.close()


def test_a_storage_failure_while_linking_the_run_stops_the_search(tmp_path: Path) -> None:
    """Recording the run's id on the trial at its first epoch is a storage write like any other: a
    failure stops the search (a FatalError) instead of failing the trial (here SQLite is locked by
    another connection and the storage gives up at once)."""
    import sqlite3

    from automl.errors import FatalError
    from automl.tracking import NullTrialRun
    from automl.worker import LinkedRun

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 0.05}})
    trial = optuna.create_study(study_name="locked", storage=storage).ask()
    run = LinkedRun(NullTrialRun(), storage, trial._trial_id)
    locker = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(FatalError, match="Optuna storage failed while recording the trial's run id"):
            run.log_epoch(1, {"val_accuracy": 0.5})
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert not run.linked
    run.log_epoch(2, {"val_accuracy": 0.6})  # the lock gone, the id is recorded, once
    assert run.linked and storage.get_trial(trial._trial_id).user_attrs["mlflow_run_id"] == ""


# --- the search's MLflow process (Recorder.fork, RemoteTracker) ---------------------------------


def test_a_remote_tracker_makes_its_calls_in_the_child_and_raises_their_errors(
        tmp_path: Path, mlflow_template: Path) -> None:
    """Values come back, errors come back as the same one-line error, and a call whose arguments
    cannot be sent (here unpicklable) or read by the child (a class of a module it does not have)
    is made in this process instead: the summary is written either way."""
    import types

    import pandas as pd

    from automl.recorder import RemoteTracker

    stores = make_stores(tmp_path, mlflow_template)
    forked = Recorder.fork()
    assert forked is not None
    tracker = RemoteTracker(forked, stores.tracking_uri)
    try:
        tracker.ready()
        experiment = tracker.experiment_id("remote")
        parent = tracker.start_study_run(experiment, "remote", {"dataset": "digits"}, "space: text")
        assert tracker.tags(parent)["automl.role"] == "study"
        assert tracker.run_state(parent) == "RUNNING" and tracker.run_state("no-such-run") is None
        with pytest.raises(TrackingError, match=r"MLflow tracking \(sqlite:///.*\) failed to read a run's tags"):
            tracker.tags("no-such-run")
        module = types.ModuleType("made_after_the_fork")  # the child cannot import it
        exec("class Note:\n    def __str__(self):\n        return 'a note'\n", module.__dict__)
        sys.modules[module.__name__] = module
        try:
            for trials in (pd.DataFrame({"x": [lambda: 1]}), pd.DataFrame({"x": [module.Note()]})):
                tracker.log_summary(parent, {}, {"n_complete": 1.0}, {"automl.n_complete": "1"}, trials)
        finally:
            del sys.modules[module.__name__]
        tracker.set_status(parent, "FINISHED")
    finally:
        forked.close()
    assert not forked.process.is_alive()
    written = stores.client().get_run(parent)
    assert written.info.status == "FINISHED" and written.data.metrics["n_complete"] == 1.0
    assert [f.path for f in stores.client().list_artifacts(parent) if f.path.endswith(".csv")] == ["trials.csv"]
    assert Tracker(stores.tracking_uri).experiment_id("remote") == experiment


def test_a_store_the_child_cannot_open_is_named_when_the_search_waits_for_it(tmp_path: Path) -> None:
    from automl.recorder import RemoteTracker

    (tmp_path / "file").write_text("not a folder")
    forked = Recorder.fork()
    assert forked is not None
    tracker = RemoteTracker(forked, f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")
    try:
        with pytest.raises(TrackingError, match=r"MLflow tracking \(sqlite:///.*/file/mlflow.db\) failed: File"):
            tracker.ready()
        with pytest.raises(TrackingError, match=r"\(sqlite:///.*/file/mlflow.db\) failed: File"):  # every later call
            tracker.experiment_id("x")
    finally:
        forked.close()


def test_a_child_sent_nothing_but_a_store_to_open_is_ended_at_once(tmp_path: Path, mlflow_template: Path) -> None:
    """A search stopped by bad input does not wait for its MLflow process to finish importing; one
    that was sent a write is left to write it and end."""
    from automl.recorder import RemoteTracker

    stores = make_stores(tmp_path, mlflow_template)
    for write in (False, True):
        forked = Recorder.fork()
        assert forked is not None
        tracker = RemoteTracker(forked, stores.tracking_uri)
        if write:
            tracker.log_best_so_far("no-such-run", "val_accuracy", 0.5, 0)  # queued, not waited for
        forked.abandon()
        forked.process.join(60)
        assert forked.process.exitcode == (0 if write else -signal.SIGKILL)
        forked.abandon()  # again: nothing


def test_once_the_child_is_gone_the_calls_are_made_here(tmp_path: Path, mlflow_template: Path) -> None:
    """So the study run is still closed when the MLflow process died (killed, out of memory)."""
    from automl.recorder import RemoteTracker

    stores = make_stores(tmp_path, mlflow_template)
    forked = Recorder.fork()
    assert forked is not None
    tracker = RemoteTracker(forked, stores.tracking_uri)
    parent = tracker.start_study_run(tracker.experiment_id("gone"), "gone", {}, "space: text")
    os.kill(forked.process.pid, signal.SIGKILL)
    forked.process.join(30)
    tracker.set_status(parent, "FAILED", {"automl.fail_reason": "the MLflow process died"})
    with pytest.raises(TrackingError, match="the recording process ended unexpectedly"):
        forked.close()
    written = stores.client().get_run(parent)
    assert written.info.status == "FAILED" and written.data.tags["automl.fail_reason"] == "the MLflow process died"


def test_a_remote_tracker_offers_tracker_methods_only() -> None:
    from automl.recorder import RemoteTracker

    assert all(callable(getattr(Tracker, name, None)) for name in RemoteTracker.CALLS)
    assert RemoteTracker.QUEUED | RemoteTracker.RUNS_TORCH <= RemoteTracker.CALLS
    with pytest.raises(AttributeError):
        RemoteTracker.__getattr__(object.__new__(RemoteTracker), "client")


def test_a_search_process_never_imports_mlflow(tmp_path: Path, mlflow_template: Path) -> None:
    """MLflow is imported by the search's MLflow process only (`Recorder.fork`): every record of a
    search is there all the same, trials, best model and champion alias."""
    stores = make_stores(tmp_path, mlflow_template)
    script = f"""
import sys
import yaml
import automl
result = automl.search(yaml.safe_load({TINY_SPACE!r}), study="nomlflow", seed=0, progress=False,
                       tracking_uri={stores.tracking_uri!r}, storage={stores.storage_url!r})
print("mlflow imported:", "mlflow" in sys.modules, result.counts["COMPLETE"], result.model_uri)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mlflow imported: False 3 models:/nomlflow@champion" in done.stdout
    client = stores.client()
    experiment = client.get_experiment_by_name("nomlflow")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4  # the study run and 3 trial runs
    assert str(client.get_model_version_by_alias("nomlflow", "champion").version) == "1"
