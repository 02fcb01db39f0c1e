"""Crash safety, driven through the real CLI in subprocesses with real signals, checked through
Optuna's and MLflow's own clients: nothing lost, nothing left RUNNING."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import optuna
import psutil
import pytest

from tests.conftest import PYTHON, TINY_SPACE, Stores, cli, ctrl_c_enabled

# trials long enough to be caught mid-training (about a second each on 2 cores)
SLOW_SPACE = TINY_SPACE.replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 40, trials: 4}")


def start(stores: Stores, space: Path, *extra: str, study: str = "crash") -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "automl", "search", "--space", str(space), "--study", study, "--device", "cpu",
         *stores.flags(), *extra],
        cwd=stores.folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_enabled,
    )


def wait_for_running_trial(stores: Stores, study: str = "crash", after: int = 0, timeout: float = 120) -> None:
    """Block until a trial numbered >= `after` is RUNNING with at least one epoch reported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name=study, storage=stores.storage_url).trials
        except KeyError:
            trials = []
        if any(t.state.name == "RUNNING" and t.number >= after and t.intermediate_values for t in trials):
            return
        time.sleep(0.2)
    raise AssertionError("no trial started running in time")


def states(stores: Stores, study: str = "crash") -> list[str]:
    return [t.state.name for t in optuna.load_study(study_name=study, storage=stores.storage_url).trials]


def runs(stores: Stores, study: str = "crash") -> tuple[list, list]:
    client = stores.client()
    experiment = client.get_experiment_by_name(study)
    found = client.search_runs([experiment.experiment_id], max_results=1000)
    return ([r for r in found if r.data.tags.get("automl.role") == "study"],
            [r for r in found if r.data.tags.get("automl.role") == "trial"])


def assert_nothing_running(stores: Stores, study: str = "crash") -> None:
    assert "RUNNING" not in states(stores, study)
    parents, children = runs(stores, study)
    assert all(r.info.status != "RUNNING" for r in parents + children), [
        (r.info.run_name, r.info.status) for r in parents + children]


