"""Checks of names and URLs given on the command line (light: no torch, no MLflow import)."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy

from automl.errors import UsageError

DEFAULT_STORAGE = "sqlite:///optuna.db"  # Optuna study, resumable
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default: `mlflow ui` in the same folder
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_study_name(name: str) -> str:
    if not STUDY_NAME.match(name):
        raise UsageError(
            f"--study: invalid study name {name!r} (use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit; no path separators or control characters)"
        )
    return name


def check_storage_url(url: str) -> str:
    """An SQLAlchemy database URL Optuna's RDB storage can use."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise UsageError(f"--storage: malformed database URL {url!r} (expected e.g. "
                         "sqlite:///optuna.db or postgresql://user@host/db)") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "mysql"):
        raise UsageError(f"--storage: unsupported database {backend!r} in {url!r} "
                         "(expected sqlite, postgresql or mysql)")
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        folder = Path(parsed.database).expanduser().resolve().parent
        if not folder.is_dir():
            raise UsageError(f"--storage: folder {folder} of {url!r} does not exist")
    return url


def check_tracking_uri(uri: str) -> str:
    """A tracking URI MLflow understands: a database URL, http(s)://, or file:/path."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""
    if scheme in ("http", "https"):
        if not re.match(r"^https?://[^/\s:]+(:\d+)?(/\S*)?$", uri):
            raise UsageError(f"--tracking-uri: malformed URL {uri!r}")
        return uri
    if scheme == "file" or scheme == "databricks":
        return uri
    if scheme in ("sqlite", "postgresql", "mysql", "mssql"):
        try:
            sqlalchemy.engine.make_url(uri)
        except (sqlalchemy.exc.ArgumentError, ValueError):
            raise UsageError(f"--tracking-uri: malformed database URL {uri!r}") from None
        return uri
    raise UsageError(f"--tracking-uri: unsupported URI {uri!r} (expected sqlite:///mlflow.db, "
                     "http://host:port, postgresql://..., or file:/path)")
