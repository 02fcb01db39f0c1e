"""The Optuna objective: trial -> configs -> network -> fit -> report / prune -> score.

The only module that knows both Optuna and training. It records through a run object
(`tracking.RunRecords`: a run written by the recording process, in-process, or not at all), never
through MLflow directly. Training failures become `TrialFailed` (the search
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
from automl.keys import FINAL_METRICS, LATENCY_MS, N_PARAMETERS
from automl.model import build_model, count_parameters
from automl.pruning import StudySnapshot, prune_reason, record_curve, should_prune
from automl.registries import improves
from automl.runs import NullTrialRun, RunRecords
from automl.selection import dominates
from automl.space import SearchSpace, suggest
from automl.stopping import check_constraints, forward_latency_ms
from automl.train import NonFiniteLoss, fit

STORAGE_ERRORS: tuple[type[Exception], ...] = (optuna.exceptions.StorageInternalError,)
try:
    import sqlalchemy.exc

    STORAGE_ERRORS += (sqlalchemy.exc.SQLAlchemyError,)
except ImportError:  # pragma: no cover - optuna's RDB storage needs sqlalchemy
    pass


# how each pruner decides, for the reason recorded on a pruned trial
PRUNING_RULES = {
    "median": "median rule: below the median of earlier trials at this epoch",
    "percentile": "percentile rule: outside the kept percentile of earlier trials at this epoch",
    "successive_halving": "successive halving: not in the top fraction of its rung",
    "hyperband": "hyperband: not in the top fraction of its bracket's rung",
}


def _best_metrics(metric: str, best: dict[str, float]) -> dict[str, float]:
    """`best_<metric>` and `best_epoch` over the epochs run so far."""
    if not best:
        return {}
    return {f"best_{metric}": best["value"], "best_epoch": best["epoch"]}


def release_memory() -> None:
    """Give freed tensors back: Python garbage, then the CUDA cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Objective:
    """Callable objective for one study: `objective(trial, run)` trains and returns the score, or
    in a multi-objective search the list of its values (the first metric, then the costs)."""

    def __init__(self, space: SearchSpace, data: Dataset, seed: int = 0) -> None:
        self.space = space
        self.data = data
        self.seed = seed

    def __call__(self, trial: optuna.trial.BaseTrial,
                 run: RunRecords | None = None) -> float | list[float]:
        run = run or NullTrialRun()
        space, data = self.space, self.data
        seed = self.seed + trial.number
        model_config, train_config = suggest(trial, space, data.input_shape, data.n_outputs, seed)
        run.log_params({**trial.params, "epochs": train_config.epochs, "seed": seed, "dataset": data.name,
                        "trial_number": trial.number})
        best: dict[str, float] = {}
        costs: dict[str, float] = {}  # multi-objective: the objectives after the first, before training
        curve: dict[int, float] = {}
        # the other trials as the pruning checks see them: read once, not at every epoch (automl.pruning)
        snapshot = StudySnapshot(trial.study) if isinstance(trial, optuna.Trial) else None

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            run.log_epoch(epoch, metrics)
            value = metrics[space.metric]
            if not best or improves(value, best["value"], space.direction):
                best.update(value=value, epoch=epoch)
            try:
                if space.multi_objective:
                    curve[epoch] = value
                    rule = self._prune_multi(trial, snapshot, costs, curve)
                else:
                    trial.report(value, epoch)
                    rule = (PRUNING_RULES.get(space.pruner, space.pruner + " pruner")
                            if should_prune(trial, snapshot) else None)
            except STORAGE_ERRORS as e:
                raise FatalError(f"Optuna storage failed while reporting epoch {epoch}: {e}") from e
            if rule:
                run.log_metrics(_best_metrics(space.metric, best))
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with {space.metric}={value:.4f} ({rule})")

        failure = None
        model = None
        try:
            torch.manual_seed(seed)
            model = build_model(model_config)
            model.set_statistics(data.input_mean, data.input_std, data.target_mean, data.target_std)
            n_parameters = count_parameters(model)
            trial.set_user_attr(N_PARAMETERS, n_parameters)
            run.log_params({"n_parameters": n_parameters})
            if space.max_parameters is not None or space.max_latency_ms is not None:
                # budgets checked before training: a network that breaks one is pruned untrained
                run.log_metrics(check_constraints(trial, space, model, n_parameters, data.val.x,
                                                  train_config.amp))
            if space.multi_objective:
                costs.update(self._costs(trial, run, model, n_parameters, train_config.amp))
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
        trial.set_user_attr(FINAL_METRICS, {k: float(v) for k, v in result.metrics.items()})
        run.log_metrics(_best_metrics(space.metric, best))
        values = [value, *(costs[m] for m in space.metrics[1:])]
        keep = self._on_front(trial, values) if space.multi_objective else self._best_so_far(trial, value)
        if keep:
            with tempfile.TemporaryDirectory() as tmp:
                folder = save_checkpoint(Path(tmp), model, model_config, train_config,
                                         data.preprocessing())
                run.log_weights(folder)
        return values if space.multi_objective else value

    def _costs(self, trial: optuna.trial.BaseTrial, run: RunRecords, model: torch.nn.Module,
               n_parameters: int, amp: bool) -> dict[str, float]:
        """The objectives after the first, measured before training: `n_parameters`, and
        `latency_ms`: the median time of one forward pass of one input on the search device, after
        warm-up (a trial user attribute and a run metric)."""
        costs: dict[str, float] = {}
        for metric in self.space.metrics[1:]:
            if metric == N_PARAMETERS:
                costs[metric] = float(n_parameters)
            elif metric == LATENCY_MS:
                costs[metric] = round(forward_latency_ms(model, self.data.val.x[:1], amp), 4)
                trial.set_user_attr(LATENCY_MS, costs[metric])
                run.log_metrics({LATENCY_MS: costs[metric]})
        return costs

    def _prune_multi(self, trial: optuna.trial.BaseTrial, snapshot: StudySnapshot | None,
                     costs: dict[str, float], curve: dict[int, float]) -> str | None:
        """Multi-objective pruning (automl.pruning): store the learning curve, judge the trial
        against its peers. A FixedTrial (no study) is never pruned."""
        record_curve(trial, curve)
        return None if snapshot is None else prune_reason(snapshot, self.space, costs, curve)

    def _on_front(self, trial: optuna.trial.BaseTrial, values: list[float]) -> bool:
        """Multi-objective: whether no complete trial dominates `values` (then the weights are
        kept: every trial that ends on the Pareto front, the champion included, has them)."""
        study = getattr(trial, "study", None)
        if study is None:
            return False
        try:
            complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        except STORAGE_ERRORS as e:
            raise FatalError(f"Optuna storage failed while reading the Pareto front: {e}") from e
        return not any(t.values is not None and dominates(t.values, values, study.directions) for t in complete)

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
