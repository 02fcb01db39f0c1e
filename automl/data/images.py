"""A folder of image files in torchvision's ImageFolder layout: `root/<class>/**/<image>`.

Class names are the sorted sub-folder names (hidden folders such as `.ipynb_checkpoints` and hidden
files such as macOS `._x.jpg` are ignored, as are files without an image extension). Every image is
decoded once with Pillow (EXIF orientation applied), converted to grey (1 channel) or RGB (3), and
stretched to `image_size` (bicubic), giving uint8 tensors N x C x H x W.

An unreadable image is an error, not a skip: one DataError line names the file, so the data a
search trained on is exactly the folder's content. An image above MAX_IMAGE_PIXELS (a decompression
bomb guard) is refused before it is decoded, and so is a folder whose decoded tensor would exceed
MAX_IN_MEMORY_BYTES.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from automl.data.dataset import MAX_IN_MEMORY_BYTES, DataError, Dataset, gib
from automl.data.splits import input_stats, three_way_split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_IMAGE_PIXELS = 64_000_000  # 8000 x 8000
COLORS = {"grey": ("L", 1), "gray": ("L", 1), "rgb": ("RGB", 3)}
DEFAULT_IMAGE_SIZE = 32


def image_size_pair(image_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int]:
    """(height, width) from an int, a pair, or None (the default, 32 x 32)."""
    if image_size is None:
        return DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE
    pair = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096
                                 for v in pair):
        raise DataError(f"image_size must be an int or (height, width) in 1..4096, got {image_size!r}")
    return pair[0], pair[1]


def channels_of(color: str | None) -> tuple[str, int]:
    """(Pillow mode, channels) for "grey"/"gray" or "rgb" (the default)."""
    key = "rgb" if color is None else str(color).lower()
    if key not in COLORS:
        raise DataError(f"color must be 'grey' or 'rgb', got {color!r}")
    return COLORS[key]


def decode_image(path: Path, size: tuple[int, int], color: str | None = "rgb") -> np.ndarray:
    """One image file as uint8 C x H x W, decoded as for training (use it to read inputs for
    predictions too): EXIF orientation, then grey or RGB, then stretched to `size` = (h, w)."""
    from PIL import Image, ImageOps

    mode, _ = channels_of(color)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise DataError(f"{path}: {width}x{height} pixels, above the limit of "
                                    f"{MAX_IMAGE_PIXELS:,} (decompression bomb guard)")
                image = ImageOps.exif_transpose(opened).convert(mode)
                image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
                array = np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise DataError(f"{path}: too many pixels (decompression bomb guard)") from None
    except Exception as e:  # Pillow raises many types for broken files
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e}); fix or remove it") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def list_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files, their class indices and the class names (sorted folder names)."""
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root}: need at least 2 class folders (root/<class>/<image>), found "
                        f"{len(classes)}{': ' + classes[0] if classes else ''}")
    if set(classes) <= {"train", "training", "val", "valid", "validation", "test", "testing"}:
        raise DataError(f"{root}: the sub-folders ({', '.join(classes)}) look like splits, not classes; "
                        f"point path at a folder whose sub-folders are the classes")
    files, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not found:
            raise DataError(f"{root / name}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [index] * len(found)
    return files, labels, classes


def load_image_folder(
    root: Path, image_size: int | tuple[int, int] | None, color: str | None, seed: int,
    val_fraction: float, test_fraction: float,
) -> Dataset:
    """An ImageFolder tree decoded once and split seeded and stratified three ways."""
    size = image_size_pair(image_size)
    _, channels = channels_of(color)
    files, labels, classes = list_image_folder(root)
    need = len(files) * channels * size[0] * size[1]
    if need > MAX_IN_MEMORY_BYTES:
        raise DataError(f"{root}: {len(files)} images at {channels}x{size[0]}x{size[1]} need {gib(need)}, "
                        f"above the {gib(MAX_IN_MEMORY_BYTES)} limit; use a smaller image_size")
    x = np.empty((len(files), channels, *size), dtype=np.uint8)
    workers = min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=workers)  # Pillow decodes outside the GIL
    try:
        for i, array in enumerate(pool.map(lambda p: decode_image(p, size, color), files)):
            x[i] = array
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error, decode no further files
    y = torch.tensor(labels, dtype=torch.int64)
    train, val, test = three_way_split(torch.from_numpy(x), y, seed, val_fraction, test_fraction,
                                        str(root))
    mean, std = input_stats(train.x)
    return Dataset(root.resolve().name, "classification", train, val, test, mean, std, class_names=classes,
                   pixel_max=255.0, source=str(root))
