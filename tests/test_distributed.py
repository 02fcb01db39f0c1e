"""Many workers on one study: PostgreSQL as the Optuna storage, a real MLflow tracking server
with a PostgreSQL backend store, worker processes joining from outside, a worker killed with
SIGKILL, and the Ray launcher on a local Ray instance. Every service is real."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import PYTHON, ROOT, TINY_SPACE

PG_ADMIN = os.environ.get("AUTOML_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres():
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL server at {PG_ADMIN}: {str(e).strip()}")


@pytest.fixture
def pg_database():
    """A fresh PostgreSQL database per test (dropped afterwards); yields a factory for more."""
    connection = _postgres()
    created: list[str] = []

    def make() -> str:
        name = f"automl_test_{uuid.uuid4().hex[:12]}"
        connection.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"

    yield make
    for name in created:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    connection.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(backend: str, folder: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a free loopback port with proxied artifacts; returns (process, URL)."""
    port = _free_port()
    log = folder / "mlflow-server.log"
    server = subprocess.Popen(
        [PYTHON, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        start_new_session=True)  # its own process group: the server and its uvicorn workers
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail("mlflow server did not start: " + log.read_text()[-3000:])
            time.sleep(0.5)


def stop(process: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
    """Signal the server's whole process group (the server and its workers) and wait."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def mlflow_server(pg_database, tmp_path: Path):
    """A tracking server with a PostgreSQL backend store."""
    server, url = start_mlflow_server(pg_database(), tmp_path)
    yield url
    stop(server)


def _automl(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "automl", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_four_workers_postgres_and_tracking_server_survive_a_sigkill(
    pg_database, mlflow_server, tmp_path: Path
) -> None:
    storage = pg_database()
    space = tmp_path / "dist.yaml"
    space.write_text(TINY_SPACE.replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 25, trials: 10}"))
    flags = ["--storage", storage, "--tracking-uri", mlflow_server, "--heartbeat-interval", "1",
             "--grace-period", "5", "--retry-failed", "1"]
    coordinator = _automl("search", "--space", str(space), "--study", "dist", "--workers", "0", *flags,
                          cwd=tmp_path)
    deadline = time.monotonic() + 120
    while "dist" not in optuna.study.get_all_study_names(storage):
        assert coordinator.poll() is None, coordinator.communicate()
        assert time.monotonic() < deadline, "the coordinator did not create the study"
        time.sleep(0.5)
    workers = [_automl("worker", "--study", "dist", *flags, "--threads", "1", cwd=tmp_path) for _ in range(4)]

    # SIGKILL the worker that is training a trial, once that trial has reported an epoch
    victim = killed_trial = None
    deadline = time.monotonic() + 180
    while victim is None:
        assert time.monotonic() < deadline, "no trial started on the workers"
        for trial in optuna.load_study(study_name="dist", storage=storage).trials:
            pid = (trial.user_attrs.get("worker") or {}).get("pid")
            if trial.state.name == "RUNNING" and trial.intermediate_values and pid in {w.pid for w in workers}:
                victim, killed_trial = next(w for w in workers if w.pid == pid), trial.number
                break
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker is victim or worker.returncode == 0, err
    out, err = coordinator.communicate(timeout=600)
    assert coordinator.returncode == 0, err

    study = optuna.load_study(study_name="dist", storage=storage)
    # the 10 budgeted trials, plus one retry of the lost trial (--retry-failed 1)
    assert len(study.trials) == 11 and sorted(t.number for t in study.trials) == list(range(11))
    assert all(t.state.is_finished() for t in study.trials)
    assert study.trials[killed_trial].state.name == "FAIL"
    retry = next(t for t in study.trials if "failed_trial" in t.system_attrs)  # numbered as it was queued
    assert retry.system_attrs["failed_trial"] == killed_trial and retry.params == study.trials[killed_trial].params
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) >= 3

    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    experiment = client.get_experiment_by_name("dist")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("automl.role") == "study"]
    children = [r for r in runs if r.data.tags.get("automl.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 11
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    lost = next(c for c in children if c.info.run_id == study.trials[killed_trial].user_attrs["mlflow_run_id"])
    assert lost.info.status == "FAILED" and "heartbeat" in lost.data.tags["automl.fail_reason"]
    assert all(c.info.status != "RUNNING" for c in children)
    versions = client.search_model_versions("name='dist'")
    assert len(versions) == 1 and versions[0].tags["trial"] == str(study.best_trial.number)
    assert client.get_model_version_by_alias("dist", "champion").version == versions[0].version


@pytest.mark.slow
def test_search_runs_its_own_workers_on_postgres(pg_database, tmp_path: Path, mlflow_template) -> None:
    from tests.conftest import make_stores

    storage = pg_database()
    stores = make_stores(tmp_path, mlflow_template)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE.replace("trials: 3", "trials: 6"))
    process = _automl("search", "--space", "tiny.yaml", "--workers", "2", "--storage", storage,
                      "--tracking-uri", stores.tracking_uri, cwd=tmp_path)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6


@pytest.mark.slow
def test_ray_launcher_on_a_local_ray_instance(tmp_path: Path, mlflow_template) -> None:
    pytest.importorskip("ray", reason='the Ray launcher needs Ray (pip install "automl[ray]")')
    from tests.conftest import make_stores

    stores = make_stores(tmp_path, mlflow_template)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE.replace("trials: 3", "trials: 6"))
    process = _automl("search", "--space", "tiny.yaml", "--launcher", "ray", "--workers", "2", *stores.flags(),
                      cwd=tmp_path)
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err
    study = optuna.load_study(study_name="tiny", storage=stores.storage_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 2
    client = stores.client()
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len([r for r in runs if r.data.tags.get("automl.role") == "trial"]) == 6


def _wait_for_finished_trial(storage: str, study: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            trials = optuna.load_study(study_name=study, storage=storage).trials
        except KeyError:
            trials = []
        if any(t.state.is_finished() for t in trials) and any(t.state.name == "RUNNING" for t in trials):
            return
        time.sleep(0.2)
    raise AssertionError("no trial finished in time")


@pytest.mark.slow
def test_tracking_server_lost_mid_search_stops_with_a_clear_error(tmp_path: Path) -> None:
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    server, url = start_mlflow_server(backend, tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = tmp_path / "lost.yaml"
    space.write_text(TINY_SPACE.replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 30, trials: 6}"))
    search = _automl("search", "--space", str(space), "--storage", storage, "--tracking-uri", url, cwd=tmp_path)
    try:
        _wait_for_finished_trial(storage, "lost", search)
    finally:
        stop(server, signal.SIGKILL)  # the tracking server is gone mid-trial
    started = time.monotonic()
    out, err = search.communicate(timeout=300)
    assert search.returncode == 1, err
    assert time.monotonic() - started < 120
    assert f"MLflow tracking ({url}) failed to" in err
    study = optuna.load_study(study_name="lost", storage=storage)
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    assert any("TrackingError" in t.user_attrs.get("fail_reason", "") for t in study.trials)
    assert "best trial" not in out  # no best model was reported...
    assert MlflowClient(backend, registry_uri=backend).search_registered_models() == []  # ...or registered


@pytest.mark.slow
def test_storage_database_dropped_mid_search_stops_with_a_clear_error(pg_database, tmp_path: Path,
                                                                       mlflow_template) -> None:
    from tests.conftest import make_stores

    stores = make_stores(tmp_path, mlflow_template)
    storage = pg_database()
    space = tmp_path / "dropped.yaml"
    space.write_text(TINY_SPACE.replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 30, trials: 6}"))
    search = _automl("search", "--space", str(space), "--storage", storage, "--tracking-uri", stores.tracking_uri,
                     cwd=tmp_path)
    _wait_for_finished_trial(storage, "dropped", search)
    connection = _postgres()
    connection.execute(f'DROP DATABASE "{storage.rsplit("/", 1)[1]}" WITH (FORCE)')  # the database is gone
    connection.close()
    started = time.monotonic()
    out, err = search.communicate(timeout=300)
    assert search.returncode == 1, err
    assert time.monotonic() - started < 120
    assert "Optuna storage failed" in err
    assert "best trial" not in out
    client = stores.client()
    runs = client.search_runs([client.get_experiment_by_name("dropped").experiment_id])
    assert all(r.info.status != "RUNNING" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert client.search_registered_models() == []


def test_kubernetes_job_manifest_runs_automl_workers() -> None:
    documents = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes-job.yaml").read_text()))
    job = next(d for d in documents if d["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:4] == ["python", "-m", "automl", "worker"]
    assert job["spec"]["parallelism"] >= 2
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_slurm_script_is_valid_bash_running_workers() -> None:
    script = ROOT / "deploy" / "slurm-workers.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH --array" in text and "python -m automl worker" in text
