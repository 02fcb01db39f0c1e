"""`suggest`: one trial's parameters from a space -> plain `ModelConfig` and `TrainConfig`."""

from __future__ import annotations

from typing import Any

import optuna

from automl import registries as reg
from automl.builder import BuilderError, check_builder
from automl.config import ModelConfig, TrainConfig
from automl.space.core import Space
from automl.space.problems import space_error


def _model_config(
    trial: optuna.trial.BaseTrial, space: Space, input_shape: tuple[int, ...], n_outputs: int
) -> ModelConfig:
    """The network: a user builder's params under their own names, or a family's architecture
    (per-layer widths and channels only for the layers that exist)."""
    shapes = {"input_shape": tuple(input_shape), "n_outputs": n_outputs, "task": space.task}
    if space.builder is not None:
        params = {name: p.sample(trial, name) for name, p in space.builder_params.items()}
        return ModelConfig(family=reg.BUILDER_FAMILY, builder=space.builder, builder_params=params, **shapes)
    m = space.model
    depth = m["depth"].sample(trial, "depth")
    widths = tuple(m["width"].sample(trial, f"width_{i}") for i in range(depth))
    channels: tuple[int, ...] = ()
    kernel_size = 3
    if space.family == "cnn":
        blocks = m["blocks"].sample(trial, "blocks")
        channels = tuple(m["channels"].sample(trial, f"channels_{i}") for i in range(blocks))
        kernel_size = m["kernel_size"].sample(trial, "kernel_size")
    return ModelConfig(
        family=space.family, widths=widths, channels=channels, kernel_size=kernel_size,
        activation=m["activation"].sample(trial, "activation"),
        dropout=m["dropout"].sample(trial, "dropout"),
        batch_norm=m["batch_norm"].sample(trial, "batch_norm"),
        **shapes,
    )


def suggest(
    trial: optuna.trial.BaseTrial,
    space: Space,
    input_shape: tuple[int, ...],
    n_outputs: int,
    seed: int = 0,
) -> tuple[ModelConfig, TrainConfig]:
    """Sample one trial's configs. A loss's or optimizer's own settings are sampled only when it is chosen."""
    model = _model_config(trial, space, input_shape, n_outputs)
    loss = space.loss.sample(trial, "loss")
    extra: dict[str, Any] = {}
    for key, option in reg.LOSSES[loss].options.items():
        name = option.field or key
        extra[name] = space.loss_options[key].sample(trial, name)
    optimizer = space.optimizer.sample(trial, "optimizer")
    for key, param in space.optimizer_options[optimizer].items():
        extra[key] = param.sample(trial, f"{optimizer}.{key}")
    if optimizer == "sgd" and extra.get("nesterov") and extra.get("momentum", 0) == 0:
        extra["nesterov"] = False  # torch requires momentum > 0 for Nesterov
    train = TrainConfig(
        epochs=space.epochs,
        batch_size=space.training["batch_size"].sample(trial, "batch_size"),
        loss=loss,
        optimizer=optimizer,
        lr=space.optimizer_common["lr"].sample(trial, "lr"),
        weight_decay=space.optimizer_common["weight_decay"].sample(trial, "weight_decay"),
        schedule=space.training["schedule"].sample(trial, "schedule"),
        seed=seed,
        **space.flags,
        **extra,
    )
    return model, train


def check_space_builder(space: Space, input_shape: tuple[int, ...], n_outputs: int, seed: int = 0) -> None:
    """Before a search: build one sampled configuration of the space's user network and run a batch
    of two through it (no-op for built-in families). Problems are `SpaceError`s naming model.builder."""
    if space.builder is None:
        return
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    model, _ = suggest(trial, space, input_shape, n_outputs, seed)
    try:
        check_builder(model.builder or "", model.builder_params, input_shape, n_outputs)
    except BuilderError as e:
        raise space_error(space.source, ("model", "builder"), str(e)) from None
