"""Checks of names and URLs given on the command line (light: no torch, no MLflow import)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from automl.errors import UsageError

DEFAULT_STORAGE = "sqlite:///optuna.db"  # Optuna study, resumable
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default: `mlflow ui` in the same folder
STORAGE_ENV = "AUTOML_STORAGE"  # how to give a URL with a password without showing it in `ps`
TRACKING_ENV = "AUTOML_TRACKING_URI"
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<secret>[^@\s]*)@")
SQLITE_HEADER = b"SQLite format 3\x00"


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***` (for messages and records)."""
    return _USERINFO.sub(lambda m: f"{m['head']}:***@", url)


def mask_text(text: str, url: str) -> str:
    """`text` (e.g. a driver's error) with the password of `url` and any URL password masked."""
    match = _USERINFO.search(url)
    if match and match["secret"]:
        text = text.replace(match["secret"], "***")
    return mask_url(text)


def without_password(url: str) -> str:
    """The URL with its password removed, to be stored (the secret comes from the user at run time)."""
    return _USERINFO.sub(lambda m: f"{m['head']}@", url)


def storage_url(given: str | None) -> str:
    """The Optuna storage URL: the flag, else $AUTOML_STORAGE, else sqlite:///optuna.db; checked."""
    return check_storage_url(given or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE)


def tracking_uri(given: str | None, stored: str | None = None) -> str:
    """The MLflow tracking URI: the flag, else $AUTOML_TRACKING_URI, else `stored`, else sqlite:///mlflow.db."""
    return check_tracking_uri(given or os.environ.get(TRACKING_ENV) or stored or DEFAULT_TRACKING_URI)


def _check_sqlite_file(flag: str, url: str, database: str) -> None:
    """An SQLite database path must be a new file in an existing folder, or an SQLite file."""
    path = Path(database).expanduser()
    folder = path.resolve().parent
    if not folder.is_dir():
        raise UsageError(f"{flag}: folder {folder} of {mask_url(url)!r} does not exist")
    if str(folder).startswith(("/sys", "/proc", "/dev")):
        raise UsageError(f"{flag}: {path} is not a place for a database (a system folder)")
    if path.exists():
        if not path.is_file():
            raise UsageError(f"{flag}: {path} is not a regular file")
        try:
            with path.open("rb") as f:
                head = f.read(16)
        except OSError as e:
            raise UsageError(f"{flag}: cannot read {path}: {e.strerror}") from None
        if head and head != SQLITE_HEADER:
            raise UsageError(f"{flag}: {path} exists and is not an SQLite database")
    elif not os.access(folder, os.W_OK):
        raise UsageError(f"{flag}: cannot create {path}: folder {folder} is not writable")


def sqlite_file(url: str) -> str | None:
    """The database file of an SQLite URL; None for other (or malformed) URLs and in-memory SQLite."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return str(parsed.database)
    return None


def absolute_sqlite(url: str) -> str:
    """sqlite:///relative.db as an absolute path, so workers in other folders find the same file."""
    import sqlalchemy

    database = sqlite_file(url)
    if database is None:
        return url
    parsed = sqlalchemy.engine.make_url(url)
    return parsed.set(database=str(Path(database).expanduser().resolve())).render_as_string(hide_password=False)


def check_study_name(name: str) -> str:
    if not STUDY_NAME.fullmatch(name):
        raise UsageError(
            f"--study: invalid study name {name!r} (use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit; no path separators or control characters)"
        )
    return name


def check_storage_url(url: str) -> str:
    """An SQLAlchemy database URL Optuna's RDB storage can use."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise UsageError(f"--storage: malformed database URL {mask_url(url)!r} (expected e.g. "
                         "sqlite:///optuna.db or postgresql://user@host/db)") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "mysql"):
        raise UsageError(f"--storage: unsupported database {backend!r} in {mask_url(url)!r} "
                         "(expected sqlite, postgresql or mysql)")
    database = sqlite_file(url)
    if database is not None:
        _check_sqlite_file("--storage", url, database)
    return url


def check_tracking_uri(uri: str) -> str:
    """A tracking URI this tool can record in: a database URL or an http(s):// server (MLflow 3's
    file store is refused)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""
    if scheme in ("http", "https"):
        if not re.match(r"^https?://[^/\s:]+(:\d+)?(/\S*)?$", uri):
            raise UsageError(f"--tracking-uri: malformed URL {mask_url(uri)!r}")
        return uri
    if scheme == "databricks":
        return uri
    if scheme == "file" or (scheme == "" and uri.startswith(("/", "."))):
        raise UsageError(f"--tracking-uri: {uri!r} is a file store, which MLflow 3 no longer supports for "
                         "this tool's records; use a database (sqlite:///mlflow.db) or a server (http://host:port)")
    if scheme in ("sqlite", "postgresql", "mysql", "mssql"):
        import sqlalchemy

        try:
            sqlalchemy.engine.make_url(uri)
        except (sqlalchemy.exc.ArgumentError, ValueError):
            raise UsageError(f"--tracking-uri: malformed database URL {mask_url(uri)!r}") from None
        database = sqlite_file(uri)
        if database is not None:
            _check_sqlite_file("--tracking-uri", uri, database)
        return uri
    raise UsageError(f"--tracking-uri: unsupported URI {mask_url(uri)!r} (expected sqlite:///mlflow.db, "
                     "http://host:port or postgresql://...)")
