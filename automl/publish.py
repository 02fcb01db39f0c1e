"""Publishing a study's result: the summary on the study run, the best trial's weights evaluated
on the test split, the MLflow model, its registered version and the champion alias."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from automl.checkpoint import load_checkpoint
from automl.data import Dataset
from automl.errors import FatalError
from automl.keys import DATA, FINAL_METRICS, RUN_ID
from automl.plots import PlotJob
from automl.record import StudyHandle, counts
from automl.registries import improves
from automl.report import trials_table
from automl.runs import BEST_DIR, BEST_TRIAL_TAG, FINAL_WEIGHTS_DIR, WEIGHTS_DIR
from automl.selection import champion_trial, final_record, final_winner
from automl.train import evaluate

if TYPE_CHECKING:
    from automl.tracking import Tracker


@dataclass
class BestModel:
    """What `finalize` logged about the best trial."""

    trial: int
    value: float
    test_metrics: dict[str, float]
    model_uri: str
    version: str
    champion: bool | None  # whether this search moved the champion alias (None: logged earlier)
    model: Any = None  # the best network (eval mode, on the CPU)


def finalize(
    handle: StudyHandle, tracker: Tracker, data: Dataset, say: Callable[[str], None] = print,
    interrupted: bool = False, plots: PlotJob | None = None,
) -> BestModel | None:
    """Summarise the study on its parent run; log, register and crown the best model.

    Idempotent: the best model is logged and registered once per best trial, even when an earlier
    summary was interrupted half-way. Raises FatalError when trials finished and none completed
    (nothing is logged or registered then), unless the search was `interrupted`. `plots`: a
    PlotJob made when the search started (its process has imported the plotting libraries while
    the trials ran): it is given the study to draw, and the caller logs them with `log_plots` once
    it has shown the summary. Without it, the plots are drawn and logged here.
    """
    study = handle.load()
    totals = counts(study)
    summary_metrics = {f"n_{k.lower()}": float(v) for k, v in totals.items()
                       if k in ("COMPLETE", "PRUNED", "FAIL")}
    count_tags = {f"automl.n_{k.lower()}": str(totals[k]) for k in ("COMPLETE", "PRUNED", "FAIL")}
    table = trials_table(study)
    finished = totals["COMPLETE"] + totals["PRUNED"] + totals["FAIL"]
    if totals["COMPLETE"] == 0:
        if plots is not None:
            plots.cleanup()
        tracker.log_summary(handle.parent_run_id, {}, summary_metrics, count_tags, table)
        if finished and not interrupted:
            raise FatalError(f"all {finished} finished trial(s) of study {handle.name!r} failed or "
                             "were pruned; no best model was logged")
        return None
    own = plots is None  # then drawn and logged here
    plots = plots or PlotJob()
    try:
        plots.draw(study)  # in the plotting process while the best model is logged
        best = _log_best(handle, tracker, data, study, summary_metrics, count_tags, table, say)
    except BaseException:
        plots.cleanup()
        raise
    if own:
        log_plots(handle, tracker, plots)
    return best


def log_plots(handle: StudyHandle, tracker: Tracker, plots: PlotJob | None) -> None:
    """Wait for the study's plots (`finalize` started drawing them) and log them on the study
    run under `plots/`; nothing when none were drawn."""
    if plots is None:  # `finalize` made, drew and logged its own
        return
    try:
        folder = plots.result()
        if folder is not None:
            tracker.log_folder(handle.parent_run_id, folder, "plots")
    finally:
        plots.cleanup()


def _evaluate_best(handle: StudyHandle, data: Dataset, best: optuna.trial.FrozenTrial,
                   weights: Path) -> tuple[Any, dict[str, float]]:
    """The best trial's kept weights, evaluated on the test split; metadata written beside them."""
    model = load_checkpoint(weights, "cpu")
    test = {f"test_{k}": v for k, v in evaluate(model, data.to("cpu").test, data.task).items()}
    space = handle.space
    (weights / "metadata.json").write_text(json.dumps({
        "study": handle.name, "trial": best.number, "metric": space.metric, "value": best.value,
        "direction": space.direction, "params": best.params, "trial_run_id": best.user_attrs.get(RUN_ID),
        "study_run_id": handle.parent_run_id, **test,
    }, indent=2))
    return model.eval(), test


