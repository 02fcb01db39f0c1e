"""The user's own network and data, end to end: through the CLI and the API, recorded in both
stores, reloaded in a fresh process; bad builders stop before anything is created."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from sklearn.datasets import load_digits, load_wine

import automl
from tests.conftest import PYTHON, Stores, cli
from tests.formats import write_image_folder

NETS = '''
import torch
from torch import nn


class SeedMLP(nn.Module):
    def __init__(self, input_shape, n_outputs, hidden=32, depth=1):
        super().__init__()
        size = 1
        for d in input_shape:
            size *= d
        layers = [nn.Flatten()]
        for _ in range(depth):
            layers += [nn.Linear(size, hidden), nn.ReLU()]
            size = hidden
        layers.append(nn.Linear(size, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def wrong_shape(input_shape, n_outputs):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(n_outputs + 1))


def not_a_module(input_shape, n_outputs):
    return 42
'''

SPACE = """\
data: {dataset: digits}
budget: {epochs: 2, trials: 2}
sampler: {name: random}
pruner: {name: none}
model:
  builder: "nets.py:SeedMLP"
  params:
    hidden: {type: int, low: 16, high: 64, log: true}
    depth: {type: int, low: 1, high: 2}
optimizer: {name: adam, lr: 0.01}
"""


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    (tmp_path / "nets.py").write_text(NETS)
    return tmp_path / "nets.py"


def test_user_network_through_the_cli_and_reload_in_a_fresh_process(stores: Stores, nets: Path) -> None:
    space = stores.folder / "mine.yaml"
    space.write_text(SPACE)
    assert cli("search", "--space", space, "--study", "mine", *stores.flags(), "--quiet") == 0
    study = optuna.load_study(study_name="mine", storage=stores.storage_url)
    assert {"hidden", "depth"} <= set(study.best_trial.params)
    version = stores.client().get_model_version_by_alias("mine", "champion")
    assert version.tags["study"] == "mine"
    script = ("import automl\n"
              f"best = automl.load_best('mine', tracking_uri={stores.tracking_uri!r})\n"
              "print(type(best.model).__name__, best.metadata['test_accuracy'])\n")
    out = subprocess.run([PYTHON, "-c", script], cwd="/", capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) > 0.5


def test_user_network_from_python_with_python_data(stores: Stores, nets: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(nets.parent))
    import nets as user_nets  # noqa: PLC0415 - the user's own module

    x, y = load_digits(return_X_y=True)
    space = {"data": {"dataset": "arrays", "task": "classification"},
             "budget": {"epochs": 3, "trials": 2}, "pruner": {"name": "none"},
             "optimizer": {"name": "adam", "lr": 0.01},
             "model": {"builder": "placeholder:SeedMLP", "params": {"hidden": {"type": "int", "low": 16, "high": 32}}}}
    space["model"]["builder"] = user_nets.SeedMLP
    result = automl.search(space, study="py", data=(x.astype(np.float32), y), storage=stores.storage_url,
                           tracking_uri=stores.tracking_uri, progress=False)
    assert result.best is not None and "hidden" in result.best.params
    assert result.best.metrics["test_accuracy"] > 0.6
    parent = stores.client().search_runs([stores.client().get_experiment_by_name("py").experiment_id],
                                         filter_string="tags.`automl.role` = 'study'")[0]
    assert parent.inputs.dataset_inputs and parent.inputs.dataset_inputs[0].dataset.digest


@pytest.mark.parametrize("builder,message", [
    ("missing.py:SeedMLP", "not found"),
    ("nets.py:Nope", "Nope"),
    ("nets.py:wrong_shape", "shape"),
    ("nets.py:not_a_module", "nn.Module"),
])
def test_bad_builders_exit_2_and_create_nothing(tmp_path: Path, nets: Path, monkeypatch, capsys, builder: str,
                                                message: str) -> None:
    monkeypatch.chdir(tmp_path)
    text = SPACE.replace('"nets.py:SeedMLP"', f'"{builder}"')
    if builder.endswith(("wrong_shape", "not_a_module")):
        text = text.replace("  params:\n    hidden: {type: int, low: 16, high: 64, log: true}\n"
                            "    depth: {type: int, low: 1, high: 2}\n", "")
    (tmp_path / "bad.yaml").write_text(text)
    before = set(tmp_path.iterdir())
    assert cli("search", "--space", "bad.yaml") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert {p.name for p in set(tmp_path.iterdir()) - before} <= {"__pycache__"}


def test_unknown_keyword_for_the_builder(tmp_path: Path, nets: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(SPACE.replace("depth: {type: int", "layers: {type: int"))
    assert cli("search", "--space", "bad.yaml") == 2
    err = capsys.readouterr().err
    assert "layers" in err and err.count("\n") == 1, err
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize("source", ["image_folder", "npz", "parquet"])
def test_new_data_sources_end_to_end(stores: Stores, source: str) -> None:
    folder = stores.folder
    if source == "image_folder":
        write_image_folder(folder / "pictures")
        data = "{dataset: image_folder, path: pictures, image_size: 8, color: grey}"
    elif source == "npz":
        x, y = load_digits(return_X_y=True)
        np.savez(folder / "digits.npz", x=x.reshape(-1, 8, 8).astype(np.uint8), y=y)
        data = "{dataset: npz, path: digits.npz}"
    else:
        frame = load_wine(as_frame=True).frame
        frame.to_parquet(folder / "wine.parquet")
        data = "{dataset: parquet, path: wine.parquet, target: target, task: classification}"
    (folder / "s.yaml").write_text(f"data: {data}\nmodel: {{family: mlp}}\nbudget: {{epochs: 2, trials: 2}}\n"
                                   "pruner: {name: none}\n")
    assert cli("search", "--space", folder / "s.yaml", "--study", source, *stores.flags(), "--quiet") == 0
    study = optuna.load_study(study_name=source, storage=stores.storage_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.user_attrs["automl.data"]["digest"]


def test_resume_on_different_data_is_refused(stores: Stores, capsys) -> None:
    frame = load_wine(as_frame=True).frame
    frame.to_csv(stores.folder / "w.csv", index=False)
    (stores.folder / "s.yaml").write_text("data: {dataset: csv, path: w.csv, target: target, task: classification}\n"
                                          "model: {family: mlp}\nbudget: {epochs: 1, trials: 1}\n")
    assert cli("search", "--space", stores.folder / "s.yaml", "--study", "d", *stores.flags(), "--quiet") == 0
    changed = frame.copy()
    changed.iloc[0, 0] += 1.0
    changed.to_csv(stores.folder / "w.csv", index=False)
    capsys.readouterr()
    assert cli("search", "--space", stores.folder / "s.yaml", "--study", "d", "--trials", "2", *stores.flags()) == 2
    assert "was created on data" in capsys.readouterr().err
    assert len(pd.DataFrame(optuna.load_study(study_name="d", storage=stores.storage_url).trials)) == 1
