"""Reloading never trusts the JSON: a tampered config is checked against the safetensors header
(shapes read without loading) before anything is built; missing files are named."""

from __future__ import annotations

import json
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import automl
from automl.checkpoint import MODEL_CONFIG, WEIGHTS, CheckpointError, load_checkpoint, save_checkpoint
from automl.config import ModelConfig
from automl.data import load_dataset
from automl.errors import FatalError
from automl.model import build_model
from tests.conftest import TINY_SPACE, Stores, cli, make_stores

STUDY = "reload"


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    config = ModelConfig("mlp", (1, 8, 8), 10, widths=(16,))
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "ckpt", build_model(config), config, preprocessing={"input_shape": [1, 8, 8]})


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / MODEL_CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_reload_round_trip(saved: Path) -> None:
    model = load_checkpoint(saved)
    again = load_checkpoint(saved)
    x = torch.rand(3, 1, 8, 8) * 16
    assert torch.equal(model(x), again(x)) and not model.training


def test_huge_widths_fail_on_the_header_before_allocating(saved: Path) -> None:
    _edit_config(saved, widths=[200000])  # a Linear(64, 200000) + Linear(200000, 10): about 1.4 GB to build
    before = _peak_rss_mb()
    with pytest.raises(CheckpointError, match=r"weights do not match model_config.json: .*\[16, 64\] in "
                                              r"model.safetensors but \[200000, 64\]"):
        load_checkpoint(saved)
    assert _peak_rss_mb() - before < 200


@pytest.mark.parametrize("widths,shown", [([-4], "[-4]"), (["wide"], '["wide"]'), (16, "16"), ([True], "[true]")])
def test_invalid_widths_are_refused_in_one_line(saved: Path, widths: object, shown: str) -> None:
    _edit_config(saved, widths=widths)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(saved)
    message = str(error.value)
    assert "invalid model config: widths must be a list of integers in 1..1048576, got " + shown in message
    assert "\n" not in message and isinstance(error.value, FatalError)


def test_missing_and_garbage_files_are_named(saved: Path) -> None:
    (saved / WEIGHTS).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable weights"):
        load_checkpoint(saved)
    (saved / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(saved)
    (saved / MODEL_CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match="model_config.json: unreadable model config"):
        load_checkpoint(saved)


# --- through the real CLI, on a real search's stores -----------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> Stores:
    folder = tmp_path_factory.mktemp("reload")
    stores = make_stores(folder, mlflow_template)
    (folder / "tiny.yaml").write_text(TINY_SPACE)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        assert cli("search", "--space", folder / "tiny.yaml", "--study", STUDY, "--trials", "2",
                   *stores.flags(), "--quiet") == 0
    np.save(folder / "one.npy", load_dataset("digits", seed=0).test.x[:1].numpy())
    return stores


def _best_model_file(stores: Stores, name: str) -> Path:
    client = stores.client()
    version = client.get_model_version_by_alias(STUDY, "champion")
    root = client.get_run(version.tags["study_run_id"]).info.artifact_uri.removeprefix("file://")
    return Path(root) / "best_model" / name


def _predict(stores: Stores, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = cli("predict", "--study", STUDY, stores.folder / "one.npy", "--tracking-uri", stores.tracking_uri)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("widths,message", [
    ([200000], "weights do not match model_config.json"),
    ([-3], "invalid model config: widths must be a list of integers"),
    (["x"], "invalid model config: widths must be a list of integers"),
])
def test_predict_refuses_a_tampered_config(searched: Stores, capsys, widths: object, message: str) -> None:
    path = _best_model_file(searched, MODEL_CONFIG)
    original = path.read_text()
    path.write_text(json.dumps({**json.loads(original), "widths": widths}))
    try:
        code, err = _predict(searched, capsys)
        assert code == 1 and err.count("\n") == 1 and message in err and "Traceback" not in err
    finally:
        path.write_text(original)
    assert _predict(searched, capsys)[0] == 0


def test_predict_names_a_deleted_metadata_file(searched: Stores, capsys, tmp_path: Path) -> None:
    path = _best_model_file(searched, "metadata.json")
    shutil.move(path, tmp_path / "metadata.json")
    try:
        code, err = _predict(searched, capsys)
        assert code == 1 and err.count("\n") == 1
        assert "best_model/metadata.json of MLflow run" in err and "file missing" in err
        with pytest.raises(CheckpointError, match="metadata.json"):
            automl.load_best(STUDY, tracking_uri=searched.tracking_uri)
    finally:
        shutil.move(tmp_path / "metadata.json", path)
