"""Trial runs recorded by a child process, so a trial's MLflow writes cost the training process
almost nothing.

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
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from automl.checks import mask_url
from automl.errors import AutomlError
from automl.signals import SignalHold
from automl.tracking import REASON_TAG, Tracker, TrackingError, _now_ms

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 600  # the longest `close` waits for the child to write what it was sent
LEFT_OPEN = "the search ended before this run was closed"  # the reason on a run `close` ends


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
    """Opens trial runs written by a child process (`Recorder.start`); same `start_trial` as a
    `Tracker`. The child's replies are read by a thread of their own, which signals never
    interrupt (a reply half-read when Ctrl-C strikes would be lost) and which notices the
    child's death."""

    def __init__(self, tracker: Tracker, process: Any, messages: Any, replies: Any) -> None:
        self.tracker = tracker
        self.process = process
        self.messages = messages
        self.replies = replies
        self.state = threading.Condition()  # guards what the replies tell:
        self.run_ids: dict[int, str] = {}
        self.failed: dict[int, str] = {}  # a record's key -> the child's failure with it
        self.error: str | None = None  # the child's first failure
        self.acknowledged = -1  # the last flush the child has answered
        self.next_key = 0
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True, name=SAFE_THREADS[0])
        self.reader.start()

    @classmethod
    def start(cls, tracker: Tracker) -> Recorder | None:
        """Fork the recording child; None where it cannot be made or forking is not safe (record
        inline then)."""
        if "fork" not in multiprocessing.get_all_start_methods():
            return None
        if not fork_is_safe():
            logger.info("trial runs recorded in this process: other threads are running")
            return None
        context = multiprocessing.get_context("fork")
        messages, replies = context.Queue(), context.Queue()  # a feeder thread: `put` never blocks
        process = context.Process(target=_serve, args=(tracker, messages, replies, os.getpid()), daemon=True,
                                  name="automl-recorder")
        try:
            process.start()
        except (OSError, AssertionError, ValueError) as e:  # e.g. inside a daemonic process
            logger.info("trial runs recorded in this process: %s", e)
            return None
        return cls(tracker, process, messages, replies)

    def _failure(self, what: str) -> str:
        return f"MLflow tracking ({mask_url(self.tracker.uri)}) failed: the recording process {what}"

    def _read(self) -> None:
        """The reply thread: record each reply until the end marker `close` sends; a child that
        died is a failure."""
        while True:
            try:
                reply = self.replies.get(timeout=1.0)
            except queue.Empty:
                if not self.process.is_alive():
                    with self.state:
                        self.error = self.error or self._failure(
                            f"ended unexpectedly (exit code {self.process.exitcode})")
                        self.state.notify_all()
                continue
            except Exception:  # noqa: BLE001 - a torn pipe ends the replies like the end marker
                reply = None
            with self.state:
                if reply is None:
                    self.state.notify_all()
                    return
                kind, key, value = reply
                if kind == "started":
                    self.run_ids[key] = value
                elif kind == "flushed":
                    self.acknowledged = max(self.acknowledged, key)
                elif kind == "error":
                    self.failed.setdefault(key, value)
                    self.error = self.error or value
                self.state.notify_all()

    # --- the training process's side ------------------------------------------------------------

    def start_trial(self, experiment_id: str, parent_run_id: str, study_name: str, number: int) -> RecordedRun:
        """Open a trial's child run (created by the child; its id arrives with `RecordedRun.run_id`).
        Never raises an earlier failure: the trial gets its run object, so that it is closed."""
        key = self.next_key
        self.next_key += 1
        self.send("start", key, experiment_id, parent_run_id, study_name, number, check=False)
        return RecordedRun(self, key)

    def send(self, op: str, key: int, *args: Any, check: bool = True) -> None:
        """Queue one record for the child, then raise the failure it reported, if any (after a
        failure, records are still sent: closing a run may succeed where logging failed)."""
        if self.closed:
            self.check()
            raise TrackingError(self._failure("is closed"))
        self.messages.put((op, key, args))
        if check:
            self.check()

    def check(self) -> None:
        """Raise the first failure the child reported (a `TrackingError` with its message)."""
        if self.error is not None:
            raise TrackingError(self.error)

    def _wait(self, done: Callable[[], bool], timeout: float) -> None:
        """Wait until `done()`, the child's death or `timeout`; False `done()` then raises."""
        deadline = time.monotonic() + timeout
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
        key = self.next_key
        self.next_key += 1
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
        self.recorder.send("log_epoch", self.key, epoch, dict(metrics), _now_ms())

    def log_metrics(self, metrics: dict[str, float]) -> None:
        if metrics:
            self.recorder.send("log_metrics", self.key, dict(metrics), _now_ms())

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


