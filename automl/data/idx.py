"""MNIST-style IDX files (mnist, fashion_mnist, kmnist) in torchvision's folder layout.

Every malformed file gives one DataError naming it: a bad magic number, a header whose sizes do not
match the file's length (or overflow the memory limit), a corrupt .gz, no images, labels that do not
match the images, or train and test images of different shapes.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import IO

import numpy as np
import torch

from automl.data.dataset import MAX_IN_MEMORY_BYTES, DataError, Split, gib

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
_CHUNK = 1 << 20


def _existing(path: Path) -> Path:
    """`path` itself, else `path.gz`."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    raise DataError(f"{path}: file not found (nor {path.name}.gz)")


def _read_exactly(stream: IO[bytes] | gzip.GzipFile, n: int) -> bytes:
    """Up to n bytes, read in chunks so that a header's claim never allocates memory by itself."""
    parts, left = [], n
    while left > 0:
        part = stream.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _parse(stream: IO[bytes] | gzip.GzipFile, path: Path) -> np.ndarray:
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = magic[3]
    raw_shape = stream.read(4 * ndim)
    if len(raw_shape) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw_shape)
    expected = math.prod(shape)  # Python integers: no overflow
    if expected > MAX_IN_MEMORY_BYTES:
        raise DataError(f"{path}: IDX header promises {expected} bytes ({'x'.join(map(str, shape))}), "
                        f"above the {gib(MAX_IN_MEMORY_BYTES)} limit; the header is likely corrupt")
    body = _read_exactly(stream, expected + 1)
    if len(body) != expected:
        held = f"{len(body)}" if len(body) <= expected else "more"
        raise DataError(f"{path}: IDX header promises {expected} bytes, file holds {held}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (the MNIST format: magic, big-endian sizes, then unsigned bytes); `path`
    or, when absent, `path.gz`."""
    path = _existing(Path(path))
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return _parse(stream, path)
        with open(path, "rb") as stream:
            return _parse(stream, path)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip file ({e or type(e).__name__})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzip-compressed when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def _read_pair(folder: Path, images_file: str, labels_file: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's images (N x H x W) and labels (N, values 0..9), checked against each other."""
    images = read_idx(folder / images_file)
    labels = read_idx(folder / labels_file)
    if images.ndim != 3:
        raise DataError(f"{folder / images_file}: expected images N x H x W, got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{folder / labels_file}: expected a vector of labels, got shape {labels.shape}")
    if len(images) == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise DataError(f"{folder / images_file}: holds no images (shape {images.shape})")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {images_file} holds {len(images)} images but {labels_file} "
                        f"holds {len(labels)} labels")
    if labels.max() >= 10:
        raise DataError(f"{folder / labels_file}: labels must be 0..9, found {labels.max()}")
    return images, labels


def missing_idx_files(folder: Path) -> list[str]:
    """The IDX files missing from `folder` (each may also be .gz)."""
    files = [f for pair in IDX_FILES.values() for f in pair]
    return [f for f in files if not (folder / f).is_file() and not (folder / f"{f}.gz").is_file()]


def load_idx(folder: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], Split]:
    """((train images, train labels), official test split) from a torchvision `raw` folder."""
    pairs = {split: _read_pair(folder, *files) for split, files in IDX_FILES.items()}
    train_shape, test_shape = pairs["train"][0].shape[1:], pairs["test"][0].shape[1:]
    if train_shape != test_shape:
        raise DataError(f"{folder}: train images are {'x'.join(map(str, train_shape))} but test images "
                        f"are {'x'.join(map(str, test_shape))}; both splits need one image size")
    tensors = {split: (torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
               for split, (images, labels) in pairs.items()}
    return tensors["train"], Split(*tensors["test"])
