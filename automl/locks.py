"""File locks for SQLite databases shared by processes on one machine (kept in the temporary
folder, so the user's folder holds only the databases)."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

from automl.checks import sqlite_file

SQLITE_TIMEOUT_S = 120


def lock_path(database: str, purpose: str) -> str:
    """A lock file for `database` in the temporary folder (not beside the database, so the user's
    folder is left with the databases only); one per database file and purpose."""
    key = hashlib.sha256(str(Path(database).expanduser().resolve()).encode()).hexdigest()[:20]
    folder = Path(tempfile.gettempdir()) / "automl-locks"
    folder.mkdir(mode=0o777, exist_ok=True)
    return str(folder / f"{key}.{purpose}.lock")


@contextlib.contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """Serialise opening an SQLite database across processes on this machine: the first one to
    open a new file creates the tables (Optuna's or MLflow's), and two doing it at once collide."""
    database = sqlite_file(url)
    lock: FileLock | None = None
    if database is not None:
        lock = FileLock(lock_path(database, "create"), timeout=SQLITE_TIMEOUT_S)
        try:
            lock.acquire()
        except OSError:  # no lock to be had: SQLite says what is wrong, if anything
            lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def storage_exists(url: str) -> bool:
    """Whether an SQLite storage file exists (other databases: assumed to)."""
    database = sqlite_file(url)
    return database is None or Path(database).expanduser().is_file()
