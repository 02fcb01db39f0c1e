"""The MLflow process's side of `automl.recorder`: the loop that writes each record and makes each
call it is sent, in order, with a real `Tracker` (`serve`, the forked child's target).

Its messages are `(op, key, args)`: "open" a store (`Recorder.fork`'s child), "call" or "record"
a `Tracker` method (a `RemoteTracker`), or one of a trial run's records ("start", "log_params",
"log_epoch", "log_metrics", "log_weights", "end") and "flush"; None ends it. Its replies are
`(kind, key, value)`: "started" (a run's id), "flushed", "error" (a record's failure), and a
call's "returned", "raised" or "unreadable". Values and errors are pickled here, so that the
queue's feeder thread never fails to send one; the tool's own errors keep their type, any other
becomes a `TrackingError` with its line (passwords masked).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import pickle
import queue
import shutil
import signal
import threading
from typing import TYPE_CHECKING, Any

from automl.checks import mask_text, mask_url
from automl.errors import AutomlError
from automl.runs import REASON_TAG, TrackingError

if TYPE_CHECKING:
    from automl.tracking import Tracker

logger = logging.getLogger(__name__)

LEFT_OPEN = "the search ended before this run was closed"  # the reason on a run the end closes


_inherited: list[Any] = []  # the parent's connection pools, kept so that none is closed from here


def serve(tracker: Tracker | None, messages: Any, replies: Any, parent: int, warm_up: tuple[str, ...] = ()) -> None:
    """The recording child: write each record in order until closed or the parent is gone. Without
    a `tracker` (`Recorder.fork`) it imports MLflow now and opens the store it is sent. Once the
    first trial has ended, a thread imports the `warm_up` modules (the main thread answers
    meanwhile): not sooner, where it would slow the search's start on a small machine."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM reach the whole group: the
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # training process stops, then closes us
    gc.enable()  # the parent may have forked while its collector was paused
    if tracker is not None:
        _inherited.extend(tracker.detach())
    else:
        from automl import tracking

        _inherited.extend(tracking.detach_engines())  # a user's own MLflow stores in the parent
    opened: bytes | None = None  # why the store could not be opened (pickled), once it was tried
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
            replies.put(("error", -1, f"{failure_prefix(uri_of(tracker))} the recording process could not read a "
                                      f"record ({type(e).__name__}: {e})"))
            return
        if message is None:
            _end_left_open(runs, replies, tracker)
            return
        op, key, args = message
        if op == "open":
            tracker, opened = _open(args[0])
            replies.put(("returned", key, pickle.dumps(None)) if opened is None else ("raised", key, opened))
            continue
        if op == "end" and warm_up:
            threading.Thread(target=_import, args=(warm_up,), daemon=True, name="automl-warm-up").start()
            warm_up = ()
        if op in ("call", "record"):
            _answer(tracker, opened, op, key, args[0], replies)
            continue
        if key in failed and op not in ("end", "flush"):
            if op == "log_weights":
                shutil.rmtree(args[0].parent, ignore_errors=True)
            continue
        try:
            if op == "flush":  # every record sent before it is written
                replies.put(("flushed", key, None))
            elif tracker is None:  # the store could not be opened: no run can be written
                raise _not_open(opened)
            else:
                _apply(tracker, runs, op, key, args, replies)
        except Exception as e:  # a bug here must still stop the search with a line, not hang it
            failed.add(key)
            replies.put(("error", key, _message(e, uri_of(tracker))))


def _import(modules: tuple[str, ...]) -> None:
    for name in modules:
        with contextlib.suppress(Exception):  # only an import done early: the call that needs it says what fails
            importlib.import_module(name)


def _not_open(opened: bytes | None) -> Exception:
    """Why a record or call cannot be made: the store could not be opened, or none was."""
    return pickle.loads(opened) if opened else TrackingError("MLflow tracking failed: no store was opened")


def _open(uri: str) -> tuple[Tracker | None, bytes | None]:
    """A `Tracker` on `uri` that writes inline, or None and its error (pickled)."""
    from automl.tracking import Tracker

    try:
        tracker = Tracker(uri)
    except Exception as e:  # noqa: BLE001 - sent back to the caller
        return None, _raised(e, uri)
    tracker.background = None
    return tracker, None


def _answer(tracker: Tracker | None, opened: bytes | None, op: str, key: int, payload: bytes, replies: Any) -> None:
    """Make one `RemoteTracker` call; answer with its value or error ("record": only an error)."""
    try:
        name, args, kwargs = pickle.loads(payload)
    except Exception as e:  # noqa: BLE001 - the caller makes the call itself
        if op == "call":
            replies.put(("unreadable", key, f"{type(e).__name__}: {e}"))
        else:  # pickled by the same code as a call's arguments: must not pass silently all the same
            replies.put(("error", key, f"{failure_prefix(uri_of(tracker))} could not read a record ({e})"))
        return
    try:
        if tracker is None:
            raise _not_open(opened)
        value = pickle.dumps(getattr(tracker, name)(*args, **kwargs))
    except Exception as e:  # noqa: BLE001 - raised where the call was made
        if op == "call":
            replies.put(("raised", key, _raised(e, uri_of(tracker))))
        else:
            replies.put(("error", key, _message(e, uri_of(tracker))))
        return
    if op == "call":
        replies.put(("returned", key, value))


def _raised(error: Exception, uri: str | None) -> bytes:
    """An error, pickled to be raised in the parent: the tool's own errors as they are, any other
    as a `TrackingError` with its message (its class may not even be importable there)."""
    if isinstance(error, AutomlError):
        with contextlib.suppress(Exception):
            data = pickle.dumps(error)
            pickle.loads(data)
            return data
    return pickle.dumps(TrackingError(_message(error, uri)))


def failure_prefix(uri: str | None) -> str:
    return f"MLflow tracking ({mask_url(uri)}) failed:" if uri else "MLflow tracking failed:"


def _message(error: Exception, uri: str | None) -> str:
    """A failure in one line, the password of `uri` masked; a bug's traceback is logged here."""
    if isinstance(error, AutomlError):
        return str(error)
    logger.debug("in the MLflow process", exc_info=error)
    text = f"{failure_prefix(uri)} {type(error).__name__}: {error}"
    return mask_text(text, uri) if uri else text


def uri_of(tracker: Tracker | None) -> str | None:
    return tracker.uri if tracker is not None else None


def _end_left_open(runs: dict[int, Any], replies: Any, tracker: Tracker | None) -> None:
    """Close the runs the search never closed (it stopped on an error before it could) FAILED."""
    for key, run in runs.items():
        try:
            run.end("FAILED", {REASON_TAG: LEFT_OPEN})
        except Exception as e:  # noqa: BLE001 - reported; the others are still closed
            replies.put(("error", key, _message(e, uri_of(tracker))))


def _apply(tracker: Tracker, runs: dict[int, Any], op: str, key: int, args: tuple, replies: Any) -> None:
    """One record, written with the inline `TrialRun` (its batching included)."""
    if op == "start":
        runs[key] = tracker.start_trial(*args)
        replies.put(("started", key, runs[key].run_id))
    elif key not in runs:  # its run could not be created (reported; `serve` skips its records): its end
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
