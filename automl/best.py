"""Reload the best model of a study (never unpickling), describe it, evaluate it, predict with it."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from automl.checkpoint import PREPROCESSING, CheckpointError, load_checkpoint
from automl.errors import FatalError, UsageError
from automl.model import Network
from automl.tracking import BEST_DIR, BEST_TRIAL_TAG, DEFAULT_TRACKING_URI, Tracker


@dataclass
class LoadedModel:
    """The best network (eval mode) with what the search recorded about it."""

    model: Network
    metadata: dict[str, Any]  # study, trial, metric, value, params, test_* scores, run ids
    preprocessing: dict[str, Any]  # statistics, class names, feature encoding


def study_run(tracker: Tracker, study: str) -> Any:
    """The newest parent run of `study` that holds a best model."""
    runs = tracker.study_runs(study)
    if not runs:
        raise UsageError(f"no MLflow runs for study {study!r} at {tracker.uri}")
    for run in runs:
        if BEST_TRIAL_TAG in run.data.tags:
            return run
    raise FatalError(f"study {study!r} has no best model yet (no trial completed)")


def load_best(
    study: str, tracking_uri: str = DEFAULT_TRACKING_URI, device: str | torch.device = "cpu"
) -> LoadedModel:
    """The study's best network rebuilt from its JSON config and safetensors weights.

    >>> best = load_best("digits_mlp")
    >>> best.model(torch.zeros(1, 1, 8, 8)).argmax(1)
    """
    tracker = Tracker(tracking_uri)
    run = study_run(tracker, study)
    with tempfile.TemporaryDirectory() as tmp:
        folder = tracker.download(run.info.run_id, BEST_DIR, Path(tmp))
        try:
            model = load_checkpoint(folder, device)
        except CheckpointError as e:
            raise FatalError(str(e)) from None
        metadata = json.loads((folder / "metadata.json").read_text())
        preprocessing = json.loads((folder / PREPROCESSING).read_text())
    metadata["model_uri"] = run.data.tags.get("automl.best_model_uri")
    metadata["registered_version"] = run.data.tags.get("automl.registered_version")
    metadata["registered_model_uri"] = f"models:/{study}@champion"
    return LoadedModel(model, metadata, preprocessing)
