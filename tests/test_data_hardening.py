"""Malformed inputs found by an adversarial pass: each gives one DataError line, never a traceback."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl.data import DataError, load_dataset, read_idx, write_idx
from tests.formats import write_cifar10, write_mnist


def _one_line(info: pytest.ExceptionInfo[DataError]) -> str:
    message = str(info.value)
    error = info.value
    assert "\n" not in message and error.__cause__ is None  # no chained traceback to print
    assert error.__context__ is None or error.__suppress_context__
    return message


@pytest.mark.parametrize("val,test", [(0.5, 0.5), (0.7, 0.4)])
def test_fractions_leaving_nothing_to_train_on(val: float, test: float) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("digits", validation_fraction=val, test_fraction=test)
    assert f"validation_fraction ({val}) + test_fraction ({test}) must be below 1" in _one_line(info)


@pytest.mark.parametrize("key", ["validation_fraction", "test_fraction"])
def test_fraction_out_of_range(key: str) -> None:
    with pytest.raises(DataError, match=f"{key} must be a number in \\(0, 1\\), got 0"):
        load_dataset("wine", **{key: 0})


def test_data_error_is_a_value_error_and_a_usage_error() -> None:
    from automl.errors import UsageError

    assert issubclass(DataError, ValueError) and issubclass(DataError, UsageError)


def test_idx_with_no_images(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros((0,), np.uint8))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert "train-images-idx3-ubyte: holds no images (shape (0, 28, 28))" in _one_line(info)


def test_idx_header_sizes_overflowing(tmp_path: Path) -> None:
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1) + b"\x00" * 64)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert "huge-idx3-ubyte: IDX header promises" in _one_line(info) and "limit" in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_not_matching_file_length(tmp_path: Path, gz: bool) -> None:
    ext = ".gz" if gz else ""
    short = tmp_path / f"short{ext}"
    raw = bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 28, 28) + b"\x01" * (9 * 28 * 28)
    short.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError) as info:
        read_idx(short)
    assert f"short{ext}: IDX header promises 7840 bytes, file holds 7056" in _one_line(info)
    long = tmp_path / f"long{ext}"
    raw = raw + b"\x01" * (2 * 28 * 28)
    long.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match="IDX header promises 7840 bytes, file holds more"):
        read_idx(long)


def test_idx_corrupt_gzip(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    original = path.read_bytes()
    data = bytearray(original)
    data[40:60] = b"\xff" * 20  # damage the compressed stream
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert "train-images-idx3-ubyte.gz: corrupt gzip file" in _one_line(info)
    path.write_bytes(original[: len(original) // 2])  # cut short
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: corrupt gzip file"):
        load_dataset("mnist", data_dir=tmp_path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: corrupt gzip file"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_train_and_test_images_of_different_shapes(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((300, 5, 7), np.uint8))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert "train images are 5x7 but test images are 28x28" in _one_line(info)


def test_mnist_label_count_not_matching_images(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros((99,), np.uint8))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert "t10k-images-idx3-ubyte holds 100 images but t10k-labels-idx1-ubyte holds 99 labels" in _one_line(info)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros((100, 2), np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: expected a vector of labels"):
        load_dataset("mnist", data_dir=tmp_path)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full((100,), 12, np.uint8))
    with pytest.raises(DataError, match="labels must be 0..9, found 12"):
        load_dataset("mnist", data_dir=tmp_path)


def test_cifar_labels_out_of_range(tmp_path: Path) -> None:
    import pickle

    write_cifar10(tmp_path)
    batch = {b"data": np.zeros((20, 3072), np.uint8), b"labels": [11] * 20}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="test_batch: labels must be 0..9"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_options_checked_up_front(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'digitz'"):
        load_dataset("digitz")
    with pytest.raises(DataError, match="path does not apply to dataset 'digits'"):
        load_dataset("digits", path=tmp_path)
    with pytest.raises(DataError, match="image_size does not apply to dataset 'csv'"):
        load_dataset("csv", path=tmp_path / "a.csv", target="y", image_size=8)
    with pytest.raises(DataError, match="dataset 'parquet' needs target"):
        load_dataset("parquet", path=tmp_path / "a.parquet")
    with pytest.raises(DataError, match="dataset 'npz' needs path"):
        load_dataset("npz")
    with pytest.raises(DataError, match="task must be 'classification' or 'regression'"):
        load_dataset("npz", path=tmp_path / "a.npz", task="ranking")
    assert load_dataset("digits", task="classification").n_outputs == 10  # what the CLI passes


def test_csv_path_is_a_deprecated_alias_of_path(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    rows = [f"{i},{i % 3},{'ab'[i % 2]}" for i in range(40)]
    csv.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    with pytest.warns(DeprecationWarning, match="csv_path"):
        old = load_dataset("csv", seed=0, csv_path=str(csv), target="label", task="classification")
    new = load_dataset("csv", seed=0, path=csv, target="label")
    assert old.identity() == new.identity() and old.class_names == ["a", "b"]
    with pytest.raises(DataError, match="differ"):
        load_dataset("csv", path=tmp_path / "other.csv", csv_path=str(csv), target="label")


# --- the input statistics predict compares against ----------------------------------------------


OLD_KEYS = {"dataset", "task", "input_shape", "input_dtype", "input_mean", "input_std", "target_mean",
            "target_std", "class_names", "features", "encoding", "pixel_max", "sizes"}


def test_preprocessing_records_pixel_mean_and_dark_background(tmp_path: Path) -> None:
    digits = load_dataset("digits", seed=0)
    pre = json.loads(json.dumps(digits.preprocessing()))
    assert OLD_KEYS <= set(pre) and pre["class_names"] == [str(i) for i in range(10)]
    train = digits.train.x.double()
    assert pre["pixel_mean"] == pytest.approx(float(train.mean()) * 255 / 16, abs=1e-3)
    assert pre["background"] == "dark" and pre["border_mean"] < 64
    write_mnist(tmp_path)
    assert load_dataset("mnist", data_dir=tmp_path).preprocessing()["background"] == "dark"
    wine = load_dataset("wine").preprocessing()
    assert wine["background"] is None and wine["pixel_mean"] is None


def test_preprocessing_records_light_background(tmp_path: Path) -> None:
    root = tmp_path / "ink"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            picture = np.full((12, 12), 250, np.uint8)
            picture[3:9, 4 + (label == "b"):7] = 20 + i  # dark strokes on white paper
            Image.fromarray(picture).save(root / label / f"{i}.png")
    data = load_dataset("image_folder", path=root, image_size=12, color="grey")
    pre = data.preprocessing()
    assert pre["background"] == "light" and pre["border_mean"] == pytest.approx(250, abs=1)
    assert pre["pixel_mean"] == pytest.approx(float(data.train.x.double().mean()), abs=1e-3)
    assert pre["class_names"] == ["a", "b"] and pre["source"] == str(root.resolve())


def test_input_statistics_in_chunks_match_the_whole() -> None:
    import torch

    from automl.data.splits import input_stats

    images = torch.randint(0, 256, (5001, 3, 4, 4), dtype=torch.uint8)
    mean, std = input_stats(images, chunk=333)
    assert mean == pytest.approx(images.double().mean((0, 2, 3)).tolist(), rel=1e-12)
    assert std == pytest.approx(images.double().std((0, 2, 3)).tolist(), rel=1e-12)
    table = torch.randn(2000, 5, dtype=torch.float64) * 1e3 + 1e6  # large offset, small spread
    mean, std = input_stats(table.float(), chunk=128)
    assert std == pytest.approx(table.float().double().std(0).tolist(), rel=1e-9)


def test_seed_out_of_range_and_too_few_rows_name_the_data(tmp_path: Path) -> None:
    from automl.data import dataset_from_python

    with pytest.raises(DataError, match=r"data \(digits\): seed must be an integer in 0..2\*\*32-1, got -1"):
        load_dataset("digits", seed=-1)
    with pytest.raises(DataError, match="python data: 1 rows are too few to hold out"):
        dataset_from_python((np.zeros((2, 2)), np.array([0, 1])))


def test_infinite_values_in_a_table(tmp_path: Path) -> None:
    csv = tmp_path / "inf.csv"
    csv.write_text("a,label\n" + "\n".join(f"{'inf' if i == 4 else i},{i % 2}" for i in range(30)) + "\n")
    with pytest.raises(DataError, match=r"inf\.csv: column 'a' holds infinite values"):
        load_dataset("csv", path=csv, target="label")
