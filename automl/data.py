"""Datasets -> tensors with deterministic train/validation/test splits and normalisation statistics.

Images stay compact (uint8, N x C x H x W) and are normalised on the device by the network's first
layer; tabular data becomes float32 features. Statistics come from the training split only.

Built in (offline): scikit-learn's `digits`, `breast_cancer`, `wine`. From `--data-dir` in
torchvision's layout: `mnist`, `fashion_mnist`, `kmnist` (IDX files) and `cifar10` (python
batches), downloaded only when asked. Any CSV file through pandas.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from automl.errors import UsageError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_DATASETS = {
    # name: (torchvision folder / class name, class names)
    "mnist": ("MNIST", [str(i) for i in range(10)]),
    "fashion_mnist": ("FashionMNIST", ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                       "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
    "kmnist": ("KMNIST", ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]),
}
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


class DataError(UsageError):
    """The data cannot be found or read (exit code 2)."""


@dataclass
class Split:
    """Inputs and targets of one split: uint8 images or float32 features; int64 or float32 targets."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    """A dataset split three ways, plus what a network needs to normalise its inputs."""

    name: str
    task: str
    train: Split
    val: Split
    test: Split
    input_mean: list[float]  # per channel (images) or per feature, in raw input units
    input_std: list[float]
    target_mean: float = 0.0  # regression targets are standardised for the loss
    target_std: float = 1.0
    class_names: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)  # tabular: encoded column names
    encoding: dict[str, Any] = field(default_factory=dict)  # csv: how raw columns are encoded
    pixel_max: float | None = None  # images: the value of a white pixel (16 for digits, else 255)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def n_outputs(self) -> int:
        return len(self.class_names) if self.task == "classification" else 1

    @property
    def is_image(self) -> bool:
        return self.train.x.dim() == 4

    def to(self, device: torch.device | str) -> Dataset:
        """The same dataset with every tensor on `device` (images stay uint8)."""
        move = lambda s: Split(s.x.to(device), s.y.to(device))  # noqa: E731
        return replace(self, train=move(self.train), val=move(self.val), test=move(self.test))

    def preprocessing(self) -> dict[str, Any]:
        """What turns raw inputs into network inputs, as JSON-serialisable values."""
        return {
            "dataset": self.name,
            "task": self.task,
            "input_shape": list(self.input_shape),
            "input_dtype": str(self.train.x.dtype).removeprefix("torch."),
            "input_mean": self.input_mean,
            "input_std": self.input_std,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "class_names": self.class_names,
            "features": self.features,
            "encoding": self.encoding,
            "pixel_max": self.pixel_max,
            "sizes": {"train": len(self.train), "validation": len(self.val), "test": len(self.test)},
        }


def load_dataset(
    name: str,
    *,
    seed: int,
    data_dir: str | Path = "data",
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    csv_path: str | None = None,
    target: str | None = None,
    task: str = "classification",
    download: bool = False,
) -> Dataset:
    """Load `name` and split it deterministically from `seed` (the test split never changes)."""
    data_dir = Path(data_dir)
    if name == "csv":
        assert csv_path is not None and target is not None
        return _load_csv(Path(csv_path), target, task, seed, validation_fraction, test_fraction)
    if name in ("digits", "breast_cancer", "wine"):
        x, y, classes = _load_sklearn(name)
        indices = _three_way_indices(y.numpy(), len(y), seed, validation_fraction, test_fraction)
        train, val, test = (_take(x, y, i) for i in indices)
    elif name in IDX_DATASETS:
        (x, y), test = _load_idx(name, data_dir, download)
        train, val = _carve_validation(x, y, seed, validation_fraction)
        classes = IDX_DATASETS[name][1]
    elif name == "cifar10":
        (x, y), test = _load_cifar10(data_dir, download)
        train, val = _carve_validation(x, y, seed, validation_fraction)
        classes = CIFAR10_CLASSES
    else:
        raise DataError(f"unknown dataset {name!r}")
    mean, std = _input_stats(train.x)
    features = [] if train.x.dim() == 4 else [f"x{i}" for i in range(train.x.shape[1])]
    if name in ("breast_cancer", "wine"):
        features = _sklearn_feature_names(name)
    pixel_max = None if features else (16.0 if name == "digits" else 255.0)
    return Dataset(name, "classification", train, val, test, mean, std,
                   class_names=list(classes), features=features, pixel_max=pixel_max)


# --- splits -----------------------------------------------------------------------------------


def _split_indices(
    n: int, labels: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n); stratified by `labels` when given."""
    index = np.arange(n)
    try:
        keep, held = train_test_split(index, test_size=fraction, random_state=seed,
                                      stratify=labels)
    except ValueError:  # a class too small to stratify: fall back to a plain seeded split
        keep, held = train_test_split(index, test_size=fraction, random_state=seed)
    return np.sort(keep), np.sort(held)


