"""The Optuna objective: trial -> configs -> network -> fit -> report / prune -> score.

The only module that knows both Optuna and training. It records through a `TrialRun` (or the
`NullTrialRun`), never through MLflow directly. Training failures become `TrialFailed` (the search
goes on); storage and tracking failures become `FatalError` (the search stops).
"""

from __future__ import annotations

import gc
import math
import tempfile
from pathlib import Path

import optuna
import torch

from automl.checkpoint import save_checkpoint
from automl.data import Dataset
from automl.errors import FatalError, TrialFailed
from automl.keys import N_PARAMETERS
from automl.model import build_model, count_parameters
from automl.space import SearchSpace, suggest
from automl.tracking import NullTrialRun, TrialRun
from automl.train import NonFiniteLoss, fit

STORAGE_ERRORS: tuple[type[Exception], ...] = (optuna.exceptions.StorageInternalError,)
try:
    import sqlalchemy.exc

    STORAGE_ERRORS += (sqlalchemy.exc.SQLAlchemyError,)
except ImportError:  # pragma: no cover - optuna's RDB storage needs sqlalchemy
    pass


def release_memory() -> None:
    """Give freed tensors back: Python garbage, then the CUDA cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Objective:
    """Callable objective for one study: `objective(trial, run)` trains and returns the score."""

    def __init__(self, space: SearchSpace, data: Dataset, seed: int = 0) -> None:
        self.space = space
        self.data = data
        self.seed = seed

    def __call__(self, trial: optuna.trial.BaseTrial, run: TrialRun | NullTrialRun | None = None) -> float:
        run = run or NullTrialRun()
        space, data = self.space, self.data
        seed = self.seed + trial.number
        model_config, train_config = suggest(trial, space, data.input_shape, data.n_outputs, seed)
        run.log_params({**trial.params, "epochs": train_config.epochs, "seed": seed, "dataset": data.name})

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            run.log_epoch(epoch, metrics)
            value = metrics[space.metric]
            try:
                trial.report(value, epoch)
                prune = trial.should_prune()
            except STORAGE_ERRORS as e:
                raise FatalError(f"Optuna storage failed while reporting epoch {epoch}: {e}") from e
            if prune:
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with {space.metric}={value:.4f}")

        failure = None
        model = None
        try:
            torch.manual_seed(seed)
            model = build_model(model_config)
            model.set_statistics(data.input_mean, data.input_std, data.target_mean, data.target_std)
            n_parameters = count_parameters(model)
            trial.set_user_attr(N_PARAMETERS, n_parameters)
            run.log_params({"n_parameters": n_parameters})
            result = fit(model, data, train_config, on_epoch_end)
        except (optuna.TrialPruned, FatalError):
            raise
        except NonFiniteLoss as e:
            failure = str(e)
        except torch.OutOfMemoryError:
            failure = "out of memory"
        except Exception as e:  # any other error inside one trial fails only that trial
            failure = f"{type(e).__name__}: {e}"
        if failure is not None:  # outside the except block, so the traceback frees its tensors
            del model
            release_memory()
            raise TrialFailed(failure)

        value = result.metrics[space.metric]
        if not math.isfinite(value):
            raise TrialFailed(f"{space.metric} is {value}")
        if self._best_so_far(trial, value):
            with tempfile.TemporaryDirectory() as tmp:
                folder = save_checkpoint(Path(tmp), model, model_config, train_config,
                                         data.preprocessing())
                run.log_weights(folder)
        return value

    def _best_so_far(self, trial: optuna.trial.BaseTrial, value: float) -> bool:
        """Whether `value` ties or beats every finished trial (then its weights are kept)."""
        study = getattr(trial, "study", None)
        if study is None:  # FixedTrial: no study to compare with
            return False
        try:
            best = study.best_value
        except ValueError:  # no complete trial yet
            return True
        except STORAGE_ERRORS as e:
            raise FatalError(f"Optuna storage failed while reading the best trial: {e}") from e
        return value >= best if self.space.direction == "maximize" else value <= best
