"""The model as MLflow serves it, and the one input path that `automl predict` shares with it.

`prepare_inputs` turns an array of any reasonable shape and dtype, or a DataFrame, into the
network's input tensor (pixel range and polarity matched to the training data, non-finite rows
refused); `predict_frame` turns the network's outputs into `prediction` (the class name, or the
regression value) and `p_<class>` probabilities per row.

`log_served_model` logs ONE MLflow model with two flavors: `pytorch` (pt2; pickle plus the
builder's code when torch.export cannot trace the network) for `mlflow.pytorch.load_model`, and
`python_function` = this module, which rebuilds the network from safetensors + JSON (never
unpickles) and answers what `automl predict` answers; so `mlflow models serve` does too.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from automl.checkpoint import PREPROCESSING, CheckpointError, load_checkpoint
from automl.errors import FatalError, UsageError

MODEL_DIR = "automl"  # inside the MLflow model: the checkpoint folder (safetensors + JSON)
FORMAT_KEY = "automl.model_format"  # MLmodel metadata / run and LoggedModel tag: "pt2" or "pickle"
BATCH = 4096  # rows per forward pass
SHOWN_ROWS = 5  # bad rows named in a message

_logger = logging.getLogger(__name__)


class ModelNotSaved(FatalError):
    """The best network can be neither exported (pt2) nor pickled (exit code 1)."""


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


class InputError(UsageError):
    """Inputs the network cannot take (exit code 2; HTTP 400 when served)."""


def stderr_warning(message: str) -> None:
    """One warning line on stderr."""
    print(f"automl: warning: {message}", file=sys.stderr)


# --- inputs -------------------------------------------------------------------------------------


def prepare_inputs(
    data: Any, preprocessing: dict[str, Any], names: Sequence[str] | None = None,
    warn: Callable[[str], None] | None = stderr_warning, source: str = "inputs",
) -> torch.Tensor:
    """The network's float32 input batch (N, *input_shape) from an array, tensor, nested list or
    DataFrame: flat, channel-less or channel-last images are reshaped, 0-255 or 0-1 pixels are
    rescaled and inverted images flipped to the training data's range and background (with one
    `warn` line saying so). Idempotent. Raises `InputError` naming `source` (and rows by `names`)."""
    shape = tuple(int(d) for d in preprocessing["input_shape"])
    if isinstance(data, pd.DataFrame):
        array = frame_to_array(data, preprocessing, source)
    else:
        array = _to_array(data, source)
    array = _reshape(array, shape, source).astype(np.float32)
    _check_finite(array, names, source)
    if len(shape) == 3:
        array, notes = match_pixels(array, preprocessing)
        if notes and warn is not None:
            warn(f"{source}: " + "; ".join(notes))
    return torch.from_numpy(np.ascontiguousarray(array))


def _to_array(data: Any, source: str) -> np.ndarray:
    """A numeric numpy array (text, ragged or object data refused)."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    if isinstance(data, dict):
        if len(data) != 1:
            raise InputError(f"{source}: expected one array, got named inputs {', '.join(map(str, data))}")
        data = next(iter(data.values()))
    try:
        array = np.asarray(data)
        if array.dtype.kind == "O":
            array = array.astype(np.float64)
    except (ValueError, TypeError) as e:
        raise InputError(f"{source}: not a numeric array: {str(e).splitlines()[0]}") from None
    if array.dtype.kind not in "biuf":
        raise InputError(f"{source}: holds {array.dtype} values (text?); expected numbers")
    return array


def frame_to_array(frame: pd.DataFrame, preprocessing: dict[str, Any], source: str = "inputs") -> np.ndarray:
    """Tabular rows by column name (raw columns through the fitted encoding, or the encoded
    feature names); unnamed columns, or a single column of arrays, are taken as they stand."""
    from automl.data import DataError, encode_frame

    frame = frame.rename(columns=str)
    encoding, features = preprocessing.get("encoding") or {}, preprocessing.get("features") or []
    named = not all(c.isdigit() for c in frame.columns)
    if named and (encoding or features):
        if features and set(features) <= set(frame.columns):
            return _to_array(frame[features].to_numpy(), source)
        if not encoding:
            missing = [c for c in features if c not in frame.columns]
            raise InputError(f"{source}: missing column(s): {', '.join(missing)}")
        try:
            return encode_frame(frame, encoding)
        except DataError as e:
            raise InputError(f"{source}: {e}") from None
    if len(frame.columns) == 1 and len(frame) and isinstance(frame.iloc[0, 0], (list, np.ndarray)):
        return _to_array([np.asarray(v) for v in frame.iloc[:, 0]], source)
    return _to_array(frame.to_numpy(), source)


