"""Seeded, stratified splits and training-split statistics, shared by every loader."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from automl.data.dataset import DataError, Split

TASKS = ("classification", "regression")


def check_fractions(validation_fraction: float, test_fraction: float, where: str = "data",
                    seed: int = 0) -> None:
    """Both fractions in (0, 1) and together below 1, and a seed in 0..2**32-1, else one DataError
    naming the values."""
    for key, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
            raise DataError(f"{where}: {key} must be a number in (0, 1), got {value!r}")
    if validation_fraction + test_fraction >= 1.0:
        raise DataError(f"{where}: validation_fraction ({validation_fraction}) + test_fraction "
                        f"({test_fraction}) must be below 1, leaving rows to train on")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise DataError(f"{where}: seed must be an integer in 0..2**32-1, got {seed!r}")


def check_task(task: str | None, where: str = "data") -> None:
    if task is not None and task not in TASKS:
        raise DataError(f"{where}: task must be 'classification' or 'regression', got {task!r}")


def split_indices(
    n: int, labels: np.ndarray | None, fraction: float, seed: int, where: str = "data"
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n) into (kept, held out); stratified by `labels` when given."""
    index = np.arange(n)
    try:
        keep, held = train_test_split(index, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError:  # a class too small to stratify: fall back to a plain seeded split
        try:
            keep, held = train_test_split(index, test_size=fraction, random_state=seed)
        except ValueError:
            raise DataError(f"{where}: {n} rows are too few to hold out a fraction of {fraction:g}") from None
    return np.sort(keep), np.sort(held)


def take(x: torch.Tensor, y: torch.Tensor, index: np.ndarray) -> Split:
    """The rows `index` of x and y as a Split of contiguous tensors."""
    idx = torch.from_numpy(np.asarray(index, dtype=np.int64))
    return Split(x[idx].contiguous(), y[idx].contiguous())


def stratify_labels(y: torch.Tensor) -> np.ndarray | None:
    """Labels to stratify on: class indices for classification, none for regression targets."""
    return None if y.is_floating_point() else y.cpu().numpy()


def carve_validation(
    x: torch.Tensor, y: torch.Tensor, seed: int, fraction: float, where: str = "data"
) -> tuple[Split, Split]:
    """(train, validation) from a training split, stratified for classes."""
    keep, held = split_indices(len(y), stratify_labels(y), fraction, seed, where)
    return take(x, y, keep), take(x, y, held)


def three_way_indices(
    labels: np.ndarray | None, n: int, seed: int, val_fraction: float, test_fraction: float,
    where: str = "data",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test split first (fixed by the seed), then validation from the rest; fractions of the whole."""
    rest, test = split_indices(n, labels, test_fraction, seed, where)
    inner_labels = labels[rest] if labels is not None else None
    train, val = split_indices(len(rest), inner_labels, val_fraction / (1.0 - test_fraction), seed, where)
    return rest[train], rest[val], test


def three_way_split(
    x: torch.Tensor, y: torch.Tensor, seed: int, val_fraction: float, test_fraction: float,
    where: str = "data",
) -> tuple[Split, Split, Split]:
    """Seeded train/validation/test splits (stratified for classes)."""
    indices = three_way_indices(stratify_labels(y), len(y), seed, val_fraction, test_fraction, where)
    train, val, test = (take(x, y, i) for i in indices)
    return train, val, test


def _chunk_moments(part: torch.Tensor, dims: tuple[int, ...]) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(count per channel or feature, mean, sum of squared deviations) of one chunk, in float64."""
    part = part.double()
    shape = (1, -1, 1, 1) if part.dim() == 4 else (1, -1)
    mean = part.mean(dim=dims)
    return part.numel() // max(part.shape[1], 1), mean, ((part - mean.reshape(shape)) ** 2).sum(dim=dims)


def input_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Mean and std per channel (images) or per feature, from the training split, computed in
    chunks (Chan's pairwise update) so a large uint8 split is never copied whole to float64."""
    if len(x) == 0:
        raise DataError("the training split is empty")
    dims = (0, 2, 3) if x.dim() == 4 else (0,)
    count, mean, m2 = _chunk_moments(x[:chunk], dims)
    for start in range(chunk, len(x), chunk):
        n_b, mean_b, m2_b = _chunk_moments(x[start:start + chunk], dims)
        delta = mean_b - mean
        total = count + n_b
        mean = mean + delta * n_b / total
        m2 = m2 + m2_b + delta**2 * count * n_b / total
        count = total
    std = (m2 / (count - 1)).sqrt() if len(x) > 1 else torch.ones_like(mean)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return mean.cpu().tolist(), std.cpu().tolist()


def target_stats(y: torch.Tensor) -> tuple[float, float]:
    """Mean and std of regression targets in the training split (std 1 when constant)."""
    values = y.double()
    std = float(values.std()) if len(values) > 1 else 1.0
    return float(values.mean()), (std if std > 1e-12 else 1.0)


def plan_splits(
    n: int, labels: np.ndarray | None, seed: int, val_fraction: float, test_fraction: float,
    has_validation: bool = False, has_test: bool = False, where: str = "data",
) -> dict[str, np.ndarray | None]:
    """Row indices of `n` rows for each split the caller did not bring itself (None where it did):
    a seeded three-way split, or validation / test alone carved from the rows (stratified)."""
    if not has_validation and not has_test:
        train, val, test = three_way_indices(labels, n, seed, val_fraction, test_fraction, where)
        return {"train": train, "validation": val, "test": test}
    if has_validation and has_test:
        return {"train": np.arange(n), "validation": None, "test": None}
    fraction = test_fraction if has_validation else val_fraction
    keep, held = split_indices(n, labels, fraction, seed, where)
    if has_validation:
        return {"train": keep, "validation": None, "test": held}
    return {"train": keep, "validation": held, "test": None}
