"""MLflow written by a child process: the trials' runs, so that a trial's MLflow writes cost the
training process almost nothing, and (`Recorder.fork`, `RemoteTracker`) every MLflow call of a
search, so that its process never imports MLflow.

A trial's MLflow records (creating its child run, its dataset input, parameters, per-epoch
metrics, weights, its closing tags and status) take about 20 ms of Python per trial in SQLAlchemy
and MLflow; in a thread they would hold the interpreter lock the training loop needs. The
`Recorder` forks a child process as the trial loop starts: the training process sends each record
down a queue (microseconds) and the child writes them, in order, with the same `TrialRun` code
an inline search uses. The child's replies bring back each run's id and its MLflow failures; the
first failure is raised as a `TrackingError` at the training process's next record (the search
stops with the child's message), and a child that dies is noticed within a second. Keeping a new
best's weights waits for the child (a trial whose weights are not stored must not count as
complete); `close` waits until everything sent is written and closes any run left open.

The child leaves Ctrl-C and SIGTERM to the training process, and ends once that process has
closed it or is gone (what was sent before a kill -9 is still written, buffered epochs included).
Where fork does not exist or a child cannot be made (inside a daemonic process), the trials are
recorded inline.

`Recorder.fork` makes the child before the search imports torch or MLflow: the child imports
MLflow while the search imports torch and loads its data, opens the tracking store while the search
opens Optuna's (`RemoteTracker`), and once the first trial has ended, in a thread, imports what
logging the best model needs (torch and torch.export's tracing: seconds, on another core).
A `RemoteTracker` is the search's `Tracker`: each call is sent to the child, which makes it with
its own `Tracker`, and waits for the answer (the value, or the error, raised here); the trials'
records go down the same queue, so everything is written in the order it was made. A call whose
arguments the child cannot read (a network class defined where the child cannot import it) is
made in this process instead, and so is logging the best model (which runs the network) when
this process had imported torch before the fork (a second search in one process, a notebook):
a child must not run torch in the thread pools it inherited from a parent that used them.

This module is the forking process's side; the child's loop and its messages are in
`automl.recording_child`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import pickle
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl.recording_child import failure_prefix, serve
from automl.runs import RunRecords, TrackingError, downloaded, now_ms
from automl.signals import SignalHold

if TYPE_CHECKING:
    from automl.tracking import Tracker

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 600  # the longest `close` waits for the child to write what it was sent
# what logging the best model imports: imported by `fork`'s child, in a thread, once a trial has ended
WARM_UP = ("mlflow.pytorch", "torch.export._trace", "automl.serving")


# threads that never hold a lock the child needs: recorders' reply threads, multiprocessing's
# queue feeders (one may be left behind, blocked, by a child that died)
SAFE_THREADS = ("automl-recorder-replies", "QueueFeederThread")


def fork_is_safe() -> bool:
    """Whether no other thread runs that could be inside SQLite (or another C library) right now:
    a forked child inherits such a lock held, and would wait on it forever the first time it opens
    a database. Safe: the calling thread, `SAFE_THREADS` and tqdm's monitor."""
    current = threading.current_thread()
    return all(thread is current or thread.name in SAFE_THREADS or type(thread).__name__ == "TMonitor"
               for thread in threading.enumerate())