def _version_record(handle: StudyHandle, study: optuna.Study, best: optuna.trial.FrozenTrial, value: float,
                    test: dict[str, float]) -> tuple[dict[str, str], str]:
    """The registered version's tags (the winning trial's params as `param.*`, its scores, where it
    came from) and its description."""
    space = handle.space
    test_metric = "test_" + space.metric.removeprefix("val_")
    data = study.user_attrs.get(DATA) or {}
    run_id = str(best.user_attrs.get(RUN_ID, ""))
    final = {k: v for k, v in (best.user_attrs.get(FINAL_METRICS) or {}).items() if k != "epoch_seconds"}
    scores = {**final, space.metric: value, **test}  # the last epoch's, and the test split's
    tags = {"study": handle.name, "trial": str(best.number), "direction": space.direction,
            "study_run_id": handle.parent_run_id, "trial_run_id": run_id, "metric": space.metric,
            "data": str(data.get("name", "")), "data_digest": str(data.get("digest", "")),
            **{k: f"{v:.6g}" for k, v in scores.items()},
            **{f"param.{k}": str(v)[:5000] for k, v in best.params.items()}}
    tags[test_metric] = str(test[test_metric])  # full precision: the champion comparison reads it
    seeds = (final_record(study).get("trials") or {}).get(str(best.number))
    if seeds:  # the seed-robust final phase's scores of this configuration
        tags.update({f"final_mean_{space.metric}": f"{statistics.fmean(seeds):.6g}",
                     f"final_std_{space.metric}": f"{statistics.stdev(seeds):.6g}", "final_seeds": str(len(seeds))})
    description = (f"Study {handle.name}, trial {best.number} (MLflow run {run_id}): {space.metric}="
                   f"{value:.4f}, {test_metric}={test[test_metric]:.4f} on the held-out test split; "
                   f"data {data.get('name', '?')} ({data.get('source', '?')}, digest "
                   f"{str(data.get('digest', '?'))[:12]}). Its parameters are the version's param.* tags.")
    return tags, description


def _log_best(handle: StudyHandle, tracker: Tracker, data: Dataset, study: optuna.Study,
              summary_metrics: dict[str, float], count_tags: dict[str, str], table: Any,
              say: Callable[[str], None]) -> BestModel:
    """Evaluate the best trial's kept weights on the test split; log, register and crown it."""
    space = handle.space
    best = champion_trial(study)
    assert best.value is not None  # the best trial is complete
    value = float(best.value)
    test_metric = "test_" + space.metric.removeprefix("val_")
    tags = tracker.tags(handle.parent_run_id)
    best_tags = {f"best.{k}": str(v) for k, v in best.params.items()}
    summary_metrics[f"best_{space.metric}"] = value
    # after a seed-robust final phase: the winning configuration's best retrained seed
    kept = FINAL_WEIGHTS_DIR if final_winner(study) == best.number else WEIGHTS_DIR
    with tracker.artifacts(str(best.user_attrs.get(RUN_ID)), kept) as weights:
        model, test = _evaluate_best(handle, data, best, weights)
        if tags.get(BEST_TRIAL_TAG) == str(best.number):  # already published by an earlier summary
            tracker.log_summary(handle.parent_run_id, {}, summary_metrics, {**best_tags, **count_tags}, table)
            return BestModel(best.number, value, test, tags.get("automl.best_model_uri", ""),
                             tags.get("automl.registered_version", ""), None, model)
        version_tags, description = _version_record(handle, study, best, value, test)
        # an earlier summary stopped after registering: finish its work instead of repeating it
        found = tracker.find_version(handle.name, {"study_run_id": handle.parent_run_id, "trial": str(best.number)})
        if found is not None:
            model_uri, version = found.source, str(found.version)
        else:
            tracker.log_folder(handle.parent_run_id, weights, BEST_DIR)
            example = data.to("cpu").test.x[:4].float().numpy()
            model_uri, version = tracker.log_model(
                handle.parent_run_id, model, example, handle.name, version_tags, weights=weights,
                trained_by=version_tags["trial_run_id"] or None, description=description, params=best.params)
    crown = _crown(handle, tracker, version, test_metric, test[test_metric], say)
    summary_metrics.update(test)
    tracker.log_summary(
        handle.parent_run_id, {}, summary_metrics,
        {**best_tags, **count_tags, BEST_TRIAL_TAG: str(best.number), "automl.best_model_uri": model_uri,
         "automl.registered_version": version},
        table, model_id=model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None,
    )
    return BestModel(best.number, value, test, model_uri, version, crown, model)


def _crown(handle: StudyHandle, tracker: Tracker, version: str, test_metric: str, score: float,
           say: Callable[[str], None]) -> bool:
    """Move the champion alias to `version` when it beats the current champion (or there is none)."""
    current = tracker.champion(handle.name)
    crown = True
    if current is not None and str(current.version) != version and test_metric in current.tags:
        crown = improves(score, float(current.tags[test_metric]), handle.space.direction)
    if crown or current is None:
        tracker.set_champion(handle.name, version)
        say(f"Registered {handle.name} version {version} as @champion ({test_metric}={score:.4f})")
    else:
        say(f"Registered {handle.name} version {version}; @champion stays on version "
            f"{current.version} ({test_metric}={float(current.tags[test_metric]):.4f} vs {score:.4f})")
    return crown