# --- the child ---------------------------------------------------------------------------------


_inherited: list[Any] = []  # the parent's connection pools, kept so that none is closed from here


def _serve(tracker: Tracker, messages: Any, replies: Any, parent: int) -> None:
    """The recording child: write each record in order until closed or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM reach the whole group: the
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # training process stops, then closes us
    gc.enable()  # the parent may have forked while its collector was paused
    _inherited.extend(tracker.detach())
    runs: dict[int, Any] = {}
    failed: set[int] = set()  # runs with a failed record: only their closing is still tried
    while True:
        try:
            message = messages.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # killed: what it sent is written, and the open runs'
                for run in runs.values():  # buffered metrics; a resume's sweep closes those runs
                    with contextlib.suppress(Exception):
                        run.flush()
                return
            continue
        except Exception as e:  # noqa: BLE001 - a torn or garbled pipe: say so, and stop
            replies.put(("error", -1, f"MLflow tracking ({mask_url(tracker.uri)}) failed: the recording "
                                      f"process could not read a record ({type(e).__name__}: {e})"))
            return
        if message is None:
            _end_left_open(runs, replies, tracker)
            return
        op, key, args = message
        if key in failed and op not in ("end", "flush"):
            if op == "log_weights":
                shutil.rmtree(args[0].parent, ignore_errors=True)
            continue
        try:
            _apply(tracker, runs, op, key, args, replies)
        except Exception as e:  # a bug here must still stop the search with a line, not hang it
            failed.add(key)
            replies.put(("error", key, _message(e, tracker)))


def _message(error: Exception, tracker: Tracker) -> str:
    if isinstance(error, AutomlError):
        return str(error)
    return f"MLflow tracking ({mask_url(tracker.uri)}) failed: {type(error).__name__}: {error}"


def _end_left_open(runs: dict[int, Any], replies: Any, tracker: Tracker) -> None:
    """Close the runs the search never closed (it stopped on an error before it could) FAILED."""
    for key, run in runs.items():
        try:
            run.end("FAILED", {REASON_TAG: LEFT_OPEN})
        except Exception as e:  # noqa: BLE001 - reported; the others are still closed
            replies.put(("error", key, _message(e, tracker)))


def _apply(tracker: Tracker, runs: dict[int, Any], op: str, key: int, args: tuple, replies: Any) -> None:
    """One record, written with the inline `TrialRun` (its batching included)."""
    if op == "flush":  # every record sent before it is written
        replies.put(("flushed", key, None))
    elif op == "start":
        runs[key] = tracker.start_trial(*args)
        replies.put(("started", key, runs[key].run_id))
    elif key not in runs:  # its run could not be created (reported; `_serve` skips its records): its end
        pass
    elif op == "end":
        runs.pop(key).end(*args)
    elif op == "log_weights":
        try:
            runs[key].log_weights(args[0])
        finally:
            shutil.rmtree(args[0].parent, ignore_errors=True)
    elif op == "log_epoch":
        runs[key].log_epoch(*args[:2], stamp=args[2])
    elif op == "log_metrics":
        runs[key].log_metrics(*args[:1], stamp=args[1])
    else:
        runs[key].log_params(*args)