class Recorder:
    """The MLflow child process, as the process that forked it sees it: it opens trial runs the
    child writes (`start_trial`, as a `Tracker` has), and, for a `RemoteTracker`, opens stores and
    makes calls there (`open`, `call`, `record`). `start` forks one that writes with a given
    tracker; `fork` one that opens the store it is sent. The child's replies are read by a thread
    of their own, which signals never interrupt (a reply half-read when Ctrl-C strikes would be
    lost) and which notices the child's death."""

    def __init__(self, uri: str | None, process: Any, messages: Any, replies: Any, torch_free: bool = False) -> None:
        self.uri = uri  # the tracking store (the last one opened, for `fork`)
        # forked before this process imported torch: the child may run torch (its own, fresh); a
        # child forked after torch ran here could hang in the thread pools it inherited
        self.torch_free = torch_free
        self.process = process
        self.messages = messages
        self.replies = replies
        self.state = threading.Condition()  # guards what the replies tell:
        self.run_ids: dict[int, str] = {}
        self.failed: dict[int, str] = {}  # a record's key -> the child's failure with it
        self.answers: dict[int, tuple[str, Any]] = {}  # a call's key -> (kind, pickled value or error)
        self.error: str | None = None  # the child's first failure
        self.acknowledged = -1  # the last flush the child has answered
        self.next_key = 0
        self.written = False  # whether anything but a store to open was sent
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True, name=SAFE_THREADS[0])
        self.reader.start()

    @classmethod
    def start(cls, tracker: Tracker) -> Recorder | None:
        """Fork the recording child, which writes with (a copy of) `tracker`; None where it cannot
        be made or forking is not safe (record inline then)."""
        return cls._launch(tracker)

    @classmethod
    def fork(cls) -> Recorder | None:
        """Fork the child before this process imports MLflow (for a `RemoteTracker`); it imports
        MLflow at once. None where it cannot be made or forking is not safe."""
        return cls._launch(None, torch_free="torch" not in sys.modules)

    @classmethod
    def _launch(cls, tracker: Tracker | None, torch_free: bool = False) -> Recorder | None:
        if "fork" not in multiprocessing.get_all_start_methods():
            return None
        if not fork_is_safe():
            logger.info("MLflow written in this process: other threads are running")
            return None
        context = multiprocessing.get_context("fork")
        warm_up = WARM_UP if torch_free else ()
        try:
            messages, replies = context.Queue(), context.Queue()  # a feeder thread: `put` never blocks
            process = context.Process(target=serve, args=(tracker, messages, replies, os.getpid(), warm_up),
                                      daemon=True, name="automl-recorder")
            process.start()
        except (OSError, AssertionError, ValueError) as e:  # inside a daemonic process, no /dev/shm
            logger.info("MLflow written in this process: %s", e)
            return None
        return cls(tracker.uri if tracker is not None else None, process, messages, replies, torch_free)

    def _failure(self, what: str) -> str:
        return f"{failure_prefix(self.uri)} the recording process {what}"

    def _read(self) -> None:
        """The reply thread: record each reply until the end marker `close` sends; a child that
        died is a failure."""
        while True:
            try:
                reply = self.replies.get(timeout=1.0)
            except queue.Empty:
                if self.process.is_alive():
                    continue
                with contextlib.suppress(Exception):  # what it sent just before it ended (Empty ends it)
                    while self._take(self.replies.get(timeout=0.1)):
                        pass
                with self.state:
                    self.error = self.error or self._failure(f"ended unexpectedly (exit code {self.process.exitcode})")
                    self.state.notify_all()
                return
            except Exception:  # noqa: BLE001 - a torn pipe ends the replies like the end marker
                reply = None
            if not self._take(reply):
                return

    def _take(self, reply: tuple[str, int, Any] | None) -> bool:
        """Record one reply; False for the end marker."""
        with self.state:
            self.state.notify_all()
            if reply is None:
                return False
            kind, key, value = reply
            if kind == "started":
                self.run_ids[key] = value
            elif kind == "flushed":
                self.acknowledged = max(self.acknowledged, key)
            elif kind == "error":
                self.failed.setdefault(key, value)
                self.error = self.error or value
            else:  # a call's answer: "returned", "raised" or "unreadable"
                self.answers[key] = (kind, value)
        return True

    # --- the training process's side ------------------------------------------------------------

    def start_trial(self, experiment_id: str, parent_run_id: str, study_name: str, number: int) -> RecordedRun:
        """Open a trial's child run (created by the child; its id arrives with `RecordedRun.run_id`).
        Never raises an earlier failure: the trial gets its run object, so that it is closed."""
        key = self._key()
        self.send("start", key, experiment_id, parent_run_id, study_name, number, check=False)
        return RecordedRun(self, key)

    def _key(self) -> int:
        key = self.next_key
        self.next_key += 1
        return key

    def open(self, uri: str) -> int:
        """Have the child open the tracking store `uri` (in place of any other); returns the key
        whose answer (`answer`) says when it is open."""
        self.uri = uri
        key = self._key()
        self.send("open", key, uri, check=False)
        return key

    def call(self, payload: bytes) -> Any:
        """Have the child call one of its `Tracker`'s methods: `payload` is the pickled (name, args,
        kwargs). Returns its value or raises its error; `Unreadable` when the child could not
        read the arguments."""
        key = self._key()
        self.send("call", key, payload, check=False)
        return self.answer(key)

    def record(self, payload: bytes) -> None:
        """Like `call` for a write nobody waits for: its failure is raised at a later record."""
        self.send("record", self._key(), payload, check=False)

    def answer(self, key: int) -> Any:
        """Wait for the answer of call `key` (as long as the child lives: logging a large model to
        a slow server may take long): its value, or its error raised."""
        self._wait(lambda: key in self.answers, None)
        with self.state:
            kind, value = self.answers.pop(key)
        if kind == "unreadable":
            raise Unreadable(value)
        result = pickle.loads(value)
        if kind == "raised":
            raise result
        return result

    def send(self, op: str, key: int, *args: Any, check: bool = True) -> None:
        """Queue one record for the child, then raise the failure it reported, if any (after a
        failure, records are still sent: closing a run may succeed where logging failed)."""
        if self.closed:
            self.check()
            raise TrackingError(self._failure("is closed"))
        self.written = self.written or op != "open"
        self.messages.put((op, key, args))
        if check:
            self.check()

    def check(self) -> None:
        """Raise the first failure the child reported (a `TrackingError` with its message)."""
        if self.error is not None:
            raise TrackingError(self.error)

    def _wait(self, done: Callable[[], bool], timeout: float | None) -> None:
        """Wait until `done()`, the child's death or `timeout` (None: none); False `done()` then
        raises."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        with self.state:
            while not done():
                if not self.process.is_alive() and self.error is not None:
                    break  # the reply thread read what was left before it noticed the death
                if time.monotonic() > deadline:
                    self.error = self.error or self._failure(f"did not answer within {timeout:.0f} s")
                    break
                self.state.wait(0.5)
            if done():
                return
        self.check()

    def run_id(self, key: int) -> str:
        """The id of a run the child created (waits for it); raises when it could not be made."""
        self._wait(lambda: key in self.run_ids or key in self.failed, CLOSE_TIMEOUT_S)
        if key not in self.run_ids:
            raise TrackingError(self.failed[key])
        return self.run_ids[key]

    def flush(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Wait until the child has written (or tried to write) everything sent so far; raise its
        failure, if any."""
        key = self._key()
        self.send("flush", key, check=False)
        self._wait(lambda: self.acknowledged >= key, timeout)
        self.check()

    def close(self, timeout: float = CLOSE_TIMEOUT_S, raise_signal: bool = True) -> None:
        """Wait for the child to write everything (and close the runs left open), then end it; a
        failure it reported is raised. Ctrl-C and SIGTERM wait meanwhile, and are raised after it
        (with `raise_signal`) so that a second Ctrl-C cannot lose the last records."""
        signals = SignalHold()
        signals.hold()
        try:
            try:
                self.flush(timeout)
            finally:
                self._stop()
        finally:
            signals.release(raise_pending=raise_signal)

    def abandon(self) -> None:
        """For a search that stops before it starts (bad input, Ctrl-C), without waiting: a child
        that was sent at most a store to open is ended at once (it may still be importing MLflow;
        an SQLite store commits whole transactions or none); any other is told to end once it has
        written what it was sent. Nothing where it was closed already."""
        if self.closed:
            return
        if self.written:
            self.closed = True
            with contextlib.suppress(OSError, ValueError):
                self.messages.put(None)
            return
        self.process.kill()
        self.process.join()
        self._stop()

    def _stop(self) -> None:
        """End the child and the reply thread; never blocks on a child that died."""
        self.closed = True
        with contextlib.suppress(OSError, ValueError):
            self.messages.put(None)
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        clean = self.process.exitcode == 0
        for channel in (self.messages, self.replies):
            if not clean:  # a pipe nobody reads, or a lock the child died holding
                channel.cancel_join_thread()
        with contextlib.suppress(OSError, ValueError):
            self.replies.put(None)  # ends the reply thread
        for channel in (self.messages, self.replies):
            channel.close()
            if clean:
                channel.join_thread()
        self.reader.join(5)


