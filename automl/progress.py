"""Search progress for people: a tqdm bar on a terminal (trials done / planned, best so far,
elapsed and remaining time), one plain line per trial when output is not a terminal, nothing
per trial with --quiet."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm


def trial_line(outcome: Any, metric: str) -> str:
    """`trial    3  COMPLETE  val_accuracy=0.9704   1.4s  best 0.9704 (trial 3)`"""
    if outcome.state.name == "COMPLETE":
        score = f"{metric}={outcome.value:.4f}"
    elif outcome.state.name == "PRUNED":
        score = outcome.reason
    else:
        score = f"failed: {outcome.reason}"
    best = "no complete trial yet"
    if outcome.best is not None:
        best = f"best {outcome.best.value:.4f} (trial {outcome.best.number})"
    return f"trial {outcome.number:>4}  {outcome.state.name:<8}  {score:<40}  {outcome.seconds:6.1f}s  {best}"


class Progress:
    """Reports finished trials; `bar` is True on a terminal unless quiet."""

    def __init__(self, total: int, done: int, metric: str, quiet: bool = False,
                 stream: TextIO | None = None) -> None:
        self.metric = metric
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.bar = None
        if not quiet and self.stream.isatty():
            self.bar = tqdm(total=total, initial=done, unit="trial", file=self.stream, dynamic_ncols=True,
                            desc="search", bar_format="{desc}: {n}/{total} trials |{bar}| "
                            "{elapsed} elapsed, {remaining} left{postfix}")

    def trial(self, outcome: Any) -> None:
        """One finished trial of this process."""
        if self.quiet:
            return
        line = trial_line(outcome, self.metric)
        if self.bar is None:
            print(line, file=self.stream, flush=True)
            return
        self.bar.write(line, file=self.stream)
        self.bar.update(1)
        if outcome.best is not None:
            self.bar.set_postfix_str(f"best {self.metric}={outcome.best.value:.4f} (trial {outcome.best.number})")

    def poll(self, finished: int, best: Any | None) -> None:
        """Progress read from the study (trials of other processes)."""
        if self.bar is None:
            return
        self.bar.update(max(0, finished - self.bar.n))
        if best is not None:
            self.bar.set_postfix_str(f"best {self.metric}={best.value:.4f} (trial {best.number})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
