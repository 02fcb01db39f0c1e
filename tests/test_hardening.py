"""What an adversarial pass found: duplicated or split records, leaked passwords, read-only commands
that create files. Each drives the real CLI and checks both stores through their own clients."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from automl import checks
from tests.conftest import PYTHON, TINY_SPACE, Stores, cli, ctrl_c_enabled, make_stores


def _versions(stores: Stores, name: str) -> list:
    return sorted(stores.client().search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def _study_runs(stores: Stores, name: str) -> list:
    client = stores.client()
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], filter_string="tags.`automl.role` = 'study'")


def test_interrupted_finish_is_completed_not_repeated(stores: Stores, write_space) -> None:
    """The state a kill leaves between registering the version and the last tag: the same command
    finishes the work (alias, tags) instead of registering the same trial again."""
    space = write_space()
    assert cli("search", "--space", space, "--study", "pub", *stores.flags(), "--quiet") == 0
    client = stores.client()
    parent = _study_runs(stores, "pub")[0]
    for tag in ("automl.best_trial", "automl.registered_version", "automl.best_model_uri"):
        client.delete_tag(parent.info.run_id, tag)
    client.delete_registered_model_alias("pub", "champion")
    assert cli("search", "--space", space, "--study", "pub", *stores.flags(), "--quiet") == 0
    versions = _versions(stores, "pub")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(client.get_model_version_by_alias("pub", "champion").version) == "1"
    assert client.get_run(parent.info.run_id).data.tags["automl.registered_version"] == "1"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_kill_right_after_registration_then_rerun_gives_one_version(stores: Stores, write_space,
                                                                     signum: int) -> None:
    space = write_space()
    command = [PYTHON, "-m", "automl", "search", "--space", str(space), "--study", "reg", *stores.flags(), "--quiet"]
    process = subprocess.Popen(command, cwd=stores.folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=ctrl_c_enabled)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if _versions(stores, "reg"):
                process.send_signal(signum)
                break
        except Exception:  # the registry tables may not exist yet
            pass
        time.sleep(0.05)
    process.wait(timeout=120)
    rerun = subprocess.run(command, cwd=stores.folder, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    versions = _versions(stores, "reg")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(stores.client().get_model_version_by_alias("reg", "champion").version) == "1"
    runs = stores.client().search_runs([stores.client().get_experiment_by_name("reg").experiment_id])
    assert all(r.info.status != "RUNNING" for r in runs)


def test_passwords_are_masked_everywhere() -> None:
    url = "postgresql://automl:s3cret@db.example:5432/optuna"
    assert checks.mask_url(url) == "postgresql://automl:***@db.example:5432/optuna"
    assert checks.without_password(url) == "postgresql://automl@db.example:5432/optuna"
    assert "s3cret" not in checks.mask_text("connection failed for automl:s3cret (password s3cret)", url)
    assert checks.mask_url("http://user:pw@host:5000") == "http://user:***@host:5000"


def test_storage_error_never_prints_the_password(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    code = cli("search", "--space", "tiny.yaml", "--storage", "postgresql://u:topsecret@127.0.0.1:1/none",
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    err = capsys.readouterr()
    assert code == 1 and "topsecret" not in err.err + err.out and "***" in err.err, err


def test_workers_get_urls_by_environment_not_argv() -> None:
    from automl.requests import WorkerRequest

    plan = WorkerRequest("s", "postgresql://u:pw@h/db", "http://h:5000", "cpu", "data")
    argv = plan.argv()
    assert not any("pw" in a or "postgresql" in a for a in argv)
    assert plan.env() == {"AUTOML_STORAGE": "postgresql://u:pw@h/db", "AUTOML_TRACKING_URI": "http://h:5000"}


def test_storage_url_from_the_environment(stores: Stores, write_space, monkeypatch) -> None:
    monkeypatch.setenv("AUTOML_STORAGE", stores.storage_url)
    monkeypatch.setenv("AUTOML_TRACKING_URI", stores.tracking_uri)
    assert cli("search", "--space", write_space(), "--study", "env", "--trials", "1", "--quiet") == 0
    study = optuna.load_study(study_name="env", storage=stores.storage_url)
    assert study.user_attrs["automl.tracking_uri"].endswith("mlflow.db")


def test_resume_with_another_tracking_store_is_refused(stores: Stores, write_space, capsys,
                                                        mlflow_template: Path) -> None:
    space = write_space()
    assert cli("search", "--space", space, "--study", "bound", "--trials", "1", *stores.flags(), "--quiet") == 0
    other = make_stores(stores.folder / "other", mlflow_template)
    code = cli("search", "--space", space, "--study", "bound", "--trials", "2", "--storage", stores.storage_url,
               "--tracking-uri", other.tracking_uri)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is recorded in" in err, err
    assert len(optuna.load_study(study_name="bound", storage=stores.storage_url).trials) == 1
    assert other.client().get_experiment_by_name("bound") is None


def test_resume_without_tracking_flag_uses_the_study_store(stores: Stores, write_space, monkeypatch) -> None:
    space = write_space()
    assert cli("search", "--space", space, "--study", "home", "--trials", "1", *stores.flags(), "--quiet") == 0
    elsewhere = stores.folder / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli("search", "--space", space, "--study", "home", "--trials", "2", "--storage", stores.storage_url,
               "--quiet") == 0
    assert len(_study_runs(stores, "home")) == 1
    assert len(optuna.load_study(study_name="home", storage=stores.storage_url).trials) == 2
    assert not (elsewhere / "mlflow.db").exists()


def test_deleted_study_run_is_replaced_and_said(stores: Stores, write_space, capsys) -> None:
    space = write_space()
    assert cli("search", "--space", space, "--study", "gone", "--trials", "1", *stores.flags(), "--quiet") == 0
    old = _study_runs(stores, "gone")[0].info.run_id
    stores.client().delete_run(old)
    capsys.readouterr()
    assert cli("search", "--space", space, "--study", "gone", "--trials", "2", *stores.flags()) == 0
    assert "was deleted in MLflow" in capsys.readouterr().out
    runs = _study_runs(stores, "gone")
    assert len(runs) == 1 and runs[0].info.run_id != old and runs[0].info.status == "FINISHED"


@pytest.mark.parametrize("command", [["studies"], ["report", "--study", "x"], ["best", "--study", "x"]])
def test_read_only_commands_create_nothing(tmp_path: Path, monkeypatch, capsys, command: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code = cli(*command)
    out = capsys.readouterr()
    assert code in (0, 2) and "Traceback" not in out.err
    assert "nothing" in (out.out + out.err) or "no studies" in out.out
    assert list(tmp_path.iterdir()) == []


def test_study_name_with_a_trailing_newline_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    assert cli("search", "--space", "tiny.yaml", "--study", "name\n") == 2
    assert "invalid study name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


@pytest.mark.parametrize("uri,message", [
    ("file:///tmp/mlruns", "file store"),
    ("sqlite:////sys/kernel/mlflow.db", "system folder"),
    ("NOTDB", "not an SQLite database"),
])
def test_tracking_uris_that_cannot_be_opened(tmp_path: Path, monkeypatch, capsys, uri: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    if uri == "NOTDB":
        (tmp_path / "notes.txt").write_text("not a database\n" * 10)
        uri = f"sqlite:///{tmp_path / 'notes.txt'}"
    started = time.monotonic()
    assert cli("search", "--space", "tiny.yaml", "--tracking-uri", uri) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert time.monotonic() - started < 30


def test_ctrl_c_in_the_first_trial_says_interrupted(stores: Stores, write_space) -> None:
    space = write_space(TINY_SPACE.replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 60, trials: 2}"))
    process = subprocess.Popen([PYTHON, "-m", "automl", "search", "--space", str(space), "--study", "first",
                                *stores.flags()], cwd=stores.folder, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_enabled)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name="first", storage=stores.storage_url).trials
            if any(t.state.name == "RUNNING" and t.intermediate_values for t in trials):
                break
        except KeyError:
            pass
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err and "failed or were pruned" not in err, err
    assert _study_runs(stores, "first")[0].info.status == "KILLED"


def test_resume_without_seed_keeps_the_study_seed_and_its_data(stores: Stores, write_space, capsys) -> None:
    """The data's identity is computed with the study's seed, so a plain resume is not refused as
    "other data"; asking for another seed is refused with one line."""
    space = write_space()
    assert cli("search", "--space", space, "--study", "seeded", "--trials", "1", "--seed", "3",
               *stores.flags(), "--quiet") == 0
    assert cli("search", "--space", space, "--study", "seeded", "--trials", "2", *stores.flags(), "--quiet") == 0
    study = optuna.load_study(study_name="seeded", storage=stores.storage_url)
    assert len(study.trials) == 2 and study.user_attrs["automl.seed"] == 3
    capsys.readouterr()
    assert cli("search", "--space", space, "--study", "seeded", "--trials", "3", "--seed", "4",
               *stores.flags()) == 2
    err = capsys.readouterr().err
    assert "created with seed 3, not 4" in err and err.count("\n") == 1, err


def test_errors_name_the_model_or_run_not_a_temporary_folder(stores: Stores, write_space, capsys) -> None:
    """A model or weights file that cannot be loaded is named where it is kept (the logged model,
    the run's artifact folder), not by the temporary copy that is gone when the message is read."""
    import mlflow

    from automl.checkpoint import CheckpointError
    from automl.tracking import Tracker

    space = write_space()
    command = ("search", "--space", space, "--study", "named", "--trials", "1", *stores.flags(), "--quiet")
    assert cli(*command) == 0
    client = stores.client()
    version = client.get_model_version_by_alias("named", "champion")
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    served = Path(model.artifact_location.removeprefix("file://")) / "automl" / "model_config.json"
    kept = served.read_text()
    served.write_text("{")
    with Tracker(stores.tracking_uri)._fluent_uris(), pytest.raises(CheckpointError) as caught:
        mlflow.pyfunc.load_model("models:/named@champion")
    assert str(caught.value).startswith(f"models:/{model.model_id}/automl/model_config.json: unreadable model config")
    served.write_text(kept)

    trial_run = optuna.load_study(study_name="named", storage=stores.storage_url).best_trial.user_attrs["mlflow_run_id"]
    weights = client.get_run(trial_run).info.artifact_uri.removeprefix("file://") + "/weights/model_config.json"
    Path(weights).write_text("{")
    capsys.readouterr()
    assert cli(*command) == 1  # the summary of the same command evaluates those weights again
    err = capsys.readouterr().err
    assert f"{weights}: unreadable model config" in err and err.count("\n") == 1, err
    assert _study_runs(stores, "named")[0].info.status == "FAILED"
