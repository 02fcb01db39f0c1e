"""New data sources in their real formats: image folders, .npz, Parquet, and data from Python."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits, load_wine

from automl.data import DataError, Dataset, dataset_from_python, decode_image, load_dataset
from tests.formats import write_image_folder, write_npz


def _disjoint(data: Dataset) -> bool:
    rows = lambda s: {r.tobytes() for r in s.x.flatten(1).numpy()}  # noqa: E731
    return not (rows(data.train) & rows(data.test)) and not (rows(data.val) & rows(data.test))


# --- image_folder -----------------------------------------------------------------------------


def test_image_folder_decodes_resizes_and_splits_stratified(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pics", n_per_class=20)
    data = load_dataset("image_folder", seed=0, path=root, image_size=(16, 12), color="grey")
    assert data.class_names == ["digit_0", "digit_1", "digit_7"]
    assert data.input_shape == (1, 16, 12) and data.train.x.dtype == torch.uint8
    assert len(data.train) + len(data.val) + len(data.test) == 60
    assert torch.bincount(data.test.y, minlength=3).tolist() == [3, 3, 3]  # stratified
    assert data.pixel_max == 255.0 and data.source == str(root.resolve())
    again = load_dataset("image_folder", seed=0, path=root, image_size=(16, 12), color="grey")
    assert torch.equal(again.test.x, data.test.x) and torch.equal(again.val.y, data.val.y)
    assert _disjoint(data)
    rgb = load_dataset("image_folder", seed=0, path=root)
    assert rgb.input_shape == (3, 32, 32) and len(rgb.input_mean) == 3


def test_image_folder_pixels_match_the_file(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    for name, value in (("dark", 10), ("light", 240)):
        (root / name).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), (value, value + i, 0)).save(root / name / f"{i}.png")
    data = load_dataset("image_folder", seed=1, path=root, image_size=8)
    first = data.train.x[0]
    label = data.class_names[int(data.train.y[0])]
    assert int(first[0].float().mean()) == (10 if label == "dark" else 240)
    assert int(first[2].max()) == 0  # blue channel stays empty: channels in RGB order


def test_image_folder_ignores_hidden_and_non_image_files(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pics", n_per_class=10, classes=(0, 1))
    (root / "digit_0" / "notes.txt").write_text("not an image")
    (root / "digit_0" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / ".ipynb_checkpoints").mkdir()
    data = load_dataset("image_folder", seed=0, path=root, image_size=8, color="grey")
    assert data.class_names == ["digit_0", "digit_1"]
    assert len(data.train) + len(data.val) + len(data.test) == 20


def test_image_folder_unreadable_image_is_one_error_naming_the_file(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pics", n_per_class=10, classes=(0, 1))
    broken = root / "digit_1" / "broken.png"
    broken.write_bytes((root / "digit_1" / "0.png").read_bytes()[:60])  # a truncated PNG
    with pytest.raises(DataError, match=r"broken\.png: not a readable image") as info:
        load_dataset("image_folder", seed=0, path=root, image_size=8)
    assert "\n" not in str(info.value) and info.value.__cause__ is None


def test_image_folder_refuses_a_decompression_bomb(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pics", n_per_class=10, classes=(0, 1))
    Image.new("L", (9000, 9000)).save(root / "digit_0" / "bomb.png")  # 81 Mpixel, a few KB on disk
    assert (root / "digit_0" / "bomb.png").stat().st_size < 200_000
    with pytest.raises(DataError, match=r"bomb\.png: 9000x9000 pixels, above the limit"):
        load_dataset("image_folder", seed=0, path=root, image_size=8)


def test_image_folder_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder not found"):
        load_dataset("image_folder", path=tmp_path / "nowhere")
    (tmp_path / "one" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="need at least 2 class folders"):
        load_dataset("image_folder", path=tmp_path / "one")
    root = write_image_folder(tmp_path / "splits" / "train", n_per_class=10, classes=(0, 1))
    write_image_folder(tmp_path / "splits" / "test", n_per_class=10, classes=(0, 1))
    with pytest.raises(DataError, match="look like splits, not classes"):
        load_dataset("image_folder", path=root.parent)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty: class folder holds no images"):
        load_dataset("image_folder", path=root)
    with pytest.raises(DataError, match="color must be 'grey' or 'rgb'"):
        load_dataset("image_folder", path=root, color="cmyk")
    with pytest.raises(DataError, match="image_size must be"):
        load_dataset("image_folder", path=root, image_size=(0, 8))


def test_decode_image_is_what_training_saw(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pics", n_per_class=10, classes=(0, 1))
    data = load_dataset("image_folder", seed=0, path=root, image_size=10, color="grey")
    files = sorted((root / "digit_0").glob("*")) + sorted((root / "digit_1").glob("*"))
    decoded = np.stack([decode_image(f, (10, 10), "grey") for f in files])
    for split in (data.train, data.val, data.test):
        for row in split.x.numpy():
            assert any(np.array_equal(row, d) for d in decoded)


# --- npz --------------------------------------------------------------------------------------


def test_npz_images_and_tabular(tmp_path: Path) -> None:
    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8)  # N x 8 x 8
    data = load_dataset("npz", seed=0, path=write_npz(tmp_path / "d.npz", images, digits.target))
    assert data.input_shape == (1, 8, 8) and data.train.x.dtype == torch.uint8
    assert data.class_names == [str(i) for i in range(10)] and data.pixel_max == 255.0
    assert torch.bincount(data.test.y).min() >= 0.7 * torch.bincount(data.test.y).max()
    channels_last = write_npz(tmp_path / "c.npz", np.repeat(images[..., None], 3, axis=3) / 255.0,
                              digits.target, compressed=True)
    floats = load_dataset("npz", seed=0, path=channels_last)
    assert floats.input_shape == (3, 8, 8) and floats.train.x.dtype == torch.float32
    assert floats.pixel_max == 1.0
    wine = load_wine()
    table = load_dataset("npz", seed=0, path=write_npz(tmp_path / "w.npz", wine.data, wine.target))
    assert table.input_shape == (13,) and table.features[:2] == ["x0", "x1"] and table.n_outputs == 3


def test_npz_regression(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 3.0
    data = load_dataset("npz", seed=0, path=write_npz(tmp_path / "r.npz", x, y), task="regression")
    assert data.task == "regression" and data.n_outputs == 1 and data.train.y.dtype == torch.float32
    assert data.target_mean == pytest.approx(float(data.train.y.double().mean()))
    assert len(data.train) + len(data.val) + len(data.test) == 200


def test_npz_errors(tmp_path: Path) -> None:
    x = np.zeros((20, 3))
    np.savez(tmp_path / "a.npz", x=x, labels=np.zeros(20))
    with pytest.raises(DataError, match=r"no array 'y' \(arrays: x, labels\)"):
        load_dataset("npz", path=tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x=x, y=np.array([{"a": 1}] * 20, dtype=object))
    with pytest.raises(DataError, match="array 'y' holds Python objects"):
        load_dataset("npz", path=tmp_path / "b.npz")
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"c\.npz: not a readable \.npz file"):
        load_dataset("npz", path=tmp_path / "c.npz")
    with pytest.raises(DataError, match="inputs have 20 rows but 19 targets"):
        load_dataset("npz", path=write_npz(tmp_path / "d.npz", x, np.arange(19) % 2))
    with pytest.raises(DataError, match="regression targets must be numeric"):
        load_dataset("npz", path=write_npz(tmp_path / "e.npz", x, np.array(["a", "b"] * 10)),
                     task="regression")
    with pytest.raises(DataError, match="npz file not found"):
        load_dataset("npz", path=tmp_path / "missing.npz")


# --- parquet ----------------------------------------------------------------------------------


def test_parquet_like_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"size": rng.normal(100, 20, 80), "kind": rng.choice(["a", "b"], 80),
                          "label": rng.choice(["yes", "no"], 80)})
    frame.loc[3, "size"] = np.nan
    frame.to_parquet(tmp_path / "t.parquet")
    data = load_dataset("parquet", seed=0, path=tmp_path / "t.parquet", target="label")
    assert data.class_names == ["no", "yes"] and data.features == ["size", "kind=a", "kind=b"]
    train_rows = data.train.x[:, 0].double()
    fill = data.encoding["numeric"]["size"]  # the training rows' median
    assert fill == pytest.approx(float(np.median(train_rows.numpy())), rel=1e-5)
    assert fill != pytest.approx(float(np.median(data.test.x[:, 0].numpy())), rel=1e-3)
    assert data.input_mean[0] == pytest.approx(float(train_rows.mean()))
    regression = load_dataset("parquet", path=tmp_path / "t.parquet", target="size", task="regression")
    assert regression.task == "regression" and regression.features == ["kind=a", "kind=b", "label=no",
                                                                        "label=yes"]
    (tmp_path / "bad.parquet").write_text("size,label\n1,2\n")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        load_dataset("parquet", path=tmp_path / "bad.parquet", target="label")


# --- Python -----------------------------------------------------------------------------------


def test_python_arrays_tensors_and_string_labels() -> None:
    digits = load_digits()
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    data = dataset_from_python((digits.data.astype(np.float32), names[digits.target]), seed=2)
    assert data.task == "classification" and data.class_names == sorted(names.tolist())
    assert data.source == "python" and data.input_shape == (64,)
    decoded = [data.class_names[i] for i in data.train.y[:20].tolist()]
    index = {tuple(r): t for r, t in zip(digits.data.astype(np.float32).tolist(), digits.target, strict=True)}
    assert decoded == [names[index[tuple(r)]] for r in data.train.x[:20].tolist()]
    images = torch.from_numpy(digits.images.astype(np.uint8))
    as_tensors = dataset_from_python((images, torch.from_numpy(digits.target)), name="digits-t")
    assert as_tensors.input_shape == (1, 8, 8) and as_tensors.name == "digits-t"
    regression = dataset_from_python((digits.data, digits.target.astype(np.float64) / 9))
    assert regression.task == "regression" and regression.train.y.dtype == torch.float32


def test_python_frame_with_explicit_validation_and_test() -> None:
    wine = load_wine(as_frame=True).frame
    train, val, test = wine.iloc[:120], wine.iloc[120:150], wine.iloc[150:]
    data = dataset_from_python((train, "target"), validation=(val, "target"), test=(test, "target"))
    assert (len(data.train), len(data.val), len(data.test)) == (120, 30, 28)
    assert data.test.y.tolist() == test["target"].tolist()  # untouched, in order
    assert data.class_names == ["0", "1", "2"] and data.encoding["target"] == "target"
    assert data.input_mean[0] == pytest.approx(float(train.iloc[:, 0].mean()))  # train only
    only_test = dataset_from_python((train, "target"), test=(test, "target"), validation_fraction=0.25)
    assert len(only_test.val) == 30 and len(only_test.train) == 90 and len(only_test.test) == 28


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int, shape: tuple[int, ...] = (1, 8, 8)) -> None:
        self.n, self.shape = n, shape
        self.digits = load_digits()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = i % len(self.digits.target)
        x = torch.from_numpy(self.digits.images[i].astype(np.float32) / 16).reshape(self.shape)
        return x, torch.tensor(int(self.digits.target[i]))


def test_python_torch_dataset_is_materialised_once() -> None:
    data = dataset_from_python(_Pairs(300), seed=0)
    assert data.input_shape == (1, 8, 8) and data.train.x.dtype == torch.float32
    assert len(data.train) + len(data.val) + len(data.test) == 300 and data.n_outputs == 10
    assert data.pixel_max == 1.0


def test_python_torch_dataset_over_the_memory_limit_is_refused_before_reading() -> None:
    huge = _Pairs(10**9, shape=(64,))  # 10^9 x 64 floats = 238 GiB
    with pytest.raises(DataError, match=r"1000000000 items of shape \(64,\).*above the 4.0 GiB"):
        dataset_from_python(huge)


def test_python_errors() -> None:
    x, y = np.zeros((30, 2)), np.arange(30) % 2
    with pytest.raises(DataError, match="expected \\(X, y\\)"):
        dataset_from_python(x)
    with pytest.raises(DataError, match="needs at least 2 classes"):
        dataset_from_python((x, np.zeros(30, dtype=int)))
    with pytest.raises(DataError, match="validation inputs have shape \\(3,\\) per row"):
        dataset_from_python((x, y), validation=(np.zeros((5, 3)), np.arange(5) % 2))
    with pytest.raises(DataError, match="inputs hold 1 missing or infinite"):
        holed = x.copy()
        holed[7, 1] = np.nan
        dataset_from_python((holed, y))
    with pytest.raises(DataError, match="validation_fraction \\(0.6\\) \\+ test_fraction \\(0.4\\)"):
        dataset_from_python((x, y), validation_fraction=0.6, test_fraction=0.4)


# --- identity ---------------------------------------------------------------------------------


def test_identity_digest_is_deterministic_and_sensitive(tmp_path: Path) -> None:
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    one = dataset_from_python((x, y), seed=0).identity()
    assert one == dataset_from_python((x.copy(), y.copy()), seed=0).identity()
    changed = x.copy()
    changed[100, 5] += 1
    assert dataset_from_python((changed, y), seed=0).identity()["digest"] != one["digest"]
    assert dataset_from_python((x, y), seed=1).identity()["digest"] != one["digest"]
    assert one["rows"] == {"train": 1257, "validation": 270, "test": 270}
    assert one["source"] == "python" and len(one["digest"]) == 16 and one["input_shape"] == [64]
    assert one["shapes"]["test"] == {"x": [270, 64], "y": [270]}
    assert load_dataset("digits").identity()["source"] == "sklearn:digits"
    npz = write_npz(tmp_path / "d.npz", x, y)
    from_file = load_dataset("npz", path=npz).identity()
    assert from_file["source"] == str(npz.resolve()) and from_file["digest"] == load_dataset(
        "npz", path=npz).identity()["digest"]


class _PilPairs(torch.utils.data.Dataset):
    """Like a torchvision dataset without a transform: (PIL image, int) items."""

    def __init__(self) -> None:
        self.digits = load_digits()

    def __len__(self) -> int:
        return 200

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        pixels = (self.digits.images[i] * 255 / 16).astype(np.uint8)
        return Image.fromarray(np.stack([pixels] * 3, axis=2)), int(self.digits.target[i])


def test_python_torch_dataset_of_pil_images() -> None:
    data = dataset_from_python(_PilPairs())
    assert data.input_shape == (3, 8, 8) and data.train.x.dtype == torch.uint8  # channels first
    assert data.class_names == [str(i) for i in range(10)]


def test_python_iterable_dataset_is_refused() -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield torch.zeros(2), 0

    with pytest.raises(DataError, match="an IterableDataset cannot be split"):
        dataset_from_python(Stream())
