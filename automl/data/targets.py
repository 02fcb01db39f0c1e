"""Targets: the task inferred from the labels, class labels mapped to indices, regression values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from automl.data.dataset import DataError


def infer_task(y: np.ndarray | pd.Series) -> str:
    """Floating-point targets -> "regression"; integer, bool, string or categorical -> "classification"."""
    dtype = y.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return "classification"
    return "regression" if np.dtype(getattr(dtype, "numpy_dtype", dtype)).kind == "f" else "classification"


def _as_labels(values: np.ndarray | pd.Series, where: str) -> np.ndarray:
    array = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataError(f"{where}: targets must be one value per row, got shape {array.shape}")
    missing = int(pd.isna(array).sum()) if array.dtype.kind in "fOUSM" else 0
    if missing:
        raise DataError(f"{where}: {missing} target value(s) are missing")
    return array


def _name(value: object) -> str:
    return str(value.item() if isinstance(value, np.generic) else value)


def encode_classes(
    parts: list[np.ndarray | pd.Series], where: str
) -> tuple[list[torch.Tensor], list[str]]:
    """Class indices (int64) for each part and the class names, sorted numerically for numeric
    labels and as text otherwise; the classes are those seen in any part."""
    arrays = [_as_labels(p, where) for p in parts]
    joined = np.concatenate(arrays)
    if joined.dtype.kind not in "biuf":
        arrays = [a.astype(str) for a in arrays]
        joined = np.concatenate(arrays)
    uniques = np.unique(joined)
    if len(uniques) < 2:
        raise DataError(f"{where}: a classification target needs at least 2 classes, found "
                        f"{len(uniques)} ({', '.join(map(_name, uniques[:1]))})")
    codes = [torch.from_numpy(np.searchsorted(uniques, a).astype(np.int64)) for a in arrays]
    return codes, [_name(u) for u in uniques]


def regression_targets(values: np.ndarray | pd.Series, where: str) -> torch.Tensor:
    """Float32 targets; refuses non-numeric or non-finite values."""
    array = _as_labels(values, where)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: regression targets must be numeric, got {array.dtype}")
    array = array.astype(np.float32)
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise DataError(f"{where}: {bad} regression target value(s) are not finite")
    return torch.from_numpy(array)


def encode_targets(
    parts: list[np.ndarray | pd.Series], task: str, where: str
) -> tuple[list[torch.Tensor], list[str]]:
    """Targets of every part as tensors, and the class names (none for regression)."""
    if task == "classification":
        return encode_classes(parts, where)
    return [regression_targets(p, where) for p in parts], []
