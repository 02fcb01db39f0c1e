"""Optuna storages: opening them (SQLite with immediate transactions, a busy timeout and WAL;
PostgreSQL with pre-ping) and the locks that serialise creating a database and changing a study's
budget across processes."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import sqlalchemy
from filelock import FileLock, Timeout
from optuna.trial import FrozenTrial

from automl.checks import mask_text, mask_url, sqlite_file
from automl.errors import FatalError, UsageError
from automl.locks import SQLITE_TIMEOUT_S, creation_lock, lock_path, storage_exists

BUDGET_LOCK_TIMEOUT_S = 600  # a budget change takes milliseconds; longer means a stuck process


def quiet_optuna() -> None:
    """Optuna's INFO lines and experimental-feature warnings would drown this tool's own lines."""
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _sqlite_immediate_transactions(engine: sqlalchemy.engine.Engine) -> None:
    """Take SQLite's write lock when a transaction begins, so concurrent processes wait for it
    (busy timeout) instead of failing with 'database is locked' on a lock upgrade."""

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        # WAL: readers never block the writer; NORMAL: no fsync per commit (a crashed process
        # loses nothing it committed; only a power cut can lose the last transactions).
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    create: bool = True,
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage; SQLite gets a long busy timeout and immediate transactions.
    With `create=False` a missing SQLite file is a UsageError and nothing is created."""
    if not create and not storage_exists(url):
        raise UsageError(f"--storage: no Optuna storage at {mask_url(url)} (nothing was searched with it yet)")
    engine_kwargs: dict[str, Any] = {}
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S, "isolation_level": None}
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        with creation_lock(url):
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=on_stale,
            )
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise FatalError(f"cannot open the Optuna storage {mask_url(url)}: {mask_text(first, url)}") from None
    except ImportError as e:
        raise UsageError(f"--storage: {mask_url(url)}: {e}") from None
    if is_sqlite:
        _sqlite_immediate_transactions(storage.engine)
        storage.engine.dispose()  # connections made before the listeners lack the pragmas
    return storage


def can_lock_budget(url: str) -> bool:
    """Whether `budget_lock` serialises processes on this storage (SQLite files, PostgreSQL)."""
    return sqlite_file(url) is not None or sqlalchemy.engine.make_url(url).get_backend_name() == "postgresql"


@contextlib.contextmanager
def budget_lock(url: str, study_name: str, purpose: str = "budget") -> Iterator[None]:
    """Serialise changes to one study's budget across processes (waiting at most 600 s, then a
    FatalError), or with `purpose` "summary" its final summaries (waiting as long as another
    search's final phase takes); a no-op where `can_lock_budget` is false. SQLite: a file lock in
    the temporary folder (processes on one machine); PostgreSQL: an advisory lock."""
    timeout = BUDGET_LOCK_TIMEOUT_S if purpose == "budget" else None
    held_elsewhere = f"the {purpose} lock of study {study_name!r} was held elsewhere for {timeout} s"
    database = sqlite_file(url)
    if database is not None:
        lock = FileLock(lock_path(database, f"{purpose}-{study_name}"), timeout=-1 if timeout is None else timeout)
        try:
            lock.acquire()
        except Timeout:
            raise FatalError(f"{held_elsewhere} ({lock.lock_file})") from None
        try:
            yield
        finally:
            lock.release()
    elif sqlalchemy.engine.make_url(url).get_backend_name() == "postgresql":
        key = int(hashlib.sha256(f"{purpose}:{study_name}".encode()).hexdigest()[:15], 16)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                if timeout is not None:  # applies to advisory locks too
                    conn.execute(sqlalchemy.text(f"SET lock_timeout = '{timeout}s'"))
                try:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                except sqlalchemy.exc.OperationalError:
                    raise FatalError(held_elsewhere) from None
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
    else:
        yield