@pytest.fixture
def slow_space(tmp_path: Path) -> Path:
    path = tmp_path / "slow.yaml"
    path.write_text(SLOW_SPACE)
    return path


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_signal_closes_trial_and_runs_and_keeps_best_model(stores: Stores, slow_space: Path, signum: int,
                                                            code: int) -> None:
    process = start(stores, slow_space, "--trials", "12")  # far more than run before the signal
    wait_for_running_trial(stores, after=1)  # trial 0 finished: there is a best model to keep
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    study = optuna.load_study(study_name="crash", storage=stores.storage_url)
    interrupted = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(interrupted) == 1
    expected = "interrupted (Ctrl-C)" if code == 130 else "terminated (SIGTERM)"
    assert interrupted[0].user_attrs["fail_reason"] == expected
    assert_nothing_running(stores)
    parents, children = runs(stores)
    assert parents[0].info.status == "KILLED"
    run = next(c for c in children if c.info.run_id == interrupted[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert parents[0].data.tags["automl.best_trial"] == str(study.best_trial.number)
    version = stores.client().get_model_version_by_alias("crash", "champion")
    assert version.tags["trial"] == str(study.best_trial.number)


def test_kill_9_then_same_command_resumes(stores: Stores, slow_space: Path) -> None:
    process = start(stores, slow_space)
    wait_for_running_trial(stores, after=1)
    process.kill()  # SIGKILL: no handler runs
    process.communicate(timeout=30)
    before = optuna.load_study(study_name="crash", storage=stores.storage_url).trials
    killed = [t for t in before if t.state.name == "RUNNING"]
    assert len(killed) == 1 and before[0].state.name == "COMPLETE"
    completed_run = before[0].user_attrs["mlflow_run_id"]

    again = start(stores, slow_space)  # the same command
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "marked failed" in out
    study = optuna.load_study(study_name="crash", storage=stores.storage_url)
    assert len(study.trials) == 4  # --trials is the total: the resume ran only what was missing
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    lost = study.trials[killed[0].number]
    assert lost.state.name == "FAIL" and "died mid-trial" in lost.user_attrs["fail_reason"]
    assert_nothing_running(stores)
    parents, children = runs(stores)
    assert len(parents) == 1 and len(children) == 4
    assert next(c for c in children if c.info.run_id == lost.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    assert next(c for c in children if c.info.run_id == completed_run).info.status == "FINISHED"


def test_resume_with_more_trials_adds_only_the_difference(stores: Stores, write_space) -> None:
    space = write_space()
    assert cli("search", "--space", space, "--study", "more", *stores.flags()) == 0
    assert cli("search", "--space", space, "--study", "more", "--trials", "5", "--resume", *stores.flags()) == 0
    assert states(stores, "more") == ["COMPLETE"] * 5
    parents, children = runs(stores, "more")
    assert len(parents) == 1 and len(children) == 5


def test_failing_trials_are_recorded_and_search_continues(stores: Stores, write_space) -> None:
    """A diverging trial (lr 1e30: NaN loss) and a crashing one (a layer too large to allocate)."""
    space = write_space(TINY_SPACE
                        .replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 2, trials: 8}")
                        .replace("width: {type: int, low: 16, high: 64, log: true}",
                                 "width: {type: categorical, choices: [32, 100000000000]}")
                        .replace("lr: {type: float, low: 3.0e-3, high: 1.0e-2, log: true}",
                                 "lr: {type: categorical, choices: [0.005, 1.0e30]}")
                        .replace("loss: {name: cross_entropy}", "loss: {name: mse}")
                        .replace("name: {type: categorical, choices: [adam, sgd]}", "name: sgd"))
    assert cli("search", "--space", space, "--study", "faults", "--seed", "8", *stores.flags()) == 0
    study = optuna.load_study(study_name="faults", storage=stores.storage_url)
    reasons = [t.user_attrs.get("fail_reason", "") for t in study.trials if t.state.name == "FAIL"]
    assert any("training loss became" in r for r in reasons), reasons
    assert any("RuntimeError" in r and "alloc" in r for r in reasons), reasons
    assert study.best_trial.params["lr"] == 0.005 and study.best_trial.params["width_0"] == 32
    assert_nothing_running(stores, "faults")
    _, children = runs(stores, "faults")
    failed = {t.user_attrs["mlflow_run_id"] for t in study.trials if t.state.name == "FAIL"}
    assert {c.info.run_id for c in children if c.info.status == "FAILED"} == failed


def test_every_trial_failing_exits_1_without_a_model(stores: Stores, write_space, capsys) -> None:
    space = write_space(TINY_SPACE.replace("lr: {type: float, low: 3.0e-3, high: 1.0e-2, log: true}", "lr: 1.0e9")
                        .replace("name: {type: categorical, choices: [adam, sgd]}", "name: sgd"))
    assert cli("search", "--space", space, "--study", "doomed", *stores.flags()) == 1
    assert "all 3 finished trial(s)" in capsys.readouterr().err
    assert states(stores, "doomed") == ["FAIL"] * 3
    parents, _ = runs(stores, "doomed")
    assert parents[0].info.status == "FAILED" and "automl.best_trial" not in parents[0].data.tags
    assert stores.client().search_registered_models() == []


@pytest.mark.slow
def test_memory_stays_flat_over_50_trials(stores: Stores, write_space) -> None:
    space = write_space(TINY_SPACE.replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 1, trials: 50}")
                        .replace("high: 64", "high: 256"))
    process = start(stores, space, "--quiet", study="long")
    rss: dict[int, int] = {}
    watcher = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            done = len([t for t in optuna.load_study(study_name="long", storage=stores.storage_url).trials
                        if t.state.is_finished()])
            rss[done] = watcher.memory_info().rss
        except (KeyError, psutil.NoSuchProcess):
            pass
        time.sleep(0.1)
    assert process.returncode == 0, process.stderr.read()
    early = max(v for k, v in rss.items() if 5 <= k <= 10)
    late = max(v for k, v in rss.items() if 40 <= k < 50)
    growth = (late - early) / 2**20
    print(f"resident memory: {early / 2**20:.0f} MiB around trial 10, {late / 2**20:.0f} MiB around trial 50 "
          f"(growth {growth:.1f} MiB)")
    assert growth < 100, f"resident memory grew {growth:.0f} MiB from trial 10 to 50"


@pytest.mark.slow
def test_four_workers_on_the_default_sqlite_storage(stores: Stores, write_space) -> None:
    space = write_space(TINY_SPACE.replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 1, trials: 12}"))
    process = start(stores, space, "--workers", "4", study="four")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert "database is locked" not in err
    study = optuna.load_study(study_name="four", storage=stores.storage_url)
    assert len(study.trials) == 12 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert sorted(t.number for t in study.trials) == list(range(12))
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) >= 2
    parents, children = runs(stores, "four")
    assert len(parents) == 1 and len(children) == 12
    assert len({c.data.tags["automl.trial_number"] for c in children}) == 12


def test_two_searches_on_one_study_share_it(stores: Stores, slow_space: Path) -> None:
    space = slow_space.parent / "shared.yaml"
    space.write_text(TINY_SPACE.replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 4, trials: 6}"))
    first = start(stores, space, study="shared")
    second = start(stores, space, study="shared")
    for process in (first, second):
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=stores.storage_url)
    assert len(study.trials) == 6 and all(t.state.name == "COMPLETE" for t in study.trials)
    parents, children = runs(stores, "shared")
    assert len(parents) == 1 and len(children) == 6
    versions = stores.client().search_model_versions("name='shared'")
    assert {v.tags["trial"] for v in versions} == {str(study.best_trial.number)}


