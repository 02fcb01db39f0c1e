"""Arrays (a .npz file, numpy arrays or tensors from Python) -> Dataset.

Inputs with more than 2 dimensions are images: N x H x W gains a channel axis, N x H x W x C with C in
(1, 3, 4) becomes N x C x H x W; uint8 stays uint8 (a white pixel is 255), floats become float32 (a
white pixel is 1.0 when every training value is at most 1, else 255). Inputs of 1 or 2 dimensions
are tabular features (float32, named x0, x1, ...).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl.data.dataset import MAX_IN_MEMORY_BYTES, DataError, Dataset, Split, gib
from automl.data.splits import input_stats, plan_splits, target_stats
from automl.data.targets import encode_targets, infer_task

Pair = tuple[Any, Any]


def as_inputs(x: Any, where: str) -> torch.Tensor:
    """Numeric inputs as a tensor: images N x C x H x W (uint8 or float32), else N x F float32."""
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: inputs must be numeric, got dtype {array.dtype}")
    if array.ndim == 0 or array.ndim > 4:
        raise DataError(f"{where}: inputs must have 1 to 4 dimensions (rows first), got shape {array.shape}")
    if array.ndim == 1:
        array = array[:, None]
    elif array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[3] in (1, 3, 4) and array.shape[1] not in (1, 3, 4):
        array = array.transpose(0, 3, 1, 2)  # channels last -> channels first
    if array.ndim == 4 and array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array))
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise DataError(f"{where}: inputs hold {bad} missing or infinite value(s)")
    return torch.from_numpy(array)


def _pixel_max(train_x: torch.Tensor) -> float | None:
    if train_x.dim() != 4:
        return None
    if train_x.dtype == torch.uint8 or len(train_x) == 0:
        return 255.0
    return 1.0 if float(train_x.max()) <= 1.0 else 255.0


def dataset_from_arrays(
    parts: dict[str, Pair | None], task: str | None, seed: int, val_fraction: float,
    test_fraction: float, *, name: str, source: str, where: str,
) -> Dataset:
    """`parts["train"]` = (x, y) split seeded and stratified three ways, except for the splits given
    as `parts["validation"]` / `parts["test"]`; statistics from the training split only."""
    given = {k: p for k, p in parts.items() if p is not None}
    xs = {k: as_inputs(p[0], f"{where} ({k})" if k != "train" else where) for k, p in given.items()}
    for k, x in xs.items():
        if len(x) != len(given[k][1]):
            raise DataError(f"{where}: {k} inputs have {len(x)} rows but {len(given[k][1])} targets")
        if x.shape[1:] != xs["train"].shape[1:]:
            raise DataError(f"{where}: {k} inputs have shape {tuple(x.shape[1:])} per row, training "
                            f"inputs {tuple(xs['train'].shape[1:])}")
    task = task or infer_task(np.asarray(_numpy(given["train"][1])))
    ys, class_names = encode_targets([_numpy(p[1]) for p in given.values()], task, where)
    y = dict(zip(given, ys, strict=True))
    labels = y["train"].numpy() if task == "classification" else None
    plan = plan_splits(len(y["train"]), labels, seed, val_fraction, test_fraction,
                       "validation" in given, "test" in given, where)
    splits = {}
    for k, idx in plan.items():
        x_k, y_k = (xs[k], y[k]) if idx is None else (xs["train"], y["train"])
        splits[k] = Split(x_k, y_k) if idx is None else _rows(x_k, y_k, idx)
        if len(splits[k]) == 0:
            raise DataError(f"{where}: the {k} split is empty")
    train = splits["train"]
    mean, std = input_stats(train.x)
    target_mean, target_std = target_stats(train.y) if task == "regression" else (0.0, 1.0)
    features = [] if train.x.dim() == 4 else [f"x{i}" for i in range(train.x.shape[1])]
    return Dataset(name, task, train, splits["validation"], splits["test"], mean, std, target_mean,
                   target_std, class_names=class_names, features=features,
                   pixel_max=_pixel_max(train.x), source=source)


def _numpy(y: Any) -> np.ndarray:
    return y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)


def _rows(x: torch.Tensor, y: torch.Tensor, index: np.ndarray) -> Split:
    idx = torch.from_numpy(np.asarray(index, dtype=np.int64))
    return Split(x[idx].contiguous(), y[idx].contiguous())


def load_npz(path: Path, task: str | None, seed: int, val_fraction: float, test_fraction: float) -> Dataset:
    """A .npz file with arrays `x` and `y`; task "classification" unless given."""
    if not path.is_file():
        raise DataError(f"{path}: npz file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: not an .npz archive (np.savez writes one)")
            arrays = {key: _npz_array(npz, key, path) for key in ("x", "y")}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file: {str(e).splitlines()[0] if str(e) else e!r}") from None
    return dataset_from_arrays({"train": (arrays["x"], arrays["y"]), "validation": None, "test": None},
                               task or "classification", seed, val_fraction, test_fraction,
                               name=path.stem, source=str(path), where=str(path))


def _npz_array(npz: Any, key: str, path: Path) -> np.ndarray:
    if key not in npz.files:
        raise DataError(f"{path}: no array {key!r} (arrays: {', '.join(npz.files) or 'none'}); "
                        f"save inputs as x and targets as y")
    size = npz.zip.getinfo(f"{key}.npy").file_size
    if size > MAX_IN_MEMORY_BYTES:
        raise DataError(f"{path}: array {key!r} takes {gib(size)}, above the {gib(MAX_IN_MEMORY_BYTES)} limit")
    try:
        return npz[key]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path}: array {key!r} holds Python objects; save it as numbers or "
                            f"fixed-width strings (np.savez refuses to unpickle)") from None
        raise
