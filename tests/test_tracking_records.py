"""What MLflow holds after a search, read through `MlflowClient`: the data on every run, and a
registered version that describes the winning trial and points at its run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import optuna
import pytest
import torch

from automl.tracking import Tracker
from tests.conftest import TINY_SPACE, Stores, cli, make_stores

STUDY = "records"


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> Stores:
    folder = tmp_path_factory.mktemp("records")
    stores = make_stores(folder, mlflow_template)
    (folder / "tiny.yaml").write_text(TINY_SPACE)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        assert cli("search", "--space", folder / "tiny.yaml", "--study", STUDY, *stores.flags(), "--quiet") == 0
    return stores


def _runs(stores: Stores) -> tuple[list, list]:
    client = stores.client()
    found = client.search_runs([client.get_experiment_by_name(STUDY).experiment_id])
    return ([r for r in found if r.data.tags["automl.role"] == "study"],
            [r for r in found if r.data.tags["automl.role"] == "trial"])


def test_every_trial_run_carries_the_study_data(searched: Stores) -> None:
    identity = optuna.load_study(study_name=STUDY, storage=searched.storage_url).user_attrs["automl.data"]
    (parent,), children = _runs(searched)
    assert len(children) == 3

    def described(run) -> list[tuple]:
        return [(i.dataset.name, i.dataset.digest, i.dataset.source, i.dataset.profile)
                for i in run.inputs.dataset_inputs]

    (name, digest, source, profile), = described(parent)
    assert (name, digest) == (identity["name"], identity["digest"][:36])
    assert json.loads(source)["source"] == identity["source"]
    assert json.loads(profile)["rows"] == identity["rows"] and json.loads(profile)["shapes"]
    assert all(described(child) == described(parent) for child in children)


def test_registered_version_describes_and_points_at_the_winning_trial(searched: Stores) -> None:
    client = searched.client()
    best = optuna.load_study(study_name=STUDY, storage=searched.storage_url).best_trial
    version = client.get_model_version_by_alias(STUDY, "champion")
    assert version.run_id == best.user_attrs["mlflow_run_id"]  # the run that trained it
    trained = client.get_run(version.run_id)
    assert trained.data.tags["automl.trial_number"] == str(best.number)

    tags = version.tags
    assert {k.removeprefix("param."): v for k, v in tags.items() if k.startswith("param.")} == {
        k: str(v) for k, v in best.params.items()}
    assert float(tags["val_accuracy"]) == pytest.approx(best.value, rel=1e-5)
    assert float(tags["val_loss"]) == pytest.approx(best.user_attrs["final_metrics"]["val_loss"], rel=1e-5)
    parent = client.get_run(tags["study_run_id"])
    assert float(tags["test_accuracy"]) == parent.data.metrics["test_accuracy"]
    assert (tags["study"], tags["trial"], tags["trial_run_id"], tags["data"]) == (
        STUDY, str(best.number), version.run_id, "digits")
    for words in (f"Study {STUDY}", f"trial {best.number}", f"val_accuracy={best.value:.4f}", "test_accuracy=",
                  "data digits"):
        assert words in version.description

    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert model.experiment_id == parent.info.experiment_id  # the study's experiment, not Default
    assert model.source_run_id == parent.info.run_id
    assert {k: model.params[k] for k in best.params} == {k: str(v) for k, v in best.params.items()}
    assert {m.key: m.value for m in model.metrics}["test_accuracy"] == parent.data.metrics["test_accuracy"]
    with Tracker(searched.tracking_uri)._fluent_uris():
        net = mlflow.pytorch.load_model(f"models:/{STUDY}@champion")
    assert isinstance(net, torch.nn.Module) and net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_trial_runs_of_a_study_run_without_data_get_none(tmp_path: Path, mlflow_template: Path) -> None:
    """A study run logged without a dataset input (an older study): its trial runs start all the same."""
    stores = make_stores(tmp_path, mlflow_template)
    tracker = Tracker(stores.tracking_uri)
    experiment = tracker.experiment_id("bare")
    parent = tracker.start_study_run(experiment, "bare", {}, "space")
    run = tracker.start_trial(experiment, parent, "bare", 0)
    run.end("FINISHED", {})
    assert stores.client().get_run(run.run_id).inputs.dataset_inputs == []
