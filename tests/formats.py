"""Small dataset files in the exact formats torchvision reads (written under tmp_path)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from automl.data import write_idx


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 300, n_test: int = 100, gz: bool = False) -> Path:
    """Real digits, upscaled to 28x28, written as torchvision's MNIST raw IDX files."""
    digits = load_digits()
    images = (digits.images * 255 / 16).astype(np.uint8)
    images = np.kron(images, np.ones((3, 3), dtype=np.uint8))  # 24 x 24
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))  # 28 x 28
    labels = digits.target.astype(np.uint8)
    raw = root / folder / "raw"
    ext = ".gz" if gz else ""
    write_idx(raw / f"train-images-idx3-ubyte{ext}", images[:n_train])
    write_idx(raw / f"train-labels-idx1-ubyte{ext}", labels[:n_train])
    write_idx(raw / f"t10k-images-idx3-ubyte{ext}", images[n_train:n_train + n_test])
    write_idx(raw / f"t10k-labels-idx1-ubyte{ext}", labels[n_train:n_train + n_test])
    return root


def write_cifar10(root: Path, per_batch: int = 20) -> Path:
    """CIFAR-10 python batches (pickled dicts of numpy arrays), as torchvision lays them out."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root
