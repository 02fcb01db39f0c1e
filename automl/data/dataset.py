"""The records every loader returns: `Split`, `Dataset` (identity, preprocessing) and `DataError`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from automl.errors import UsageError

MAX_IN_MEMORY_BYTES = 4 * 2**30
"""The most a dataset may take in memory once decoded (4 GiB): bigger inputs are refused up front."""


class DataError(UsageError, ValueError):
    """The data cannot be found or read: one line naming the file or key and the problem (exit code 2)."""


def gib(n_bytes: float) -> str:
    """A byte count as GiB with one decimal, for messages."""
    return f"{n_bytes / 2**30:.1f} GiB"


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
    source: str = ""  # a file or folder path, "python", or "sklearn:<name>"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def n_outputs(self) -> int:
        return len(self.class_names) if self.task == "classification" else 1

    @property
    def is_image(self) -> bool:
        return self.train.x.dim() == 4

    def splits(self) -> dict[str, Split]:
        """The three splits by their recorded names."""
        return {"train": self.train, "validation": self.val, "test": self.test}

    def to(self, device: torch.device | str) -> Dataset:
        """The same dataset with every tensor on `device` (images stay uint8)."""
        move = lambda s: Split(s.x.to(device), s.y.to(device))  # noqa: E731
        return replace(self, train=move(self.train), val=move(self.val), test=move(self.test))

    def identity(self) -> dict[str, Any]:
        """Name, source, split sizes, shapes and a digest of every split's tensors (same data and seed,
        same digest; any changed value, label, order or split, another digest)."""
        digest = hashlib.sha256()
        digest.update(json.dumps({"task": self.task, "class_names": self.class_names}).encode())
        shapes: dict[str, dict[str, list[int]]] = {}
        for name, split in self.splits().items():
            shapes[name] = {"x": list(split.x.shape), "y": list(split.y.shape)}
            for part, tensor in (("x", split.x), ("y", split.y)):
                array = tensor.detach().cpu().contiguous().numpy()
                digest.update(f"{name}.{part}:{array.dtype}:{array.shape};".encode())
                digest.update(array.reshape(-1).view(np.uint8).data)
        return {
            "name": self.name,
            "source": self.source,
            "task": self.task,
            "rows": {name: len(split) for name, split in self.splits().items()},
            "input_shape": list(self.input_shape),
            "input_dtype": str(self.train.x.dtype).removeprefix("torch."),
            "shapes": shapes,
            "digest": digest.hexdigest()[:16],
        }

    def preprocessing(self) -> dict[str, Any]:
        """What turns raw inputs into network inputs, as JSON-serialisable values. Image data also
        records the training pixels' mean on a 0-255 scale and whether the background is dark."""
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
            "source": self.source,
            **self._image_statistics(),
        }

    def _image_statistics(self) -> dict[str, Any]:
        """`pixel_mean` and `border_mean` (0-255 scale) and `background` ("dark" or "light", from the
        border pixels) of the training images; None for tabular data."""
        if not self.is_image or len(self.train) == 0:
            return {"pixel_mean": None, "border_mean": None, "background": None}
        scale = 255.0 / float(self.pixel_max or 255.0)
        x = self.train.x
        pixel_mean = sum(self.input_mean) / len(self.input_mean) * scale  # channels are equal-sized
        height, width = x.shape[2], x.shape[3]
        rows = x[:, :, [0, height - 1], :].flatten(1)
        cols = x[:, :, 1:height - 1, [0, width - 1]].flatten(1)
        total = rows.double().sum() + cols.double().sum()
        border_mean = float(total) / (rows.numel() + cols.numel()) * scale
        return {"pixel_mean": round(pixel_mean, 4), "border_mean": round(border_mean, 4),
                "background": "dark" if border_mean < 127.5 else "light"}
