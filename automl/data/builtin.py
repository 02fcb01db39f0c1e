"""Built-in datasets: scikit-learn's digits, breast_cancer and wine (offline), the IDX datasets and
CIFAR-10 from `--data-dir` in torchvision's layout, downloaded only when asked."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl.data.dataset import DataError, Dataset, Split
from automl.data.idx import IDX_DATASETS, load_idx, missing_idx_files
from automl.data.splits import carve_validation, input_stats, three_way_split

SKLEARN_DATASETS = ("digits", "breast_cancer", "wine")
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
BUILTIN_DATASETS = (*SKLEARN_DATASETS, *IDX_DATASETS, "cifar10")


def load_builtin(name: str, seed: int, data_dir: Path, val_fraction: float, test_fraction: float,
                 download: bool) -> Dataset:
    """A built-in dataset: seeded three-way split (scikit-learn) or the official test split with
    validation carved from the training split (IDX, CIFAR-10)."""
    if name in SKLEARN_DATASETS:
        x, y, classes, features = _load_sklearn(name)
        train, val, test = three_way_split(x, y, seed, val_fraction, test_fraction, name)
        source = f"sklearn:{name}"
    elif name in IDX_DATASETS:
        folder = data_dir / IDX_DATASETS[name][0] / "raw"
        missing = missing_idx_files(folder)
        if missing:
            _download_or_fail(name, data_dir, folder, missing, download, gz=True)
        (x, y), test = load_idx(folder)
        train, val = carve_validation(x, y, seed, val_fraction, str(folder))
        classes, features, source = IDX_DATASETS[name][1], [], str(folder)
    else:
        (x, y), test = _load_cifar10(data_dir, download)
        train, val = carve_validation(x, y, seed, val_fraction)
        classes, features, source = CIFAR10_CLASSES, [], str(data_dir / CIFAR10_FOLDER)
    mean, std = input_stats(train.x)
    pixel_max = None if features else (16.0 if name == "digits" else 255.0)
    return Dataset(name, "classification", train, val, test, mean, std, class_names=list(classes),
                   features=features, pixel_max=pixel_max, source=source)


def _load_sklearn(name: str) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """(x, y, class names, feature names); digits are uint8 images 1 x 8 x 8 with values 0..16."""
    from sklearn import datasets

    loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer,
              "wine": datasets.load_wine}[name]
    bunch = loader()
    y = torch.from_numpy(bunch.target.astype(np.int64))
    classes = [str(c) for c in bunch.target_names]
    if name == "digits":
        return torch.from_numpy(bunch.images.astype(np.uint8)[:, None, :, :]), y, classes, []
    return (torch.from_numpy(bunch.data.astype(np.float32)), y, classes,
            [str(f) for f in bunch.feature_names])


def _missing_message(dataset: str, folder: Path, files: list[str], gz: bool) -> str:
    either = ", each optionally .gz" if gz else ""
    return (f"{dataset}: data not found in {folder} (expected {', '.join(files)}{either}); "
            f"put the files there or pass --download to fetch them")


def _download_or_fail(dataset: str, data_dir: Path, folder: Path, missing: list[str], download: bool,
                      gz: bool) -> None:
    """Fetch a torchvision dataset into `data_dir` when the user asked with --download, else say
    which folder and files were looked for."""
    if not download:
        raise DataError(_missing_message(dataset, folder, missing, gz))
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST,
           "kmnist": torchvision.datasets.KMNIST, "cifar10": torchvision.datasets.CIFAR10}[dataset]
    try:
        for train in (True, False):
            cls(str(data_dir), train=train, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"{dataset}: download into {data_dir} failed: {e}") from None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: CIFAR batches need nothing more."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
        data = np.asarray(batch.get("data", batch.get(b"data")), dtype=np.uint8)
        labels = np.asarray(batch.get("labels", batch.get(b"labels")), dtype=np.int64)
    except Exception as e:
        raise DataError(f"{path}: not a CIFAR-10 python batch: {e}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data) or labels.ndim != 1:
        raise DataError(f"{path}: expected N x 3072 bytes and N labels, got {data.shape} and {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= 10):
        raise DataError(f"{path}: labels must be 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(data_dir: Path, download: bool) -> tuple[tuple[torch.Tensor, torch.Tensor], Split]:
    folder = data_dir / CIFAR10_FOLDER
    missing = [f for f in CIFAR10_FILES if not (folder / f).is_file()]
    if missing:
        _download_or_fail("cifar10", data_dir, folder, missing, download, gz=False)
    parts = [_read_cifar_batch(folder / f) for f in CIFAR10_FILES[:-1]]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    if len(y) == 0:
        raise DataError(f"{folder}: the training batches hold no images")
    tx, ty = _read_cifar_batch(folder / "test_batch")
    return (x, y), Split(torch.from_numpy(tx), torch.from_numpy(ty))
