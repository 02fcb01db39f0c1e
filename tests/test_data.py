"""Dataset loaders in their real formats, deterministic splits, clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from automl.data import DataError, load_dataset
from tests.formats import write_cifar10, write_mnist


def test_digits_splits_are_deterministic_disjoint_and_stratified() -> None:
    a = load_dataset("digits", seed=3)
    b = load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.test.x, c.test.x)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert len(a.test) == pytest.approx(0.15 * 1797, abs=2)
    rows = lambda s: {tuple(r) for r in s.x.flatten(1).tolist()}  # noqa: E731
    assert not (rows(a.train) & rows(a.test) - rows(a.val))  # no sample shared (beyond duplicates)
    counts = torch.bincount(a.test.y, minlength=10).float()
    assert counts.min() >= 0.7 * counts.max()  # stratified
    assert a.input_shape == (1, 8, 8) and a.train.x.dtype == torch.uint8


def test_normalisation_statistics_come_from_training_split() -> None:
    data = load_dataset("wine", seed=0)
    assert data.input_mean == pytest.approx(data.train.x.double().mean(0).tolist())
    assert data.input_shape == (13,) and data.n_outputs == 3


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_datasets_use_official_test_split(tmp_path: Path, name: str, folder: str, gz: bool) -> None:
    write_mnist(tmp_path, folder, gz=gz)
    data = load_dataset(name, seed=0, data_dir=tmp_path, validation_fraction=0.2)
    assert len(data.test) == 100  # the t10k files, untouched
    assert len(data.train) + len(data.val) == 300 and len(data.val) == 60
    assert data.input_shape == (1, 28, 28) and data.train.x.dtype == torch.uint8
    assert len(data.class_names) == 10


def test_missing_idx_files_name_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist", seed=0, data_dir=tmp_path / "data")
    message = str(info.value)
    assert str(tmp_path / "data" / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "--download" in message


def test_corrupt_idx_file(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="train-images-idx3-ubyte: truncated IDX header"):
        load_dataset("mnist", seed=0, data_dir=tmp_path)


def test_cifar10_batches(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    data = load_dataset("cifar10", seed=0, data_dir=tmp_path, validation_fraction=0.1)
    assert len(data.test) == 20 and len(data.train) + len(data.val) == 100
    assert data.input_shape == (3, 32, 32) and len(data.input_mean) == 3


def test_cifar10_refuses_pickled_code(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(Path("/etc")))
    with pytest.raises(DataError, match="data_batch_1: not a CIFAR-10 python batch"):
        load_dataset("cifar10", seed=0, data_dir=tmp_path)


def _write_csv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 120
    size = rng.normal(100, 20, n).round(1)
    kind = rng.choice(["flat", "house", "loft"], n)
    price = size * 3 + (kind == "house") * 50 + rng.normal(0, 5, n)
    label = np.where(price > np.median(price), "high", "low")
    rows = zip(size, kind, price, label, strict=True)
    lines = ["size,kind,price,label"] + [f"{s},{k},{p:.2f},{lab}" for s, k, p, lab in rows]
    lines[5] = f"99.0,,{price[4]:.2f},low"  # a missing category
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_classification_one_hot(tmp_path: Path) -> None:
    csv = _write_csv(tmp_path / "homes.csv")
    data = load_dataset("csv", seed=0, path=str(csv), target="label", task="classification")
    assert data.class_names == ["high", "low"]
    # size, price, kind=flat, kind=house, kind=loft
    assert data.features == ["size", "price", "kind=flat", "kind=house", "kind=loft"]
    assert data.input_shape == (5,)
    assert set(data.encoding["categorical"]["kind"]) == {"flat", "house", "loft"}


def test_csv_regression_target_statistics_from_training_split(tmp_path: Path) -> None:
    csv = _write_csv(tmp_path / "homes.csv")
    data = load_dataset("csv", seed=0, path=str(csv), target="price", task="regression")
    assert data.task == "regression" and data.n_outputs == 1
    assert data.target_mean == pytest.approx(float(data.train.y.double().mean()))
    assert "label=high" in data.features


def test_csv_errors(tmp_path: Path) -> None:
    csv = _write_csv(tmp_path / "homes.csv")
    with pytest.raises(DataError, match="no target column 'cost'"):
        load_dataset("csv", seed=0, path=str(csv), target="cost", task="regression")
    with pytest.raises(DataError, match="regression target 'kind' is not numeric"):
        load_dataset("csv", seed=0, path=str(csv), target="kind", task="regression")
    bad = tmp_path / "bad.csv"
    bad.write_text('a,b\n1,"2\n3,4,5,6\n')
    with pytest.raises(DataError, match="bad.csv: malformed CSV"):
        load_dataset("csv", seed=0, path=str(bad), target="a", task="regression")
    with pytest.raises(DataError, match="missing.csv: CSV file not found"):
        load_dataset("csv", seed=0, path=str(tmp_path / "missing.csv"), target="a", task="regression")