def test_processes_opening_a_new_sqlite_storage_at_once(tmp_path: Path) -> None:
    """The first processes on a new SQLite file create Optuna's tables one at a time, not in a race."""
    code = (
        "import pathlib, sys, time\n"
        "from automl.storage import open_storage\n"
        "print('ready', flush=True)\n"
        "while not pathlib.Path(sys.argv[2]).exists():\n"
        "    time.sleep(0.002)\n"
        "open_storage(sys.argv[1])\n"
        "print('ok')\n"
    )
    url, go = f"sqlite:///{tmp_path / 'new.db'}", tmp_path / "go"
    processes = [subprocess.Popen([PYTHON, "-c", code, url, str(go)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(6)]
    for process in processes:  # every process has imported everything: they open it at once
        assert process.stdout.readline().strip() == "ready"
    go.touch()
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and out.strip() == "ok", err
    assert optuna.study.get_all_study_names(url) == []


def test_artifact_store_that_cannot_be_written_closes_every_run(stores: Stores, write_space, capsys) -> None:
    """Only the artifact store fails while the tracking database answers (tests run as root, so a
    regular file where the artifact folder belongs stands in for a read-only `mlruns`)."""
    space = write_space()
    blocked = stores.folder / "mlruns"
    blocked.write_text("a file where the artifact folder belongs\n")  # the study run's first artifact fails
    assert cli("search", "--space", space, "--study", "early", *stores.flags()) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Not a directory" in err and "Traceback" not in err, err
    parents, _ = runs(stores, "early")
    assert [r.info.status for r in parents] == ["FAILED"] and "Not a directory" in parents[0].data.tags[
        "automl.fail_reason"]
    assert "RUNNING" not in states(stores, "early")
    blocked.unlink()

    # the study run is there, no trial has run; then the artifact folder is blocked mid-search
    assert cli("search", "--space", space, "--study", "art", "--timeout", "0.001", *stores.flags(), "--quiet") == 0
    artifacts = Path(stores.client().get_experiment_by_name("art").artifact_location.removeprefix("file://"))
    kept = stores.folder / "kept"
    artifacts.rename(kept)
    artifacts.write_text("blocked\n")
    command = [PYTHON, "-m", "automl", "search", "--space", str(space), "--study", "art", "--device", "cpu",
               *stores.flags(), "--quiet"]
    done = subprocess.run(command, cwd=stores.folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "failed to log the trial's weights" in done.stderr, done.stderr
    study = optuna.load_study(study_name="art", storage=stores.storage_url)
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING", "WAITING"]
    assert "failed to log the trial's weights" in study.trials[0].user_attrs["fail_reason"]
    assert_nothing_running(stores, "art")
    parents, children = runs(stores, "art")
    assert parents[0].info.status == "FAILED"
    assert [c.info.status for c in children] == ["FAILED"]
    assert "Not a directory" in children[0].data.tags["automl.fail_reason"]

    artifacts.unlink()  # mended: the same command finishes the study
    kept.rename(artifacts)
    assert cli("search", "--space", space, "--study", "art", *stores.flags(), "--quiet") == 0
    assert states(stores, "art") == ["FAIL", "COMPLETE", "COMPLETE"]
    assert_nothing_running(stores, "art")


LOCKED_NET = '''
import math
import threading

from torch import nn


class Locked(nn.Module):
    """Holds a lock (cannot be pickled) and branches on its data (torch.export cannot trace it)."""

    def __init__(self, input_shape, n_outputs, hidden=32):
        super().__init__()
        self.lock = threading.Lock()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_outputs))

    def forward(self, x):
        out = self.net(x)
        if out.sum() > 1e9:
            out = out * 0
        return out
'''

LOCKED_SPACE = """\
data: {dataset: digits}
budget: {epochs: 1, trials: 2}
sampler: {name: random}
pruner: {name: none}
model:
  builder: "nets.py:Locked"
  params:
    hidden: {type: int, low: 16, high: 32}
optimizer: {name: adam, lr: 0.01}
"""


def test_error_after_the_trials_closes_the_study_run(stores: Stores) -> None:
    """A failure the input checks cannot see, in the final phase: the best network can be neither
    exported nor pickled, so logging the model fails after every trial completed."""
    (stores.folder / "nets.py").write_text(LOCKED_NET)
    space = stores.folder / "locked.yaml"
    space.write_text(LOCKED_SPACE)
    done = subprocess.run([PYTHON, "-m", "automl", "search", "--space", str(space), "--study", "locked",
                           "--device", "cpu", *stores.flags(), "--quiet"],
                          cwd=stores.folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot be saved as an MLflow model" in done.stderr and "cannot pickle" in done.stderr
    assert states(stores, "locked") == ["COMPLETE", "COMPLETE"]
    assert_nothing_running(stores, "locked")
    parents, children = runs(stores, "locked")
    assert parents[0].info.status == "FAILED"
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert stores.client().search_model_versions("name = 'locked'") == []
