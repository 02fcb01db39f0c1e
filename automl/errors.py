"""The error taxonomy that drives the search loop and the exit codes.

- `UsageError` (exit 2): bad input found before anything is created (space, data, flags, URLs).
- `TrialFailed`: one trial failed (non-finite loss, out of memory, an exception in training);
  the trial is marked FAIL with the reason and the search goes on.
- `FatalError` (exit 1): the search cannot go on (storage or tracking gone, every trial failed).
- `Terminated`: SIGTERM, raised like Ctrl-C so the running trial is closed the same way.
"""

from __future__ import annotations


class AutomlError(Exception):
    """Base class of the errors this tool raises on purpose."""


class UsageError(AutomlError):
    """Bad input: a one-line message naming the file, key or flag and the problem (exit code 2)."""


class TrialFailed(AutomlError):
    """A single trial failed; the search continues."""


class FatalError(AutomlError):
    """The search must stop (exit code 1)."""


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (exit code 143)."""
