"""`load_dataset`: one entry point for every named source, with its options checked up front."""

from __future__ import annotations

import warnings
from pathlib import Path

from automl.data.arrays import load_npz
from automl.data.builtin import BUILTIN_DATASETS, load_builtin
from automl.data.dataset import DataError, Dataset
from automl.data.images import load_image_folder
from automl.data.splits import check_fractions, check_task
from automl.data.tabular import load_table

FILE_SOURCES = ("csv", "parquet", "npz", "image_folder")
DATASET_NAMES = (*BUILTIN_DATASETS, *FILE_SOURCES)
"""Every value `load_dataset` accepts as `dataset` (built-in names, then sources read from `path`)."""


def load_dataset(
    dataset: str,
    seed: int = 0,
    data_dir: str | Path = "data",
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    path: str | Path | None = None,
    target: str | None = None,
    task: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    color: str | None = None,
    download: bool = False,
    *,
    csv_path: str | Path | None = None,
) -> Dataset:
    """Load `dataset` and split it deterministically from `seed` (an official test split never
    changes). `path` names the file or folder of csv, parquet, npz and image_folder; `target` the
    column of csv and parquet; `task` (classification, the default, or regression) applies to
    csv, parquet and npz; `image_size` (int or (h, w), default 32) and `color` ("rgb", the default,
    or "grey") to image_folder. `csv_path` is a deprecated alias of `path`."""
    if csv_path is not None:
        if path is not None and Path(path) != Path(csv_path):
            raise DataError(f"data: path ({path}) and its deprecated alias csv_path ({csv_path}) differ")
        warnings.warn("load_dataset(csv_path=...) is deprecated; pass path=...", DeprecationWarning,
                      stacklevel=2)
        path = csv_path
    _check_options(dataset, path, target, task, image_size, color)
    check_fractions(validation_fraction, test_fraction, f"data ({dataset})", seed)
    if dataset in BUILTIN_DATASETS:
        return load_builtin(dataset, seed, Path(data_dir), validation_fraction, test_fraction, download)
    file = Path(path).expanduser()  # type: ignore[arg-type]  # checked above
    if dataset in ("csv", "parquet"):
        data = load_table(dataset, file, str(target), task, seed, validation_fraction, test_fraction)
    elif dataset == "npz":
        data = load_npz(file, task, seed, validation_fraction, test_fraction)
    else:
        data = load_image_folder(file, image_size, color, seed, validation_fraction, test_fraction)
    data.source = str(file.resolve())
    return data


def _check_options(dataset: str, path: object, target: object, task: str | None, image_size: object,
                   color: object) -> None:
    """Each option only where it applies, and the required ones present."""
    if dataset not in DATASET_NAMES:
        raise DataError(f"data: unknown dataset {dataset!r} (known: {', '.join(DATASET_NAMES)})")
    check_task(task, f"data ({dataset})")
    applies = {
        "path": dataset in FILE_SOURCES,
        "target": dataset in ("csv", "parquet"),
        "image_size": dataset == "image_folder",
        "color": dataset == "image_folder",
    }
    values = {"path": path, "target": target, "image_size": image_size, "color": color}
    for key, value in values.items():
        if value is not None and not applies[key]:
            raise DataError(f"data: {key} does not apply to dataset {dataset!r}")
    for key in ("path", "target"):
        if applies[key] and values[key] in (None, ""):
            raise DataError(f"data: dataset {dataset!r} needs {key}")
    if task == "regression" and dataset not in ("csv", "parquet", "npz"):
        raise DataError(f"data: dataset {dataset!r} is for classification, not regression")