def _take(x: torch.Tensor, y: torch.Tensor, index: np.ndarray) -> Split:
    idx = torch.from_numpy(index)
    return Split(x[idx].contiguous(), y[idx].contiguous())


def _carve_validation(x: torch.Tensor, y: torch.Tensor, seed: int, fraction: float) -> tuple[Split, Split]:
    keep, held = _split_indices(len(y), y.numpy(), fraction, seed)
    return _take(x, y, keep), _take(x, y, held)


def _three_way_indices(
    labels: np.ndarray | None, n: int, seed: int, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test split first (fixed by the seed), then validation from the rest; fractions of the whole."""
    rest, test = _split_indices(n, labels, test_fraction, seed)
    inner_labels = labels[rest] if labels is not None else None
    train, val = _split_indices(len(rest), inner_labels, val_fraction / (1.0 - test_fraction), seed)
    return rest[train], rest[val], test


def _input_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean and std per channel (images) or per feature, from the training split."""
    dims = (0, 2, 3) if x.dim() == 4 else (0,)
    xf = x.double()
    mean = xf.mean(dim=dims)
    std = xf.std(dim=dims) if len(x) > 1 else torch.ones_like(mean)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


# --- built-in scikit-learn datasets ---------------------------------------------------------------


def _load_sklearn(name: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from sklearn import datasets

    if name == "digits":
        bunch = datasets.load_digits()
        images = bunch.images.astype(np.uint8)[:, None, :, :]  # values 0..16, 8 x 8
        return torch.from_numpy(images), torch.from_numpy(bunch.target.astype(np.int64)), \
            [str(c) for c in bunch.target_names]
    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}[name]
    bunch = loader()
    return (torch.from_numpy(bunch.data.astype(np.float32)),
            torch.from_numpy(bunch.target.astype(np.int64)),
            [str(c) for c in bunch.target_names])


def _sklearn_feature_names(name: str) -> list[str]:
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}[name]
    return [str(f) for f in loader().feature_names]


# --- torchvision folder formats ------------------------------------------------------------------


def _missing_message(dataset: str, folder: Path, files: list[str]) -> str:
    return (f"{dataset}: data not found in {folder} (expected {', '.join(files)}, "
            f"each optionally .gz); put the files there or pass --download to fetch them")


def _download(dataset: str, data_dir: Path) -> None:
    """Fetch a torchvision dataset into `data_dir` (only when the user asked with --download)."""
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST,
           "kmnist": torchvision.datasets.KMNIST, "cifar10": torchvision.datasets.CIFAR10}[dataset]
    try:
        for train in (True, False):
            cls(str(data_dir), train=train, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"{dataset}: download into {data_dir} failed: {e}") from None


