"""End to end: a real search through the CLI, checked through Optuna's and MLflow's own clients."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import torch

import automl
import automl.errors
from automl.data import load_dataset
from automl.train import evaluate
from tests.conftest import PYTHON, TINY_SPACE, Stores, cli, make_stores

# sgd with lr 1e9 diverges (FAIL); the median pruner with no warm-up prunes weak trials (PRUNED)
MIXED_SPACE = (TINY_SPACE
               .replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 3, trials: 8}")
               .replace("pruner: {name: none}",
                        "pruner: {name: median, options: {n_startup_trials: 1, n_warmup_steps: 0}}")
               .replace("name: {type: categorical, choices: [adam, sgd]}", "name: sgd")
               .replace("lr: {type: float, low: 3.0e-3, high: 1.0e-2, log: true}",
                        "lr: {type: categorical, choices: [0.2, 0.003, 1.0e9]}"))
STUDY = "mixed"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path):
    folder = tmp_path_factory.mktemp("search")
    stores = make_stores(folder, mlflow_template)
    space = folder / "mixed.yaml"
    space.write_text(MIXED_SPACE)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        code = cli("search", "--space", space, "--study", STUDY, "--seed", "1", *stores.flags())
    return stores, code


def _runs(stores: Stores):
    client = stores.client()
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("automl.role") == "study"]
    children = [r for r in runs if r.data.tags.get("automl.role") == "trial"]
    return client, parents, children


def test_search_succeeds_with_every_trial_terminal(finished) -> None:
    stores, code = finished
    assert code == 0
    study = optuna.load_study(study_name=STUDY, storage=stores.storage_url)
    states = [t.state.name for t in study.trials]
    assert len(states) == 8 and "RUNNING" not in states and "WAITING" not in states
    assert {"COMPLETE", "PRUNED", "FAIL"} <= set(states), states
    assert sorted(t.number for t in study.trials) == list(range(8))


def test_one_parent_run_with_one_child_per_trial(finished) -> None:
    stores, _ = finished
    _, parents, children = _runs(stores)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    assert len(children) == 8
    assert all(c.data.tags["mlflow.parentRunId"] == parent for c in children)
    assert sorted(int(c.data.tags["automl.trial_number"]) for c in children) == list(range(8))


def test_child_runs_have_true_status_params_and_epoch_metrics(finished) -> None:
    stores, _ = finished
    client, _, children = _runs(stores)
    study = optuna.load_study(study_name=STUDY, storage=stores.storage_url)
    expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    for trial in study.trials:
        run = next(c for c in children if c.info.run_id == trial.user_attrs["mlflow_run_id"])
        assert run.info.status == expected[trial.state.name], trial.number
        assert run.data.tags["automl.trial_state"] == trial.state.name
        assert run.data.params["lr"] == str(trial.params["lr"])
        assert int(run.data.params["n_parameters"]) > 0
        if trial.state.name == "FAIL":
            assert "training loss became" in run.data.tags["automl.fail_reason"]
            assert "training loss became" in trial.user_attrs["fail_reason"]
            continue
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        steps = sorted(m.step for m in history)
        assert steps == sorted(trial.intermediate_values), trial.number
        if trial.state.name == "COMPLETE":
            assert steps == [1, 2, 3]
            assert history[-1].value == pytest.approx(trial.value)
            for name in ("train_loss", "val_loss", "epoch_seconds"):
                assert len(client.get_metric_history(run.info.run_id, name)) == 3


def test_parent_run_holds_best_parameters_score_table_and_model(finished) -> None:
    stores, _ = finished
    client, parents, _ = _runs(stores)
    parent = parents[0]
    study = optuna.load_study(study_name=STUDY, storage=stores.storage_url)
    best = study.best_trial
    assert parent.data.tags["automl.best_trial"] == str(best.number)
    assert parent.data.tags["best.lr"] == str(best.params["lr"])
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(best.value)
    assert parent.data.metrics["n_complete"] + parent.data.metrics["n_pruned"] + parent.data.metrics["n_fail"] == 8
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "search_space.yaml", "best_model"} <= artifacts
    best_files = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "best_model")}
    assert {"model.safetensors", "model_config.json", "preprocessing.json", "metadata.json"} <= best_files
    table = Path(client.download_artifacts(parent.info.run_id, "trials.csv", str(stores.folder)))
    assert len(table.read_text().strip().splitlines()) == 9


def test_champion_is_registered_and_loads_with_mlflow(finished) -> None:
    stores, _ = finished
    client, parents, _ = _runs(stores)
    version = client.get_model_version_by_alias(STUDY, "champion")
    assert version.tags["trial"] == parents[0].data.tags["automl.best_trial"]
    mlflow.set_tracking_uri(stores.tracking_uri)
    mlflow.set_registry_uri(stores.tracking_uri)
    model = mlflow.pytorch.load_model(f"models:/{STUDY}@champion")
    data = load_dataset("digits", seed=1)
    best = automl.load_best(STUDY, tracking_uri=stores.tracking_uri)
    x = data.test.x[:16].float()
    assert torch.allclose(model(x), best.model(x), atol=1e-5)


def test_reload_reproduces_logged_test_accuracy_exactly(finished) -> None:
    stores, _ = finished
    _, parents, _ = _runs(stores)
    best = automl.load_best(STUDY, tracking_uri=stores.tracking_uri)
    assert not best.model.training
    data = load_dataset("digits", seed=1)
    scores = evaluate(best.model, data.test, "classification")
    assert scores["accuracy"] == parents[0].data.metrics["test_accuracy"]
    assert best.metadata["test_accuracy"] == parents[0].data.metrics["test_accuracy"]
    assert best.preprocessing["class_names"] == [str(i) for i in range(10)]


def test_best_command_json(finished, capsys: pytest.CaptureFixture[str]) -> None:
    stores, _ = finished
    capsys.readouterr()
    assert cli("best", "--study", STUDY, "--json", *stores.flags()) == 0
    info = json.loads(capsys.readouterr().out)
    study = optuna.load_study(study_name=STUDY, storage=stores.storage_url)
    assert info["trial"] == study.best_trial.number and info["params"] == study.best_trial.params
    assert info["value"] == study.best_value
    assert set(info["test"]) == {"test_accuracy", "test_loss"}
    assert info["registered_model_uri"] == f"models:/{STUDY}@champion"
    assert info["model_uri"].startswith("models:/")
    assert info["trial_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]


def test_cli_subprocess_smoke(tmp_path: Path, mlflow_template: Path) -> None:
    """`python -m automl search` as a user runs it: 3 trials, 2 epochs, a line per trial. The
    process skips the interpreter's teardown: its output still ends with the summary, and its
    folder holds the stores only (SQLite's write-ahead log folded in and removed)."""
    stores = make_stores(tmp_path, mlflow_template)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    done = subprocess.run([PYTHON, "-m", "automl", "search", "--space", "tiny.yaml", "--device", "cpu",
                           *stores.flags()], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("trial ")]
    assert len(lines) == 3 and all("COMPLETE" in line and "best" in line for line in lines)
    assert "@champion" in done.stdout or "champion" in done.stderr + done.stdout
    assert done.stdout.splitlines()[-1].strip().startswith("view: automl ui")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlruns", "optuna.db", "tiny.yaml"]


def _best_model_file(stores: Stores, name: str) -> Path:
    """The study run's best-model artifact on disk (the local artifact store under ./mlruns)."""
    _, parents, _ = _runs(stores)
    root = parents[0].info.artifact_uri.removeprefix("file://")
    return Path(root) / "best_model" / name


@pytest.mark.parametrize("name,change,message", [
    ("model.safetensors", lambda b: b[:40] + b"\x00" * 16 + b[56:], "unreadable weights (corrupt or tampered)"),
    ("model_config.json", lambda b: b.replace(b'"widths": [', b'"widths": [7, '),
     "weights do not match model_config.json"),
], ids=["tampered-weights", "config-mismatch"])
def test_reload_refuses_tampered_files(finished, capsys, name, change, message) -> None:
    stores, _ = finished
    path = _best_model_file(stores, name)
    original = path.read_bytes()
    path.write_bytes(change(original))
    try:
        with pytest.raises(automl.errors.FatalError, match=re.escape(message)):
            automl.load_best(STUDY, tracking_uri=stores.tracking_uri)
        capsys.readouterr()
        np_file = stores.folder / "one.npy"
        np.save(np_file, load_dataset("digits", seed=1).test.x[:1].float().numpy())
        assert cli("predict", "--study", STUDY, np_file, "--tracking-uri", stores.tracking_uri) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    finally:
        path.write_bytes(original)


def test_csv_regression_search_and_predict(tmp_path: Path, mlflow_template: Path, capsys) -> None:
    """A regression search on a CSV table (categorical column one-hot encoded), then predict."""
    rng = np.random.default_rng(0)
    n = 300
    size = rng.normal(100, 20, n)
    kind = rng.choice(["flat", "house", "loft"], n)
    price = 3 * size + 40 * (kind == "house") + rng.normal(0, 5, n)
    frame = pd.DataFrame({"size": size.round(2), "kind": kind, "price": price.round(2)})
    frame.to_csv(tmp_path / "homes.csv", index=False)
    (tmp_path / "homes.yaml").write_text(
        TINY_SPACE.replace("data: {dataset: digits}",
                           "data: {dataset: csv, path: homes.csv, target: price, task: regression}")
        .replace("objective: {metric: val_accuracy}", "objective: {metric: val_rmse}")
        .replace("loss: {name: cross_entropy}", "loss: {name: {type: categorical, choices: [mse, l1, huber]}}")
        .replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 20, trials: 3}"))
    stores = make_stores(tmp_path, mlflow_template)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert cli("search", "--space", "homes.yaml", *stores.flags()) == 0
        study = optuna.load_study(study_name="homes", storage=stores.storage_url)
        assert study.direction.name == "MINIMIZE" and 0 < study.best_value < 60  # the target's std is ~60
        frame.drop(columns=["price"]).head(4).to_csv(tmp_path / "new.csv", index=False)
        capsys.readouterr()
        assert cli("predict", "--study", "homes", "new.csv", "--json", "--tracking-uri", stores.tracking_uri) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and all(isinstance(r["prediction"], float) for r in rows)
    best = automl.load_best("homes", tracking_uri=stores.tracking_uri)
    assert best.preprocessing["encoding"]["categorical"]["kind"] == ["flat", "house", "loft"]
    assert "test_rmse" in best.metadata and "test_r2" in best.metadata


def test_cifar10_cnn_search_with_augmentation(tmp_path: Path, mlflow_template: Path) -> None:
    from tests.formats import write_cifar10

    write_cifar10(tmp_path / "data")
    (tmp_path / "cifar.yaml").write_text(
        TINY_SPACE.replace("data: {dataset: digits}", "data: {dataset: cifar10, augment: true}")
        .replace("family: mlp", "family: cnn\n  blocks: 2\n  channels: {type: int, low: 4, high: 8}\n  kernel_size: 3")
        .replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 2, trials: 2}"))
    stores = make_stores(tmp_path, mlflow_template)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert cli("search", "--space", "cifar.yaml", "--data-dir", "data", *stores.flags()) == 0
    study = optuna.load_study(study_name="cifar", storage=stores.storage_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert {"channels_0", "channels_1"} <= set(study.trials[0].params)


def test_sampler_and_pruner_flags_are_kept_by_the_study(tmp_path: Path, mlflow_template: Path, capsys) -> None:
    """--sampler/--pruner override the space's; a resumed study keeps them and refuses others."""
    from automl.record import space_of

    stores = make_stores(tmp_path, mlflow_template)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)  # the file says random / none
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert cli("search", "--space", "tiny.yaml", "--trials", "2", "--sampler", "tpe", "--pruner", "median",
                   *stores.flags()) == 0
        study = optuna.load_study(study_name="tiny", storage=stores.storage_url)
        assert (space_of(study).sampler, space_of(study).pruner) == ("tpe", "median")
        capsys.readouterr()
        assert cli("search", "--space", "tiny.yaml", "--resume", "--sampler", "random", *stores.flags()) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "uses sampler 'tpe' and pruner 'median'" in err
        assert len(optuna.load_study(study_name="tiny", storage=stores.storage_url).trials) == 2
        assert cli("search", "--space", "tiny.yaml", "--resume", "--trials", "3", *stores.flags()) == 0
    study = optuna.load_study(study_name="tiny", storage=stores.storage_url)
    assert len(study.trials) == 3 and space_of(study).sampler == "tpe"
