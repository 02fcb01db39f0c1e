"""The Python API: `automl.search(...)` as a notebook runs it, the same records as the command line,
and the same one-line errors as exceptions."""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pytest
import torch

import automl
from tests.conftest import PYTHON, TINY_SPACE, Stores, cli, make_stores


def _records(stores: Stores, study: str) -> dict:
    """What a search wrote, without ids and times: trials, runs, tags, params, metrics, models."""
    client = stores.client()
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    volatile = ("mlflow.source", "mlflow.user", "automl.seconds", "mlflow.parentRunId", "automl.best_model_uri",
                "mlflow.runName", "mlflow.log-model", "mlflow.loggedArtifacts")
    described = sorted(
        (r.info.run_name, r.info.status, tuple(sorted(r.data.params.items())),
         tuple(sorted((k, v) for k, v in r.data.tags.items() if not k.startswith(volatile))),
         tuple(sorted(k for k in r.data.metrics if k != "epoch_seconds")))
        for r in runs)
    trials = [(t.number, t.state.name, t.params, t.value)
              for t in optuna.load_study(study_name=study, storage=stores.storage_url).trials]
    versions = sorted(v.version for v in client.search_model_versions(f"name = '{study}'"))
    return {"runs": described, "trials": trials, "versions": versions}


def test_notebook_search_then_reload_in_a_fresh_process(stores: Stores) -> None:
    result = automl.search(TINY_SPACE, study="nb", trials=3, seed=0, storage=stores.storage_url,
                           tracking_uri=stores.tracking_uri, progress=False)
    assert isinstance(result, automl.SearchResult)
    assert result.model_uri == "models:/nb@champion"
    assert isinstance(result.best.model, torch.nn.Module) and not result.best.model.training
    assert set(result.best.params) >= {"depth", "lr"} and "val_accuracy" in result.best.metrics
    assert "test_accuracy" in result.best.metrics
    table = result.trials
    assert len(table) == 3 and table.iloc[0]["value"] == result.study.best_value
    assert result.study.best_trial.number == result.best.trial
    # a fresh Python process reloads the champion and reproduces the test score
    script = (
        "import automl, json\n"
        f"best = automl.load_best('nb', tracking_uri={stores.tracking_uri!r})\n"
        "print(json.dumps(best.metadata['test_accuracy']))\n"
    )
    out = subprocess.run([PYTHON, "-c", script], cwd=stores.folder, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) == pytest.approx(result.best.metrics["test_accuracy"])


def test_cli_and_api_write_the_same_records(tmp_path: Path, mlflow_template: Path, monkeypatch) -> None:
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    by_cli = make_stores(tmp_path / "cli", mlflow_template)
    monkeypatch.chdir(by_cli.folder)
    assert cli("search", "--space", space, "--study", "same", "--seed", "3", *by_cli.flags(), "--quiet") == 0
    by_api = make_stores(tmp_path / "api", mlflow_template)
    monkeypatch.chdir(by_api.folder)
    automl.search(space, study="same", seed=3, storage=by_api.storage_url, tracking_uri=by_api.tracking_uri,
                  progress=False)
    assert _records(by_cli, "same") == _records(by_api, "same")


def test_api_accepts_a_dict_and_raises_one_line_errors(stores: Stores) -> None:
    bad = {"data": {"dataset": "digits"}, "model": {"family": "mlp", "depth": {"type": "int", "low": 3, "high": 1}}}
    with pytest.raises(automl.SpaceError, match=r"model\.depth: `low <= high` must hold") as caught:
        automl.search(bad, storage=stores.storage_url, tracking_uri=stores.tracking_uri, progress=False)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)
    assert not (stores.folder / "optuna.db").exists()
    with pytest.raises(automl.UsageError, match="--trials|trials"):
        automl.search(TINY_SPACE, trials=0, storage=stores.storage_url, tracking_uri=stores.tracking_uri,
                      progress=False)


def test_three_line_space_runs(stores: Stores) -> None:
    space = "data: {dataset: digits}\nmodel: {family: mlp}\nbudget: {epochs: 1, trials: 2}\n"
    result = automl.search(space, study="short", storage=stores.storage_url, tracking_uri=stores.tracking_uri,
                           progress=False)
    assert result.counts["COMPLETE"] + result.counts["PRUNED"] == 2