def _reshape(array: np.ndarray, shape: tuple[int, ...], source: str) -> np.ndarray:
    """(N, *shape) from one sample, a flat batch, (N, H, W) for one channel, or channel-last."""
    size = math.prod(shape)
    out: np.ndarray | None = None
    if array.shape == shape or (array.ndim == 1 and array.size == size):
        out = array.reshape(1, *shape)
    elif array.ndim >= 1 and array.shape[1:] == shape:
        out = array
    elif array.ndim == 2 and array.shape[1] == size:
        out = array.reshape(len(array), *shape)
    elif len(shape) == 3:
        c, h, w = shape
        if array.shape in ((h, w), (h, w, c)):
            array = array[None]
        if c == 1 and array.ndim == 3 and array.shape[1:] == (h, w):
            out = array[:, None]
        elif array.ndim == 4 and array.shape[1:] == (h, w, c):
            out = array.transpose(0, 3, 1, 2)
    if out is None:
        accepted = [f"(N, {size})"] + ([f"(N, {shape[1]}, {shape[2]})"] if len(shape) == 3 and shape[0] == 1 else [])
        raise InputError(f"{source}: expected an array of shape (N, {', '.join(map(str, shape))}), "
                         f"got {array.shape} (also accepted: {', '.join(accepted)})")
    if len(out) == 0:
        raise InputError(f"{source}: no rows to predict")
    return out


def _check_finite(array: np.ndarray, names: Sequence[str] | None, source: str) -> None:
    """Refuse NaN and infinite values, naming the rows."""
    bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
    if len(bad):
        shown = [names[i] if names is not None and i < len(names) else f"row {i}" for i in bad[:SHOWN_ROWS]]
        more = f" and {len(bad) - SHOWN_ROWS} more" if len(bad) > SHOWN_ROWS else ""
        raise InputError(f"{source}: NaN or infinite values in {', '.join(shown)}{more}")


def match_pixels(x: np.ndarray, preprocessing: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """Images rescaled to the training pixel range (0-255 or 0-1 inputs) and inverted where their
    background is the opposite of the training data's; returns the images and what was done."""
    top = float(preprocessing.get("pixel_max") or 255.0)
    x, notes = x.astype(np.float32, copy=True), []
    low, high = float(x.min()), float(x.max())
    if low >= 0 and top < 255 and 1.5 * top < high <= 255:
        x *= top / 255.0
        notes.append(f"values up to {high:g} look like 0-255 pixels: rescaled to the training range 0-{top:g}")
    elif low >= 0 and 0 < high <= 1 < top and not np.array_equal(x, np.round(x)):
        x *= top
        notes.append(f"values within 0-1 look like scaled pixels: rescaled to the training range 0-{top:g}")
    background = training_background(preprocessing, top)
    if background is not None:
        border = _border_mean(x)
        flip = border > top / 2 if background == "dark" else border < top / 2
        if flip.any():
            x[flip] = top - x[flip]
            other = "light" if background == "dark" else "dark"
            notes.append(f"{int(flip.sum())} of {len(x)} image(s) have a {other} background: inverted "
                         f"to the training data's {background} background")
    return x, notes


def training_background(preprocessing: dict[str, Any], top: float) -> str | None:
    """"dark" or "light" from preprocessing's `background`, else from the training pixel mean
    (`pixel_mean`, else the mean of `input_mean`); None where the data has no clear background."""
    given = preprocessing.get("background")
    if given in ("dark", "light"):
        return str(given)
    mean = preprocessing.get("pixel_mean")
    if mean is None and preprocessing.get("input_mean"):
        mean = float(np.mean(preprocessing["input_mean"]))
    if mean is None:
        return None
    mean = float(np.mean(mean))
    return "dark" if mean < 0.4 * top else "light" if mean > 0.6 * top else None


def _border_mean(x: np.ndarray) -> np.ndarray:
    """Per image, the mean of its outermost pixels (the background), or of all pixels if tiny."""
    if x.shape[2] < 3 or x.shape[3] < 3:
        return x.reshape(len(x), -1).mean(axis=1)
    edges = [x[:, :, 0, :], x[:, :, -1, :], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]]
    return np.concatenate([e.reshape(len(x), -1) for e in edges], axis=1).mean(axis=1)


