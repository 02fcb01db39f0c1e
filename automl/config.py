"""Plain, frozen, JSON-serialisable configurations of one trial: the network and its training.

Nothing here knows Optuna or MLflow: a config is all that is needed to rebuild a network
(with its weights) or to re-run a training.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Self

from automl import registries

TASKS = registries.TASKS
FAMILIES = tuple(registries.FAMILIES)
ACTIVATIONS = tuple(registries.ACTIVATIONS)
OPTIMIZERS = tuple(registries.OPTIMIZERS)
CLASSIFICATION_LOSSES = registries.losses_for("classification")
REGRESSION_LOSSES = registries.losses_for("regression")
SCHEDULES = registries.SCHEDULES


class _JsonConfig:
    """JSON round-trip for the frozen dataclasses below (tuples survive as tuples)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**converted)

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class ModelConfig(_JsonConfig):
    """Every architecture choice of one network; `model.build_model` rebuilds it from this alone."""

    family: str  # "mlp", "cnn", or "builder" (a user network: see `builder`)
    input_shape: tuple[int, ...]  # one sample: (features,) or (channels, height, width)
    n_outputs: int  # classes, or 1 for regression
    task: str = "classification"
    widths: tuple[int, ...] = ()  # hidden dense layers (after the conv blocks for a CNN)
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False
    channels: tuple[int, ...] = ()  # one conv block per entry (CNN only)
    kernel_size: int = 3
    # a user network: its import path ("/abs/path/nets.py:Name" or "package.module:Name") and the
    # keyword arguments it was built with (JSON values)
    builder: str | None = None
    builder_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.builder is not None or self.family == registries.BUILDER_FAMILY:
            if self.family != registries.BUILDER_FAMILY or not self.builder:
                raise ValueError(f"a user network needs family={registries.BUILDER_FAMILY!r} and a builder")
        elif self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.family == "cnn" and (len(self.input_shape) != 3 or not self.channels):
            raise ValueError("a CNN needs an image input (C, H, W) and at least one conv block")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig(_JsonConfig):
    """How one network is trained: loss, optimizer and their settings, batch size, epochs, seed."""

    epochs: int
    batch_size: int = 128
    loss: str = "cross_entropy"
    label_smoothing: float = 0.0
    huber_delta: float = 1.0
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd, rmsprop
    nesterov: bool = False  # sgd
    beta1: float = 0.9  # adam, adamw
    beta2: float = 0.999  # adam, adamw
    alpha: float = 0.99  # rmsprop
    schedule: str = "none"
    seed: int = 0
    augment: bool = False  # random crop + flip on the device (images only)
    amp: bool = True  # bf16 autocast where the device supports it (CUDA)
    compile: bool = False  # torch.compile the network

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.loss not in CLASSIFICATION_LOSSES + REGRESSION_LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")

    def optimizer_options(self) -> dict[str, Any]:
        """The chosen optimizer's own settings (registry names), e.g. {"momentum": 0.9, "nesterov": False}."""
        return {name: getattr(self, name) for name in registries.OPTIMIZERS[self.optimizer].options}
