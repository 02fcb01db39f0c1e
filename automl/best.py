"""Reload the best model of a study (never unpickling), describe it, evaluate it, predict with it."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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


def study_run(tracker: Tracker, study: str, champion: bool = False) -> Any:
    """The newest parent run of `study` that holds a best model; with `champion`, the run whose
    model holds the registry's champion alias (when there is one)."""
    runs = tracker.study_runs(study)
    if not runs:
        raise UsageError(f"no MLflow runs for study {study!r} at {tracker.uri}")
    if champion:
        version = tracker.champion(study)
        chosen = [r for r in runs if version is not None and r.info.run_id == version.tags.get("study_run_id")]
        if chosen:
            return chosen[0]
    for run in runs:
        if BEST_TRIAL_TAG in run.data.tags:
            return run
    raise FatalError(f"study {study!r} has no best model yet (no trial completed)")


def load_best(
    study: str, tracking_uri: str = DEFAULT_TRACKING_URI, device: str | torch.device = "cpu",
    champion: bool = True,
) -> LoadedModel:
    """The study's best network rebuilt from its JSON config and safetensors weights.

    By default the registered champion of that name (the best on the test split of every search
    run under the study name); `champion=False` takes the newest search run's best instead.

    >>> best = load_best("digits_mlp")
    >>> best.model(torch.zeros(1, 1, 8, 8)).argmax(1)
    """
    tracker = Tracker(tracking_uri)
    run = study_run(tracker, study, champion)
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


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def read_inputs(paths: list[Path], preprocessing: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """Network inputs from a `.npy` array, a CSV table (tabular studies) or image files (image
    studies), as float32 in the raw units the network was trained on. Returns (inputs, row names)."""
    shape = tuple(preprocessing["input_shape"])
    if len(paths) == 1 and paths[0].suffix == ".npy":
        return _read_npy(paths[0], shape)
    if len(paths) == 1 and paths[0].suffix == ".csv":
        return _read_csv(paths[0], preprocessing)
    if all(p.suffix.lower() in IMAGE_SUFFIXES for p in paths):
        return _read_images(paths, preprocessing)
    raise UsageError("INPUT: expected one .npy file, one .csv file, or image files "
                     f"({', '.join(sorted(IMAGE_SUFFIXES))}), got {', '.join(map(str, paths))}")


def _read_npy(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable .npy array: {e}") from None
    if array.shape == shape:
        array = array[None]
    if array.shape[1:] != shape:
        raise UsageError(f"{path}: expected an array of shape (N, {', '.join(map(str, shape))}), got {array.shape}")
    return array.astype(np.float32), [f"{path.name}[{i}]" for i in range(len(array))]


def _read_csv(path: Path, preprocessing: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    from automl.data import DataError, encode_frame

    if len(preprocessing["input_shape"]) != 1:
        raise UsageError(f"{path}: CSV input needs a tabular study; this one takes images")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise UsageError(f"{path}: malformed CSV: {str(e).strip().splitlines()[0]}") from None
    try:
        if preprocessing.get("encoding"):
            x = encode_frame(frame, preprocessing["encoding"])
        else:
            missing = [c for c in preprocessing["features"] if c not in frame.columns]
            if missing:
                raise DataError(f"missing column(s): {', '.join(missing)}")
            x = frame[preprocessing["features"]].to_numpy(dtype=np.float32)
    except DataError as e:
        raise UsageError(f"{path}: {e}") from None
    return x.astype(np.float32), [f"{path.name}:{i + 2}" for i in range(len(frame))]


def _read_images(paths: list[Path], preprocessing: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    channels, height, width = preprocessing["input_shape"]
    scale = float(preprocessing.get("pixel_max") or 255) / 255.0
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB").resize((width, height))
                array = np.asarray(image, dtype=np.float32)
        except (OSError, UnidentifiedImageError) as e:
            raise UsageError(f"{path}: not a readable image: {e}") from None
        array = array[None] if channels == 1 else array.transpose(2, 0, 1)
        images.append(array * scale)
    return np.stack(images), [p.name for p in paths]


@torch.no_grad()
def predict_table(loaded: LoadedModel, x: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Predictions: the class and its probabilities (classification) or the value (regression)."""
    model = loaded.model
    device = next(model.parameters()).device
    out = model(torch.from_numpy(x).to(device)).float().cpu()
    table = pd.DataFrame({"input": names})
    classes = loaded.preprocessing.get("class_names") or []
    if classes:
        probabilities = torch.softmax(out, dim=1).numpy()
        table["prediction"] = [classes[i] for i in probabilities.argmax(axis=1)]
        for i, name in enumerate(classes):
            table[f"p_{name}"] = probabilities[:, i]
    else:
        table["prediction"] = out.numpy()
    return table
