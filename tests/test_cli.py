"""Bad input: exit code 2, one line naming the problem, and nothing created in either store."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, TINY_SPACE, cli
from tests.formats import write_mnist


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "broken.yaml").write_text("data: {dataset: digits\n")
    (tmp_path / "inverted.yaml").write_text(TINY_SPACE.replace("low: 1, high: 2", "low: 2, high: 1"))
    (tmp_path / "logzero.yaml").write_text(TINY_SPACE.replace("low: 3.0e-3", "low: 0.0"))
    (tmp_path / "unknown_dataset.yaml").write_text(TINY_SPACE.replace("dataset: digits", "dataset: svhn"))
    (tmp_path / "mnist.yaml").write_text(TINY_SPACE.replace("dataset: digits", "dataset: mnist"))
    csv_space = TINY_SPACE.replace("data: {dataset: digits}",
                                   "data: {dataset: csv, path: table.csv, target: y, task: classification}")
    (tmp_path / "csv.yaml").write_text(csv_space)
    (tmp_path / "csv_target.yaml").write_text(csv_space.replace("target: y", "target: label"))
    (tmp_path / "table.csv").write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(30)))
    (tmp_path / "malformed.yaml").write_text(csv_space.replace("table.csv", "malformed.csv"))
    (tmp_path / "malformed.csv").write_text('a,y\n1,"0\n2,1,3,4\n')
    return tmp_path


STORES = ["--storage", "sqlite:///optuna.db", "--tracking-uri", "sqlite:///mlflow.db"]
BAD = [
    (["--space", "missing.yaml"], "missing.yaml: search space file not found"),
    (["--space", "empty.yaml"], "empty.yaml: the search space is empty"),
    (["--space", "broken.yaml"], "broken.yaml: invalid YAML at line"),
    (["--space", "inverted.yaml"], "inverted.yaml: model.depth: `low <= high` must hold"),
    (["--space", "logzero.yaml"], "logzero.yaml: optimizer.lr: `low > 0` must hold for `log=True`"),
    (["--space", "unknown_dataset.yaml"], "unknown_dataset.yaml: data.dataset: expected one of"),
    (["--space", "mnist.yaml", "--data-dir", "nowhere"], "mnist: data not found in nowhere/MNIST/raw"),
    (["--space", "malformed.yaml"], "malformed.csv: malformed CSV"),
    (["--space", "csv_target.yaml"], "table.csv: no target column 'label'"),
    (["--space", "tiny.yaml", "--trials", "0"], "--trials: must be at least 1, got 0"),
    (["--space", "tiny.yaml", "--timeout", "-5"], "--timeout: must be positive, got -5"),
    (["--space", "tiny.yaml", "--device", "tpu"], "--device: unknown device 'tpu'"),
    (["--space", "tiny.yaml", "--storage", "not a url"], "--storage: malformed database URL 'not a url'"),
    (["--space", "tiny.yaml", "--storage", "redis://localhost"], "--storage: unsupported database 'redis'"),
    (["--space", "tiny.yaml", "--tracking-uri", "ftp://x"], "--tracking-uri: unsupported URI 'ftp://x'"),
    (["--space", "tiny.yaml", "--tracking-uri", "http://bad host:5000"], "--tracking-uri: malformed URL"),
    (["--space", "tiny.yaml", "--study", "../etc"], "--study: invalid study name '../etc'"),
    (["--space", "tiny.yaml", "--study", "a\x07b"], "--study: invalid study name"),
    (["--space", "tiny.yaml", "--resume"], "--resume: no study named 'tiny'"),
    (["--space", "tiny.yaml", "--pruner", "percentile"], "--pruner: percentile needs its `percentile` option"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_exits_2_with_one_line_and_creates_nothing(workdir: Path, capsys, args: list[str],
                                                              message: str) -> None:
    before = set(workdir.iterdir())
    code = cli("search", *args, *(STORES if not {"--storage", "--tracking-uri"} & set(args) else []))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("automl: error: "), err
    assert message in err, err
    created = {p.name for p in set(workdir.iterdir()) - before}
    # --resume opens the storage to look for the study: an empty database (and the lock file that
    # serialises its creation), but no study and no run
    allowed = {"optuna.db", "optuna.db-wal", "optuna.db-shm", "optuna.db.lock"} if "--resume" in args else set()
    assert created <= allowed, created


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda(workdir: Path, capsys) -> None:
    assert cli("search", "--space", "tiny.yaml", "--device", "cuda", *STORES) == 2
    assert "--device: cuda requested, but CUDA is not available" in capsys.readouterr().err
    assert not (workdir / "optuna.db").exists() and not (workdir / "mlflow.db").exists()


def test_bad_input_in_a_subprocess(workdir: Path) -> None:
    done = subprocess.run([PYTHON, "-m", "automl", "search", "--space", "inverted.yaml", *STORES],
                          cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "automl: error: inverted.yaml: model.depth: `low <= high` must hold, but got (low=2, high=1)."]
    assert not (workdir / "optuna.db").exists() and not (workdir / "mlflow.db").exists()


def test_space_of_another_study_is_refused(workdir: Path, capsys) -> None:
    assert cli("search", "--space", "tiny.yaml", "--study", "one", "--trials", "1", *STORES) == 0
    other = workdir / "other.yaml"
    other.write_text(TINY_SPACE.replace("high: 64", "high: 128"))
    capsys.readouterr()
    assert cli("search", "--space", "other.yaml", "--study", "one", *STORES) == 2
    assert "study 'one' already exists with another search space" in capsys.readouterr().err


def test_mnist_from_data_dir(workdir: Path) -> None:
    write_mnist(workdir / "data")
    assert cli("search", "--space", "mnist.yaml", "--trials", "1", "--data-dir", "data", *STORES) == 0