# --- outputs ------------------------------------------------------------------------------------


@torch.no_grad()
def predict_frame(model: torch.nn.Module, inputs: torch.Tensor, preprocessing: dict[str, Any]) -> pd.DataFrame:
    """`prediction` (class name, or value) and, for classes, `p_<class>` probabilities per row."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    out = torch.cat([model(chunk.to(device)).float().cpu() for chunk in inputs.split(BATCH)])
    classes = [str(c) for c in preprocessing.get("class_names") or []]
    if not classes:
        return pd.DataFrame({"prediction": out.reshape(len(out)).double().numpy()})
    probabilities = torch.softmax(out, dim=1).double().numpy()
    table = pd.DataFrame({"prediction": [classes[i] for i in probabilities.argmax(axis=1)]})
    for i, name in enumerate(classes):
        table[f"p_{name}"] = probabilities[:, i]
    return table


def output_schema(preprocessing: dict[str, Any]) -> Any:
    """The MLflow schema of `predict_frame`'s table."""
    from mlflow.types import ColSpec, Schema

    classes = [str(c) for c in preprocessing.get("class_names") or []]
    if not classes:
        return Schema([ColSpec("double", "prediction")])
    return Schema([ColSpec("string", "prediction"), *(ColSpec("double", f"p_{c}") for c in classes)])


# --- the MLflow model ---------------------------------------------------------------------------


class ServedModel:
    """What `mlflow.pyfunc.load_model` returns for this module's flavor."""

    def __init__(self, model: torch.nn.Module, preprocessing: dict[str, Any]) -> None:
        self.model = model
        self.preprocessing = preprocessing

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Labels and probabilities (or values) per row; bad inputs raise MLflow's 400 error."""
        from mlflow.exceptions import MlflowException

        try:
            inputs = prepare_inputs(model_input, self.preprocessing, warn=_logger.warning)
        except UsageError as e:
            raise MlflowException.invalid_parameter_value(str(e)) from None
        return predict_frame(self.model, inputs, self.preprocessing)


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> ServedModel:
    """MLflow's pyfunc hook: rebuild the network from the checkpoint folder `path`."""
    folder = Path(path)
    device = (model_config or {}).get("device") or "cpu"
    try:
        model = load_checkpoint(folder, device, code_dir=folder.parent / "code")
    except CheckpointError as e:  # named by the model, not by MLflow's temporary download folder
        raise CheckpointError(str(e).replace(str(folder.parent), _model_uri(folder.parent))) from None
    preprocessing_file = folder / PREPROCESSING
    if preprocessing_file.is_file():
        preprocessing = json.loads(preprocessing_file.read_text())
    else:
        preprocessing = {"input_shape": list(model.config.input_shape)}
    return ServedModel(model, preprocessing)


def _model_uri(root: Path) -> str:
    """`models:/<model_id>` of a downloaded MLflow model folder, as its MLmodel file records it."""
    from mlflow.models import Model

    try:
        model_id = Model.load(str(root)).model_id
    except Exception:  # no readable MLmodel: say what it is, not where the copy was
        model_id = None
    return f"models:/{model_id}" if model_id else "the MLflow model"


def builder_code_paths(config: Any) -> list[str]:
    """The user's network code to ship with a pickled model: the builder's file, or its package."""
    builder = getattr(config, "builder", None)
    if not builder:
        return []
    target = str(builder).rsplit(":", 1)[0]
    if target.endswith(".py") or "/" in target or "\\" in target:
        return [target] if Path(target).is_file() else []
    spec = importlib.util.find_spec(target.split(".")[0])
    if spec is None or spec.origin is None:
        return []
    origin = Path(spec.origin)
    return [str(origin.parent if origin.name == "__init__.py" else origin)]


