"""Tables (CSV, Parquet, a pandas DataFrame) -> float32 features: numeric columns with missing values
filled with the training median, other columns one-hot encoded with the categories seen in training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from automl.data.dataset import MAX_IN_MEMORY_BYTES, DataError, Dataset, Split, gib
from automl.data.splits import input_stats, plan_splits, target_stats
from automl.data.targets import encode_targets, infer_task

TABLE_FORMATS = {"csv": "CSV", "parquet": "Parquet"}
MIN_ROWS = 10


def read_table(path: Path, kind: str) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame, or one DataError line naming the file."""
    label = TABLE_FORMATS[kind]
    if not path.is_file():
        raise DataError(f"{path}: {label} file not found")
    try:
        return pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as e:
        problem = "malformed CSV" if kind == "csv" else "not a readable Parquet file"
        text = str(e).strip().splitlines()
        raise DataError(f"{path}: {problem}: {text[0] if text else type(e).__name__}") from None


def load_table(kind: str, path: Path, target: str, task: str | None, seed: int, val_fraction: float,
               test_fraction: float) -> Dataset:
    """A CSV or Parquet file split three ways (task "classification" unless given)."""
    frame = read_table(path, kind)
    return dataset_from_frame(frame, target, task or "classification", seed, val_fraction, test_fraction,
                              name=path.stem, source=str(path), where=str(path))


def _check_frame(frame: Any, target: str, where: str) -> pd.DataFrame:
    """The frame with string column names and only the rows that have a target value."""
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{where}: expected a pandas DataFrame, got {type(frame).__name__}")
    frame = frame.rename(columns=str)
    if frame.columns.duplicated().any():
        duplicated = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise DataError(f"{where}: duplicated column name(s): {', '.join(duplicated)}")
    if target not in frame.columns:
        raise DataError(f"{where}: no target column {target!r} (columns: {', '.join(frame.columns)})")
    if frame.shape[1] < 2:
        raise DataError(f"{where}: no feature columns besides the target {target!r}")
    return frame[frame[target].notna()]


def dataset_from_frame(
    frame: pd.DataFrame, target: str, task: str | None, seed: int, val_fraction: float,
    test_fraction: float, *, name: str, source: str, where: str,
    validation: pd.DataFrame | None = None, test: pd.DataFrame | None = None,
) -> Dataset:
    """A DataFrame (plus optional validation and test frames) -> Dataset; the encoding and every
    statistic come from the training rows only."""
    target = str(target)
    frame = _check_frame(frame, target, where)
    if len(frame) < MIN_ROWS:
        raise DataError(f"{where}: need at least {MIN_ROWS} rows with a {target!r} value, found {len(frame)}")
    given = {k: _check_frame(f, target, f"{where} ({k})") for k, f in (("validation", validation),
                                                                      ("test", test)) if f is not None}
    task = task or infer_task(frame[target])
    if task == "regression" and not pd.api.types.is_numeric_dtype(frame[target]):
        raise DataError(f"{where}: regression target {target!r} is not numeric")
    (y, *_), _ = encode_targets([frame[target]], task, where)  # the labels to stratify on
    plan = plan_splits(len(frame), y.numpy() if task == "classification" else None, seed,
                       val_fraction, test_fraction, "validation" in given, "test" in given, where)
    frames = {k: (given[k] if idx is None else frame.iloc[idx]) for k, idx in plan.items()}
    targets, class_names = encode_targets([f[target] for f in frames.values()], task, where)
    features = {k: f.drop(columns=[target]) for k, f in frames.items()}
    encoding = fit_encoding(features["train"])
    _check_width(encoding, len(frame) + sum(len(f) for f in given.values()), where)
    splits = [Split(torch.from_numpy(encode_frame(features[k], encoding, where)), t)
              for k, t in zip(frames, targets, strict=True)]
    mean, std = input_stats(splits[0].x)
    target_mean, target_std = target_stats(splits[0].y) if task == "regression" else (0.0, 1.0)
    names = list(encoding["numeric"]) + [
        f"{col}={cat}" for col, cats in encoding["categorical"].items() for cat in cats
    ]
    return Dataset(name, task, splits[0], splits[1], splits[2], mean, std, target_mean, target_std,
                   class_names=class_names,
                   features=names, encoding={**encoding, "target": target}, source=source)


def _check_width(encoding: dict[str, Any], rows: int, where: str) -> None:
    """Refuse an encoding that would not fit in memory (an id column one-hot encoded, say)."""
    width = len(encoding["numeric"]) + sum(len(c) for c in encoding["categorical"].values())
    if width == 0:
        raise DataError(f"{where}: the feature columns hold no values in the training rows")
    if rows * width * 4 > MAX_IN_MEMORY_BYTES:
        widest: tuple[str, list[str]] = max(encoding["categorical"].items(), key=lambda kv: len(kv[1]),
                                            default=("", []))
        raise DataError(f"{where}: {rows} rows x {width} encoded features need {gib(rows * width * 4)}, "
                        f"above the {gib(MAX_IN_MEMORY_BYTES)} limit; column {widest[0]!r} alone has "
                        f"{len(widest[1])} categories (drop it or encode it as numbers)")


def fit_encoding(frame: pd.DataFrame) -> dict[str, Any]:
    """Numeric columns (missing values filled with the training median) and one-hot categories."""
    numeric: dict[str, float] = {}
    categorical: dict[str, list[str]] = {}
    for col in frame.columns:
        series = frame[col]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            median = series.median()
            numeric[str(col)] = 0.0 if pd.isna(median) else float(median)
        else:
            categorical[str(col)] = sorted(series.dropna().astype(str).unique().tolist())
    return {"numeric": numeric, "categorical": categorical}


def encode_frame(frame: pd.DataFrame, encoding: dict[str, Any], where: str = "") -> np.ndarray:
    """Apply a fitted encoding; unseen categories encode as all zeros."""
    prefix = f"{where}: " if where else ""
    missing = [c for c in [*encoding["numeric"], *encoding["categorical"]] if c not in frame.columns]
    if missing:
        raise DataError(f"{prefix}missing column(s): {', '.join(missing)}")
    blocks = []
    for col, fill in encoding["numeric"].items():
        try:
            values = frame[col].astype("float64").fillna(fill).to_numpy()[:, None]
        except (TypeError, ValueError):
            raise DataError(f"{prefix}column {col!r} must be numeric, as in training") from None
        if not np.isfinite(values).all():
            raise DataError(f"{prefix}column {col!r} holds infinite values")
        blocks.append(values)
    for col, categories in encoding["categorical"].items():
        values = frame[col].astype(str).to_numpy()
        blocks.append(np.stack([values == c for c in categories], axis=1).astype(np.float64)
                      if categories else np.zeros((len(frame), 0)))
    return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((len(frame), 0), np.float32)