class RecordedRun:
    """A trial's child run as the training process sees it: each call queues one record."""

    def __init__(self, recorder: Recorder, key: int) -> None:
        self.recorder = recorder
        self.key = key

    @property
    def run_id(self) -> str:
        return self.recorder.run_id(self.key)

    def log_params(self, params: dict[str, Any]) -> None:
        self.recorder.send("log_params", self.key, dict(params))

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.recorder.send("log_epoch", self.key, epoch, dict(metrics), now_ms())

    def log_metrics(self, metrics: dict[str, float]) -> None:
        if metrics:
            self.recorder.send("log_metrics", self.key, dict(metrics), now_ms())

    def log_weights(self, folder: Path) -> None:
        """The folder is moved to one the child removes once it is logged. Waits until it is:
        a trial whose weights could not be kept fails (the best model must have them)."""
        handed = Path(tempfile.mkdtemp(prefix="automl-weights-")) / folder.name
        shutil.move(str(folder), handed)
        try:
            self.recorder.send("log_weights", self.key, handed)
            self.recorder.flush()
        except TrackingError:
            if not self.recorder.process.is_alive():  # else the child removes it
                shutil.rmtree(handed.parent, ignore_errors=True)
            raise

    def end(self, status: str, tags: dict[str, str]) -> None:
        self.recorder.send("end", self.key, status, dict(tags))


