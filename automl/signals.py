"""Signals: SIGTERM raised like Ctrl-C, holding both while a trial is opened or closed, and
ignoring both while child processes are stopped."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from automl.errors import Terminated


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


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored for a moment, e.g. while child processes are stopped and waited
    for (a second Ctrl-C must not leave them running). Signals are the main thread's: elsewhere
    this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
