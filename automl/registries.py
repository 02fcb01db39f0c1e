"""One source of truth per list: datasets, metrics, optimizers, losses, activations, schedules,
samplers, pruners and model families.

The schema (`automl.space`), the configs (`automl.config`), the network builders and the CLI's
`choices` all read these tables. This module imports nothing heavy: classes from torch and optuna
are named by import path and resolved on use with `resolve`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class DatasetInfo:
    """A data source: its task (None: given in `data.task`), its kind and the keys it takes."""

    task: str | None
    kind: str  # "image" (may use the cnn family and augmentation), "tabular" or "array" (either)
    keys: tuple[str, ...] = ()  # data.* keys besides dataset, fractions and augment
    required: tuple[str, ...] = ()  # of `keys`, those without a default
    default_task: str | None = None  # when `task` is among `keys` but optional


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("classification", "image"),
    "mnist": DatasetInfo("classification", "image"),
    "fashion_mnist": DatasetInfo("classification", "image"),
    "kmnist": DatasetInfo("classification", "image"),
    "cifar10": DatasetInfo("classification", "image"),
    "breast_cancer": DatasetInfo("classification", "tabular"),
    "wine": DatasetInfo("classification", "tabular"),
    "csv": DatasetInfo(None, "tabular", ("path", "target", "task"), ("task", "path", "target")),
    "parquet": DatasetInfo(None, "tabular", ("path", "target", "task"), ("task", "path", "target")),
    "image_folder": DatasetInfo("classification", "image", ("path", "image_size", "color"), ("path",)),
    "npz": DatasetInfo(None, "array", ("path", "task"), ("path",), default_task="classification"),
    "arrays": DatasetInfo(None, "array", ("task",), ("task",)),
}
COLORS = ("grey", "rgb")

# metric -> direction, per task; the first one is the default objective
METRICS: dict[str, dict[str, str]] = {
    "classification": {"val_accuracy": "maximize", "val_loss": "minimize"},
    "regression": {"val_rmse": "minimize", "val_mae": "minimize", "val_r2": "maximize", "val_loss": "minimize"},
}


# costs of a network, measured once it is built (before it trains): the further objectives of a
# multi-objective search (`objective.metrics`), all minimised
COST_METRICS: dict[str, str] = {"n_parameters": "minimize", "latency_ms": "minimize"}


def improves(value: float, than: float, direction: str) -> bool:
    """Whether `value` is strictly better than `than` for a metric to `direction` (maximize/minimize)."""
    return value > than if direction == "maximize" else value < than


@dataclass(frozen=True)
class OptionInfo:
    """An optimizer or loss setting: its default and the kind of values it takes."""

    default: Any
    kind: str  # "fraction" [0, 1), "positive" (> 0) or "bool"
    field: str = ""  # the TrainConfig field (and trial parameter) when not the YAML key


def _same(options: dict[str, Any]) -> dict[str, Any]:
    return dict(options)


def _betas(options: dict[str, Any]) -> dict[str, Any]:
    return {"betas": (options["beta1"], options["beta2"])}


@dataclass(frozen=True)
class OptimizerInfo:
    """A torch optimizer: its class, its own options and how they become the class's keywords."""

    cls: str
    options: dict[str, OptionInfo] = field(default_factory=dict)
    torch_kwargs: Callable[[dict[str, Any]], dict[str, Any]] = _same


_MOMENTUM, _BETA1, _BETA2 = OptionInfo(0.9, "fraction"), OptionInfo(0.9, "fraction"), OptionInfo(0.999, "fraction")
OPTIMIZERS: dict[str, OptimizerInfo] = {
    "sgd": OptimizerInfo("torch.optim.SGD", {"momentum": _MOMENTUM, "nesterov": OptionInfo(False, "bool")}),
    "adam": OptimizerInfo("torch.optim.Adam", {"beta1": _BETA1, "beta2": _BETA2}, _betas),
    "adamw": OptimizerInfo("torch.optim.AdamW", {"beta1": _BETA1, "beta2": _BETA2}, _betas),
    # rmsprop's momentum defaults to torch's 0, not 0.9
    "rmsprop": OptimizerInfo("torch.optim.RMSprop", {"momentum": OptionInfo(0.0, "fraction"),
                                                      "alpha": OptionInfo(0.99, "fraction")}),
}


@dataclass(frozen=True)
class LossInfo:
    """A loss: the tasks it serves and its own option (YAML key -> OptionInfo), if any."""

    tasks: tuple[str, ...]
    options: dict[str, OptionInfo] = field(default_factory=dict)


LOSSES: dict[str, LossInfo] = {
    "cross_entropy": LossInfo(("classification",)),
    "label_smoothing": LossInfo(("classification",), {"label_smoothing": OptionInfo(0.1, "fraction")}),
    "mse": LossInfo(("classification", "regression")),  # classes: squared error on one-hot targets
    "l1": LossInfo(("regression",)),
    "huber": LossInfo(("regression",), {"huber": OptionInfo(1.0, "positive", field="huber_delta")}),
}


def losses_for(task: str) -> tuple[str, ...]:
    """The losses of one task, its default first."""
    return tuple(name for name, info in LOSSES.items() if task in info.tasks)


DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse"}

ACTIVATIONS: dict[str, str] = {
    "relu": "torch.nn.ReLU",
    "gelu": "torch.nn.GELU",
    "silu": "torch.nn.SiLU",
    "tanh": "torch.nn.Tanh",
    "leaky_relu": "torch.nn.LeakyReLU",
    "elu": "torch.nn.ELU",
}
SCHEDULES = ("none", "cosine", "step", "one_cycle")

# model family -> the dataset kinds it accepts; a user network ("builder") takes any
FAMILIES: dict[str, tuple[str, ...]] = {"mlp": ("image", "tabular", "array"), "cnn": ("image", "array")}
BUILDER_FAMILY = "builder"  # ModelConfig.family of a user network


@dataclass(frozen=True)
class AlgorithmInfo:
    """An Optuna sampler or pruner class by import path; `seeded` ones take `seed=`."""

    cls: str
    seeded: bool = False
    default_options: dict[str, Any] = field(default_factory=dict)  # when the YAML section is absent


SAMPLERS: dict[str, AlgorithmInfo] = {
    "tpe": AlgorithmInfo("optuna.samplers.TPESampler", seeded=True),
    "random": AlgorithmInfo("optuna.samplers.RandomSampler", seeded=True),
    "qmc": AlgorithmInfo("optuna.samplers.QMCSampler", seeded=True),
    "gp": AlgorithmInfo("optuna.samplers.GPSampler", seeded=True),
}
PRUNERS: dict[str, AlgorithmInfo] = {
    "median": AlgorithmInfo("optuna.pruners.MedianPruner", default_options={"n_warmup_steps": 2}),
    "percentile": AlgorithmInfo("optuna.pruners.PercentilePruner"),
    "successive_halving": AlgorithmInfo("optuna.pruners.SuccessiveHalvingPruner"),
    "hyperband": AlgorithmInfo("optuna.pruners.HyperbandPruner"),
    "none": AlgorithmInfo("optuna.pruners.NopPruner"),
}
DEFAULT_SAMPLER, DEFAULT_PRUNER = "tpe", "median"


def resolve(path: str) -> Any:
    """The object named by a dotted import path such as `torch.optim.SGD`."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)
