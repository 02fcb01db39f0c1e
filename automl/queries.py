"""The read-only use cases: the best trial, the trials table, the studies of a storage,
predictions of a champion, the UI's link. None of them creates a storage, a study or a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from automl import checks, keys
from automl.errors import FatalError, UsageError


def load_study(name: str, storage_url: str) -> Any:
    """An existing study (never creates a storage or a study)."""
    import optuna

    from automl.storage import open_storage, quiet_optuna

    quiet_optuna()
    name = checks.check_study_name(name)
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage_url, create=False))
    except KeyError:
        raise UsageError(f"--study: no study named {name!r} in {checks.mask_url(storage_url)}") from None


def best_info(study_name: str, storage: str | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """The best trial of a study with its test scores, run ids and model URIs."""
    from automl import record
    from automl.best import study_run
    from automl.selection import champion_trial
    from automl.tracking import Tracker

    storage_url = checks.storage_url(storage)
    study = load_study(study_name, storage_url)
    uri = checks.tracking_uri(tracking_uri, study.user_attrs.get(keys.TRACKING_URI))
    try:
        trial = champion_trial(study)
    except ValueError:
        raise FatalError(f"study {study_name!r} has no complete trial") from None
    space = record.space_of(study)
    run = study_run(Tracker(uri, create=False), study_name)
    tags = run.data.tags
    return {
        "study": study_name, "trial": trial.number, "metric": space.metric, "direction": space.direction,
        "value": trial.value, "params": trial.params,
        "test": {k: v for k, v in run.data.metrics.items() if k.startswith("test_")},
        "trial_run_id": trial.user_attrs.get(keys.RUN_ID), "study_run_id": run.info.run_id,
        "model_uri": tags.get("automl.best_model_uri"), "registered_model_uri": f"models:/{study_name}@champion",
        "registered_version": tags.get("automl.registered_version"),
        "logged_best_trial": int(tags.get("automl.best_trial", -1)), "tracking_uri": checks.mask_url(uri),
    }


def report(study_name: str, storage: str | None = None) -> tuple[Any, str]:
    """The trials table of a study, best first, and the name of the metric it optimises."""
    from automl.report import trials_table

    study = load_study(study_name, checks.storage_url(storage))
    return trials_table(study), str(study.user_attrs.get(keys.METRIC, "value"))


def studies(storage: str | None = None) -> Any:
    """The studies in a storage (an empty table when there is no storage yet: nothing is created)."""
    import pandas as pd

    from automl.locks import storage_exists
    from automl.report import studies_table
    from automl.storage import open_storage

    storage_url = checks.storage_url(storage)
    if not storage_exists(storage_url):
        return pd.DataFrame()
    return studies_table(open_storage(storage_url, create=False))


def predict(study_name: str, inputs: list[Path], tracking_uri: str | None = None, device: str = "cpu") -> Any:
    """Predictions of a study's champion for .npy, CSV or image files: one row per input."""
    from automl.best import load_best, predict_table, read_inputs
    from automl.train import resolve_device

    name = checks.check_study_name(study_name)
    uri = checks.tracking_uri(tracking_uri)
    missing = [p for p in inputs if not Path(p).is_file()]
    if missing:
        raise UsageError(f"INPUT: {missing[0]}: file not found")
    loaded = load_best(name, uri, resolve_device(device))
    x, names = read_inputs([Path(p) for p in inputs], loaded.preprocessing)
    return predict_table(loaded, x, names)


def ui_path(tracking_uri: str, study_name: str | None) -> str:
    """The UI path of a study's runs page (the newest study's when none is named); "" when unknown."""
    from automl.locks import storage_exists

    if not storage_exists(tracking_uri):
        return ""
    from automl.tracking import Tracker

    experiment = Tracker(tracking_uri, create=False).find_experiment(study_name)
    return f"/#/experiments/{experiment}/runs" if experiment else ""
