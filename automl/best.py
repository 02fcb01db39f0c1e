"""Reload the best model of a study (never unpickling), describe it, evaluate it, predict with it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from automl.checkpoint import PREPROCESSING, CheckpointError, load_checkpoint
from automl.data import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS
from automl.errors import FatalError, UsageError
from automl.model import Normalised
from automl.serving import predict_frame, prepare_inputs, stderr_warning
from automl.tracking import BEST_DIR, BEST_TRIAL_TAG, DEFAULT_TRACKING_URI, Tracker

METADATA = "metadata.json"


@dataclass
class LoadedModel:
    """The best network (eval mode) with what the search recorded about it."""

    model: Normalised
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
    A missing or tampered file raises `CheckpointError` (a FatalError) naming it.

    >>> best = load_best("digits_mlp")
    >>> best.model(torch.zeros(1, 1, 8, 8)).argmax(1)
    """
    tracker = Tracker(tracking_uri)
    run = study_run(tracker, study, champion)
    with tracker.artifacts(run.info.run_id, BEST_DIR) as folder:
        model = load_checkpoint(folder, device)
        metadata = _read_json(folder, METADATA, run.info.run_id)
        preprocessing = _read_json(folder, PREPROCESSING, run.info.run_id)
    metadata["model_uri"] = run.data.tags.get("automl.best_model_uri")
    metadata["registered_version"] = run.data.tags.get("automl.registered_version")
    metadata["registered_model_uri"] = f"models:/{study}@champion"
    return LoadedModel(model, metadata, preprocessing)


def _read_json(folder: Path, name: str, run_id: str) -> dict[str, Any]:
    """One JSON object of a downloaded best-model folder, or a `CheckpointError` naming it."""
    where = f"{BEST_DIR}/{name} of MLflow run {run_id}"
    try:
        value = json.loads((folder / name).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{where}: file missing (the best model's record is incomplete)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{where}: unreadable JSON: {e}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    return value


def check_output_path(path: Path, flag: str) -> Path:
    """A file to be written: its folder must exist and it must not be a folder (UsageError)."""
    if path.is_dir():
        raise UsageError(f"{flag}: {path} is a folder; give a file name")
    folder = path.expanduser().resolve().parent
    if not folder.is_dir():
        raise UsageError(f"{flag}: folder {folder} does not exist")
    return path




def read_inputs(paths: list[Path], preprocessing: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """Network inputs from a `.npy` array, a CSV table (tabular studies) or image files (image
    studies), through `serving.prepare_inputs` (the served model's own input path): float32 of
    shape (N, *input_shape) in the units the network was trained on. Returns (inputs, row names)."""
    if len(paths) == 1 and paths[0].suffix == ".npy":
        raw, names = _read_npy(paths[0])
    elif len(paths) == 1 and paths[0].suffix == ".csv":
        raw, names = _read_csv(paths[0], preprocessing)
    elif all(p.suffix.lower() in IMAGE_EXTENSIONS for p in paths):
        raw, names = _read_images(paths, preprocessing)
    else:
        raise UsageError("INPUT: expected one .npy file, one .csv file, or image files "
                         f"({', '.join(sorted(IMAGE_EXTENSIONS))}), got {', '.join(map(str, paths))}")
    source = str(paths[0]) if len(paths) == 1 else f"{len(paths)} images"
    x = prepare_inputs(raw, preprocessing, names, stderr_warning, source).numpy()
    return x, names if len(names) == len(x) else [f"{source}[{i}]" for i in range(len(x))]


def _read_npy(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable .npy array: {str(e).splitlines()[0]}") from None
    if array.dtype.kind not in "biuf":
        raise UsageError(f"{path}: holds {array.dtype} values (text?); expected numbers")
    return array, [f"{path.name}[{i}]" for i in range(len(array))] if array.ndim else []


def _read_csv(path: Path, preprocessing: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    from automl.serving import frame_to_array

    if len(preprocessing["input_shape"]) != 1:
        raise UsageError(f"{path}: CSV input needs a tabular study; this one takes images")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise UsageError(f"{path}: malformed CSV: {str(e).strip().splitlines()[0]}") from None
    return frame_to_array(frame, preprocessing, str(path)), [f"{path.name}:{i + 2}" for i in range(len(frame))]


def _read_images(paths: list[Path], preprocessing: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """Images resized to the input shape, scaled from 0-255 to the training pixel range."""
    from PIL import Image, UnidentifiedImageError

    if len(preprocessing["input_shape"]) != 3:
        raise UsageError(f"{paths[0]}: image input needs an image study; this one takes table rows")
    channels, height, width = preprocessing["input_shape"]
    scale = float(preprocessing.get("pixel_max") or 255) / 255.0
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise UsageError(f"{path}: {image.width}x{image.height} pixels is over the "
                                     f"{MAX_IMAGE_PIXELS // 1_000_000}-megapixel limit for an input image")
                small = image.convert("L" if channels == 1 else "RGB").resize((width, height))
                array = np.asarray(small, dtype=np.float32)
        except Image.DecompressionBombError:
            raise UsageError(f"{path}: over the {MAX_IMAGE_PIXELS // 1_000_000}-megapixel limit "
                             "for an input image") from None
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise UsageError(f"{path}: not a readable image: {str(e).splitlines()[0]}") from None
        array = array[None] if channels == 1 else array.transpose(2, 0, 1)
        images.append(array * scale)
    return np.stack(images), [p.name for p in paths]


def predict_table(loaded: LoadedModel, x: np.ndarray | pd.DataFrame, names: list[str] | None = None) -> pd.DataFrame:
    """Predictions per input row: `input`, `prediction` (the class, or the value) and, for
    classes, `p_<class>` probabilities. `x` goes through `serving.prepare_inputs` (any reasonable
    shape and dtype; 0-255 or inverted images converted with a warning on stderr)."""
    inputs = prepare_inputs(x, loaded.preprocessing, names, stderr_warning)
    table = predict_frame(loaded.model, inputs, loaded.preprocessing)
    table.insert(0, "input", list(names) if names is not None and len(names) == len(table)
                 else [f"row {i}" for i in range(len(table))])
    return table
