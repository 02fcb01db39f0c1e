"""Errors of the space layer: `SpaceError` (what users see) and `Problem` (raised while validating)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from automl.errors import UsageError

EXCERPT = 60  # the most characters of a value any message shows
MAX_MESSAGE = 400


class SpaceError(UsageError, ValueError):
    """A bad search space: one line `source: key.path: problem`, raised before anything is created."""


class Problem(ValueError):
    """A problem found while validating, at `path` below the place that raised it."""

    def __init__(self, message: str, *path: str | int) -> None:
        super().__init__(message)
        self.message = message
        self.path = tuple(path)


def show(value: Any, limit: int = EXCERPT) -> str:
    """A short one-line excerpt of a value for messages (never the whole of a large value)."""
    text = repr(value) if not isinstance(value, str) or len(value) <= limit else repr(value[: limit + 1])
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def excerpt(text: str, limit: int = 160) -> str:
    """A message from elsewhere (an exception), on one line and cut short."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_path(parts: Iterable[str | int]) -> str:
    """`model.activation.choices[1]` from ("model", "activation", "choices", 1)."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if len(part) <= 40 else part[:37] + "..."
            out += f".{key}" if out else key
    return out


def space_error(source: str, path: Iterable[str | int], problem: str) -> SpaceError:
    """`source: path: problem` on one line, cut to a sane length."""
    where = format_path(path)
    text = f"{source}: {where}: {problem}" if where else f"{source}: {problem}"
    text = " ".join(text.split())
    return SpaceError(text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "...")
