"""Shared fixtures: real Optuna and MLflow stores (SQLite under tmp_path) and tiny search spaces."""

from __future__ import annotations

import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from automl.cli import main

ROOT = Path(__file__).resolve().parent.parent

TINY_SPACE = """\
data: {dataset: digits}
objective: {metric: val_accuracy}
budget: {epochs: 2, trials: 3}
sampler: {name: random}
pruner: {name: none}
model:
  family: mlp
  depth: {type: int, low: 1, high: 2}
  width: {type: int, low: 16, high: 64, log: true}
  activation: {type: categorical, choices: [relu, tanh]}
loss: {name: cross_entropy}
optimizer:
  name: {type: categorical, choices: [adam, sgd]}
  lr: {type: float, low: 3.0e-3, high: 1.0e-2, log: true}
training: {batch_size: 64}
"""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow test: run with --runslow"))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none on this machine"))


@dataclass
class Stores:
    folder: Path
    tracking_uri: str
    storage_url: str

    def flags(self) -> list[str]:
        return ["--tracking-uri", self.tracking_uri, "--storage", self.storage_url]

    def client(self):
        """An MLflow client on these stores (registry included, whatever the process default)."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow database, created once (its migrations take seconds) and copied per test."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def make_stores(folder: Path, template: Path) -> Stores:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, folder / "mlflow.db")
    return Stores(folder, f"sqlite:///{folder / 'mlflow.db'}", f"sqlite:///{folder / 'optuna.db'}")


@pytest.fixture
def stores(tmp_path: Path, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch) -> Stores:
    """Fresh stores in tmp_path, which is also the working directory (for ./mlruns)."""
    monkeypatch.chdir(tmp_path)
    return make_stores(tmp_path, mlflow_template)


@pytest.fixture
def write_space(tmp_path: Path):
    def write(text: str = TINY_SPACE, name: str = "tiny.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def cli(*args: str) -> int:
    """Run the CLI in-process, as a script would (returns the exit code)."""
    return main([str(a) for a in args])


PYTHON = sys.executable


def ctrl_c_enabled() -> None:
    """`preexec_fn` for CLI subprocesses that a test interrupts: Ctrl-C (SIGINT) acts as on a
    terminal even when this test run inherited it ignored (as background jobs of a script do)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