class Unreadable(Exception):
    """The child could not read a call's arguments (e.g. a class it cannot import)."""


class RemoteTracker:
    """The search's `Tracker`, whose calls a child forked by `Recorder.fork` makes: each of `CALLS`
    waits for its answer, except `log_best_so_far`, which is only queued. A call is made in this
    process instead, with a `Tracker` made for it, when its arguments cannot be sent or read,
    when it runs torch in a child that must not (`Recorder.torch_free`), and once the child has
    died (so the study run is still closed)."""

    CALLS = frozenset({
        "artifact_location", "champion", "delete_tag", "download", "experiment_id", "find_experiment",
        "find_trial_run", "find_version", "log_best_so_far", "log_data", "log_folder", "log_metrics",
        "log_model", "log_summary", "metrics", "run_state", "running_trial_runs", "set_champion",
        "set_status", "set_tags", "start_study_run", "study_runs", "tags", "trial_runs"})
    QUEUED = frozenset({"log_best_so_far"})
    RUNS_TORCH = frozenset({"log_model"})

    def __init__(self, recorder: Recorder, uri: str) -> None:
        self.recorder = recorder
        self.uri = uri
        self._opened: int | None = recorder.open(uri)  # the child opens the store meanwhile
        self._here: Tracker | None = None

    def ready(self) -> None:
        """Wait until the store is open; raise why it could not be opened."""
        if self._opened is not None:
            self.recorder.answer(self._opened)
            self._opened = None

    def start_trial(self, experiment_id: str, parent_run_id: str, study_name: str, number: int) -> RunRecords:
        return self.recorder.start_trial(experiment_id, parent_run_id, study_name, number)

    def artifacts(self, run_id: str, path: str) -> contextlib.AbstractContextManager[Path]:
        """A run's artifact folder `path`, downloaded into a temporary folder for the block."""
        return downloaded(self, run_id, path)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in self.CALLS:
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.recorder.process.is_alive() or (name in self.RUNS_TORCH and not self.recorder.torch_free):
                return self._call_here(name, args, kwargs)
            try:
                payload = pickle.dumps((name, args, kwargs))
            except Exception:  # noqa: BLE001 - e.g. a network class defined inside a function
                return self._call_here(name, args, kwargs)
            if name in self.QUEUED:
                return self.recorder.record(payload)
            try:
                return self.recorder.call(payload)
            except Unreadable:
                return self._call_here(name, args, kwargs)

        return call

    def _call_here(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        from automl.tracking import Tracker

        if self.recorder.process.is_alive():  # what was sent before is written first
            self.recorder.flush()
        if self._here is None:
            self._here = Tracker(self.uri)
        return getattr(self._here, name)(*args, **kwargs)
