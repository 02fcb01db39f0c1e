"""Networks built from a `ModelConfig` alone (torch only; no Optuna, no MLflow).

A network takes raw inputs (uint8 or float pixels, encoded tabular features) and normalises them
itself with the training statistics held as buffers, so the saved weights are all that is needed
to predict. Regression outputs come back in target units. A user network (`config.builder`) is
wrapped the same way: `UserNetwork` standardises, calls the user's module (`.net`) and rescales.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from automl import registries
from automl.builder import call_builder, resolve_builder
from automl.config import ModelConfig

ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    name: registries.resolve(path) for name, path in registries.ACTIVATIONS.items()
}


class Standardize(nn.Module):
    """(x - mean) / std with per-channel (images) or per-feature statistics held as buffers."""

    def __init__(self, input_shape: Sequence[int]) -> None:
        super().__init__()
        shape = (1, input_shape[0], 1, 1) if len(input_shape) == 3 else (1, *input_shape)
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.mean.dtype) - self.mean) / self.std


class Normalised(nn.Module):
    """Base of every network here: input standardisation and regression rescaling as buffers."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.normalize = Standardize(config.input_shape)
        self.regression = config.task == "regression"
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """The network proper, on standardised inputs."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(self.normalize(x))
        if self.regression:
            return out.squeeze(-1) * self.target_std + self.target_mean
        return out

    @torch.no_grad()
    def set_statistics(
        self, input_mean: Sequence[float], input_std: Sequence[float],
        target_mean: float = 0.0, target_std: float = 1.0,
    ) -> None:
        """Copy the training split's statistics into the buffers."""
        shape = self.normalize.mean.shape
        self.normalize.mean.copy_(torch.tensor(input_mean, dtype=torch.float32).reshape(shape))
        self.normalize.std.copy_(torch.tensor(input_std, dtype=torch.float32).reshape(shape))
        self.target_mean.fill_(target_mean)
        self.target_std.fill_(target_std)


class Network(Normalised):
    """Input normalisation -> optional conv blocks -> dense head -> outputs."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.features, flat_size = _conv_blocks(config)
        self.head = _dense_head(config, flat_size)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class UserNetwork(Normalised):
    """A user's module (`net`) behind the same normalisation; its state_dict keys start `net.`."""

    def __init__(self, config: ModelConfig, net: nn.Module) -> None:
        super().__init__(config)
        self.net = net

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_blocks(config: ModelConfig) -> tuple[nn.Module, int]:
    """Conv -> [BatchNorm] -> activation -> 2x2 max-pool per block; returns the flattened size."""
    if config.family != "cnn":
        size = 1
        for dim in config.input_shape:
            size *= dim
        return nn.Identity(), size
    channels, height, width = config.input_shape
    layers: list[nn.Module] = []
    for out_channels in config.channels:
        layers.append(nn.Conv2d(channels, out_channels, config.kernel_size,
                                padding=config.kernel_size // 2, bias=not config.batch_norm))
        if config.batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(ACTIVATION_MODULES[config.activation]())
        if min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = out_channels
    return nn.Sequential(*layers), channels * height * width


def _dense_head(config: ModelConfig, in_features: int) -> nn.Sequential:
    """Flatten -> (Linear -> [BatchNorm] -> activation -> [Dropout]) per width -> Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in config.widths:
        layers.append(nn.Linear(in_features, width, bias=not config.batch_norm))
        if config.batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(ACTIVATION_MODULES[config.activation]())
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        in_features = width
    layers.append(nn.Linear(in_features, config.n_outputs))
    return nn.Sequential(*layers)


def build_model(config: ModelConfig, search_dirs: Iterable[str | Path] = ()) -> Normalised:
    """A freshly initialised network for `config` (seed torch first for reproducible weights).

    A user network is imported from `config.builder` (a file missing at its recorded absolute path
    is looked for by name in `search_dirs`, e.g. a checkpoint folder) and called with
    `config.builder_params`; errors are `automl.builder.BuilderError`."""
    if config.builder is None:
        return Network(config)
    builder = resolve_builder(config.builder, search_dirs=search_dirs)
    net = call_builder(config.builder, builder, config.builder_params, config.input_shape, config.n_outputs)
    return UserNetwork(config, net)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
