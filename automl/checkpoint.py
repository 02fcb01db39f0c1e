"""A trained network on disk without pickle: safetensors weights plus JSON configs (torch only).

Reloading checks the config against the safetensors header (tensor names and shapes, read
without loading any weights) before building anything, so a tampered config cannot make it
allocate more than the weights file holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from automl.config import ModelConfig, TrainConfig
from automl.errors import FatalError
from automl.model import Normalised, build_model

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
TRAIN_CONFIG = "train_config.json"
PREPROCESSING = "preprocessing.json"
MAX_DIM = 1 << 20  # largest width, channel count, feature count or class count a config may name
SIZE_FIELDS = ("input_shape", "widths", "channels")


class CheckpointError(FatalError):
    """A saved model cannot be loaded (missing, tampered, or weights that do not fit the config);
    a FatalError, so the CLI exits with 1."""


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    model_config: ModelConfig,
    train_config: TrainConfig | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> Path:
    """Write the weights (safetensors) and configs (JSON) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt", "family": model_config.family})
    (folder / MODEL_CONFIG).write_text(model_config.to_json())
    if train_config is not None:
        (folder / TRAIN_CONFIG).write_text(train_config.to_json())
    if preprocessing is not None:
        (folder / PREPROCESSING).write_text(json.dumps(preprocessing, indent=2))
    return folder


def load_checkpoint(folder: Path, device: torch.device | str = "cpu", code_dir: Path | None = None) -> Normalised:
    """Rebuild the network from its config and load its weights strictly; eval mode. Never unpickles.

    The config is checked first against the weights file's header. A user builder's file missing
    at its recorded path is looked for in `folder`, then `code_dir` (an MLflow model's `code/`)."""
    config = read_model_config(folder)
    header = weight_shapes(folder / WEIGHTS)
    search_dirs = [folder] + ([code_dir] if code_dir is not None else [])
    checked = check_against_weights(config, header, folder, search_dirs)
    try:
        model = build_model(config, search_dirs=search_dirs)
    except Exception as e:  # a user builder's own error (BuilderError, or raised by its code)
        raise CheckpointError(f"{folder / MODEL_CONFIG}: cannot build the network: {_first_line(e)}") from None
    if not checked:  # a user network that cannot be built on the meta device: check it now
        _compare({k: tuple(v.shape) for k, v in model.state_dict().items()}, header, folder)
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{folder / WEIGHTS}: unreadable weights (corrupt or tampered): {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{folder}: weights do not match {MODEL_CONFIG}: {detail}") from None
    return model.to(device).eval()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_model_config(folder: Path) -> ModelConfig:
    """The checked `ModelConfig` of a checkpoint folder (sizes are positive integers)."""
    path = folder / MODEL_CONFIG
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {MODEL_CONFIG}") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable model config: {e}") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: invalid model config: expected a JSON object")
    for name in (*SIZE_FIELDS, "n_outputs", "kernel_size"):
        value = values.get(name, [] if name in SIZE_FIELDS else 1)
        items = value if name in SIZE_FIELDS and isinstance(value, list) else [value]
        if name in SIZE_FIELDS and not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_DIM for v in items):
            raise CheckpointError(f"{path}: invalid model config: {name} must be "
                                  f"{'a list of ' if name in SIZE_FIELDS else ''}integers in 1..{MAX_DIM}, "
                                  f"got {json.dumps(value)[:80]}")
    try:
        config = ModelConfig.from_dict(values)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid model config: {e}") from None
    return config


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, without reading the weights."""
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {path.name}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable weights (corrupt or tampered): {e}") from None


def check_against_weights(
    config: ModelConfig, header: dict[str, tuple[int, ...]], folder: Path, search_dirs: list[Path] | None = None,
) -> bool:
    """The network `config` describes, built on the meta device (no memory), must hold exactly the
    tensors of the weights file, shape for shape. False where a user network cannot be built there."""
    try:
        with torch.device("meta"):
            model = build_model(config, search_dirs=search_dirs or [folder])
    except Exception as e:  # a config the network code refuses, or a user builder's error
        if config.builder is not None:
            return False
        raise CheckpointError(f"{folder / MODEL_CONFIG}: invalid model config: {_first_line(e)}") from None
    _compare({k: tuple(v.shape) for k, v in model.state_dict().items()}, header, folder)
    return True


def _compare(expected: dict[str, tuple[int, ...]], header: dict[str, tuple[int, ...]], folder: Path) -> None:
    """Same tensor names and shapes, or a one-line `CheckpointError` naming the first differences."""
    problems = [f"{k} missing from {WEIGHTS}" for k in expected if k not in header]
    problems += [f"unexpected {k} in {WEIGHTS}" for k in header if k not in expected]
    problems += [f"{k} is {list(header[k])} in {WEIGHTS} but {list(shape)} in {MODEL_CONFIG}"
                 for k, shape in expected.items() if k in header and header[k] != shape]
    if problems:
        more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
        raise CheckpointError(f"{folder}: weights do not match {MODEL_CONFIG}: {'; '.join(problems[:2])}{more}")