def _open_maybe_gz(path: Path) -> bytes:
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            raw = candidate.read_bytes()
            return gzip.decompress(raw) if candidate.suffix == ".gz" else raw
    raise FileNotFoundError(path)


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (the MNIST format): magic, big-endian sizes, then unsigned bytes."""
    raw = _open_maybe_gz(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX header promises {expected} bytes, file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzip-compressed when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def _load_idx(name: str, data_dir: Path, download: bool) -> tuple[tuple[torch.Tensor, torch.Tensor], Split]:
    folder = data_dir / IDX_DATASETS[name][0] / "raw"
    files = [f for pair in IDX_FILES.values() for f in pair]
    present = lambda f: (folder / f).is_file() or (folder / f"{f}.gz").is_file()  # noqa: E731
    if not all(present(f) for f in files):
        if not download:
            raise DataError(_missing_message(name, folder, [f for f in files if not present(f)]))
        _download(name, data_dir)
    splits = {}
    for split, (images_file, labels_file) in IDX_FILES.items():
        images = read_idx(folder / images_file)
        labels = read_idx(folder / labels_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{folder}: {images_file} holds {images.shape} but "
                            f"{labels_file} holds {labels.shape}")
        if labels.size and labels.max() >= 10:
            raise DataError(f"{folder / labels_file}: labels must be 0..9, found {labels.max()}")
        splits[split] = (torch.from_numpy(images.copy()).unsqueeze(1),
                         torch.from_numpy(labels.astype(np.int64)))
    return splits["train"], Split(*splits["test"])


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
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"{path}: expected N x 3072 bytes and N labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(data_dir: Path, download: bool) -> tuple[tuple[torch.Tensor, torch.Tensor], Split]:
    folder = data_dir / CIFAR10_FOLDER
    missing = [f for f in CIFAR10_FILES if not (folder / f).is_file()]
    if missing:
        if not download:
            raise DataError(_missing_message("cifar10", folder, missing).replace(", each optionally .gz", ""))
        _download("cifar10", data_dir)
    parts = [_read_cifar_batch(folder / f) for f in CIFAR10_FILES[:-1]]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    tx, ty = _read_cifar_batch(folder / "test_batch")
    return (x, y), Split(torch.from_numpy(tx), torch.from_numpy(ty))


# --- CSV ---------------------------------------------------------------------------------------


def _load_csv(
    path: Path, target: str, task: str, seed: int, val_fraction: float, test_fraction: float
) -> Dataset:
    """Any CSV: numeric columns scaled, other columns one-hot encoded, fitted on training rows only."""
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: malformed CSV: {str(e).strip().splitlines()[0]}") from None
    if target not in frame.columns:
        raise DataError(f"{path}: no target column {target!r} (columns: {', '.join(map(str, frame.columns))})")
    frame = frame[frame[target].notna()]
    if len(frame) < 10:
        raise DataError(f"{path}: need at least 10 rows with a {target!r} value, found {len(frame)}")
    if frame.shape[1] < 2:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    raw_y = frame[target]
    features = frame.drop(columns=[target])

    if task == "classification":
        class_names = sorted(raw_y.astype(str).unique().tolist())
        if len(class_names) < 2:
            raise DataError(f"{path}: target {target!r} has a single class")
        codes = {name: i for i, name in enumerate(class_names)}
        y = torch.tensor([codes[v] for v in raw_y.astype(str)], dtype=torch.int64)
    else:
        if not pd.api.types.is_numeric_dtype(raw_y):
            raise DataError(f"{path}: regression target {target!r} is not numeric")
        class_names = []
        y = torch.tensor(raw_y.to_numpy(dtype=np.float32))

    labels = y.numpy() if task == "classification" else None
    train_idx, val_idx, test_idx = _three_way_indices(labels, len(y), seed, val_fraction, test_fraction)

    encoding = fit_encoding(features.iloc[train_idx])
    x = torch.from_numpy(encode_frame(features, encoding))
    train, val, test = (_take(x, y, i) for i in (train_idx, val_idx, test_idx))
    mean, std = _input_stats(train.x)
    target_mean, target_std = 0.0, 1.0
    if task == "regression":
        target_mean = float(train.y.double().mean())
        target_std = float(train.y.double().std()) or 1.0
    names = list(encoding["numeric"]) + [
        f"{col}={cat}" for col, cats in encoding["categorical"].items() for cat in cats
    ]
    return Dataset(path.stem, task, train, val, test, mean, std, target_mean, target_std,
                   class_names=class_names, features=names,
                   encoding={**encoding, "target": target})


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


def encode_frame(frame: pd.DataFrame, encoding: dict[str, Any]) -> np.ndarray:
    """Apply a fitted encoding; unseen categories encode as all zeros."""
    missing = [c for c in [*encoding["numeric"], *encoding["categorical"]] if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s): {', '.join(missing)}")
    blocks = [frame[col].astype("float64").fillna(fill).to_numpy()[:, None]
              for col, fill in encoding["numeric"].items()]
    for col, categories in encoding["categorical"].items():
        values = frame[col].astype(str).to_numpy()
        blocks.append(np.stack([values == c for c in categories], axis=1).astype(np.float64)
                      if categories else np.zeros((len(frame), 0)))
    return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((len(frame), 0), np.float32)
