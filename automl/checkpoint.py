"""A trained network on disk without pickle: safetensors weights plus JSON configs (torch only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from automl.config import ModelConfig, TrainConfig
from automl.errors import AutomlError
from automl.model import Network, build_model

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
TRAIN_CONFIG = "train_config.json"
PREPROCESSING = "preprocessing.json"


class CheckpointError(AutomlError):
    """A saved model cannot be loaded (missing, tampered, or weights that do not fit the config)."""


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


def load_checkpoint(folder: Path, device: torch.device | str = "cpu") -> Network:
    """Rebuild the network from its config and load its weights strictly; eval mode. Never unpickles."""
    try:
        config = ModelConfig.from_json((folder / MODEL_CONFIG).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {MODEL_CONFIG}") from None
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{folder / MODEL_CONFIG}: invalid model config: {e}") from None
    model = build_model(config)
    try:
        state = load_file(str(folder / WEIGHTS))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {WEIGHTS}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{folder / WEIGHTS}: unreadable weights (corrupt or tampered): {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{folder}: weights do not match {MODEL_CONFIG}: {detail}") from None
    return model.to(device).eval()
