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


def write_image_folder(root: Path, n_per_class: int = 12, classes: tuple[int, ...] = (0, 1, 7),
                       size: int = 24) -> Path:
    """Real digits as PNG and JPEG files in torchvision's ImageFolder layout: root/<class>/<n>.png."""
    from PIL import Image

    digits = load_digits()
    for label in classes:
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True)
        images = digits.images[digits.target == label][:n_per_class]
        for i, image in enumerate(images):
            pixels = (image * 255 / 16).astype(np.uint8)
            picture = Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST)
            if i % 3 == 1:
                picture.convert("RGB").save(folder / f"{i}.jpg", quality=95)
            else:
                picture.save(folder / f"{i}.png")
    return root


def write_npz(path: Path, x: np.ndarray, y: np.ndarray, compressed: bool = False) -> Path:
    """Arrays x and y in an .npz archive, as np.savez writes it."""
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y)
    return path