def save_model(
    path: str, mlflow_model: Any, pytorch_model: torch.nn.Module, weights: str, example: np.ndarray,
    pip_requirements: list[str] | None = None, **_: Any,
) -> None:
    """`Model.log`'s flavor hook: the pytorch flavor (pt2, else pickle with the builder's code),
    the checkpoint folder, and this module as the python_function flavor with a label signature."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.pyfunc import add_to_model

    with torch.no_grad():
        output = pytorch_model(torch.from_numpy(example)).numpy()
    options = {"input_example": example, "signature": infer_signature(example, output),
               "pip_requirements": pip_requirements, "mlflow_model": mlflow_model}
    code_paths = builder_code_paths(getattr(pytorch_model, "config", None)) or None  # for both flavors
    model_format = "pt2"
    try:
        import mlflow.pytorch

        mlflow.pytorch.save_model(pytorch_model, path, serialization_format="pt2", code_paths=code_paths, **options)
    except Exception as e:  # torch.export cannot trace it (data-dependent control flow, ...)
        _logger.warning("torch.export failed (%s); saving the network as a pickle with its code", _first_line(e))
        shutil.rmtree(path, ignore_errors=True)
        model_format = "pickle"
        try:
            mlflow.pytorch.save_model(pytorch_model, path, serialization_format="pickle", code_paths=code_paths,
                                      **options)
        except Exception as pickling:
            config = getattr(pytorch_model, "config", None)
            name = getattr(config, "builder", None) or type(pytorch_model).__name__
            raise ModelNotSaved(f"the best network ({name}) cannot be saved as an MLflow "
                                f"model: torch.export failed ({_first_line(e)}) and pickling it failed "
                                f"({_first_line(pickling)}); its weights are kept on the winning trial's "
                                "run") from None
    shutil.copytree(weights, Path(path) / MODEL_DIR)
    preprocessing_file = Path(weights) / PREPROCESSING
    preprocessing = json.loads(preprocessing_file.read_text()) if preprocessing_file.is_file() else {}
    add_to_model(mlflow_model, loader_module=__name__, data=MODEL_DIR,
                 code=mlflow_model.flavors["pytorch"].get("code"),
                 conda_env="conda.yaml", python_env="python_env.yaml")
    mlflow_model.signature = ModelSignature(inputs=None, outputs=output_schema(preprocessing))
    mlflow_model.metadata = {**(mlflow_model.metadata or {}), FORMAT_KEY: model_format}
    mlflow_model.save(str(Path(path) / "MLmodel"))
    # the saved model should load as MLflow serves it and answer its example (MLflow's own check,
    # off in `log_served_model`, first maps every module of every installed package to its
    # distribution: seconds); like MLflow's, a failure is a warning
    try:
        from mlflow.pyfunc import load_model

        load_model(path, suppress_warnings=True).predict(example)
    except Exception as e:
        _logger.warning("the saved model does not answer its input example: %s", _first_line(e))


def log_served_model(run_id: str, model: torch.nn.Module, weights: Path, example: np.ndarray,
                     model_id: str | None = None) -> tuple[str, str]:
    """Log the model on `run_id` (MLflow's process-global URIs must point at the store), into the
    logged model `model_id` when given (else a new one). Returns (model URI, serialization format:
    "pt2" or "pickle")."""
    import safetensors
    from mlflow.models import Model

    model = model.to("cpu").eval()
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"safetensors=={safetensors.__version__}",
                    "numpy", "pandas"]
    info = Model.log(artifact_path=None, name="model", flavor=sys.modules[__name__], run_id=run_id,
                     flavor_name="pytorch", pytorch_model=model, weights=str(weights), example=example,
                     pip_requirements=requirements, model_id=model_id, validate_serving_input=False)
    return info.model_uri, str((info.metadata or {}).get(FORMAT_KEY, "pt2"))
