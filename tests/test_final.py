"""The seed-robust champion (`final: {top_k, seeds}`): ranking, retraining, records in both stores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from safetensors.torch import load_file

import automl
from automl import final
from automl.checkpoint import WEIGHTS
from automl.errors import FatalError
from automl.final import SEED_STRIDE, FinalProcesses, SeedScores, rank, train_seed
from automl.keys import RUN_ID
from automl.selection import champion_trial, final_record, top_trials
from automl.tracking import FINAL_WEIGHTS_DIR
from tests.conftest import TINY_SPACE, cli


def _study(values: list[float | None], direction: str = "maximize") -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for value in values:
        state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
        study.add_trial(create_trial(state=state, value=value, params={"x": 0.5},
                                     distributions={"x": FloatDistribution(0, 1)}))
    return study


def test_top_trials_are_the_best_complete_ones_ties_by_trial_number() -> None:
    study = _study([0.9, None, 0.95, 0.95, 0.8])
    assert [t.number for t in top_trials(study, 3)] == [2, 3, 0]
    assert [t.number for t in top_trials(_study([0.3, 0.1, 0.2], "minimize"), 2)] == [1, 2]


def test_a_steady_configuration_beats_a_lucky_seed() -> None:
    lucky = SeedScores(trial=3, scores=[0.99, 0.90, 0.91])  # mean 0.933, std 0.049
    steady = SeedScores(trial=7, scores=[0.96, 0.95, 0.96])  # mean 0.957, std 0.006
    assert [r.trial for r in rank([lucky, steady], "maximize")] == [7, 3]
    assert steady.robust("maximize") == pytest.approx(steady.mean - steady.std)
    # to minimize, the spread counts against as well
    low = SeedScores(trial=1, scores=[0.10, 0.30])
    high = SeedScores(trial=2, scores=[0.21, 0.22])
    assert [r.trial for r in rank([low, high], "minimize")] == [2, 1]


def test_equal_robust_scores_keep_the_earlier_trial() -> None:
    a, b = SeedScores(trial=5, scores=[0.9, 0.9]), SeedScores(trial=2, scores=[0.9, 0.9])
    assert [r.trial for r in rank([a, b], "maximize")] == [2, 5]


def test_search_with_final_registers_the_robust_winner(stores, tmp_path, capsys) -> None:
    """A real search with `final: {top_k: 2, seeds: 2}`: the top 2 trained again, mean ± std on
    their runs and the version, the winner's retrained weights registered; the same command again
    does not retrain."""
    space = tmp_path / "robust.yaml"
    space.write_text(TINY_SPACE.replace("trials: 3}", "trials: 4}") + "final: {top_k: 2, seeds: 2}\n")
    assert cli("search", "--space", space, *stores.flags()) == 0
    out = capsys.readouterr().out
    assert "final: training the top 2 configuration(s) with 2 seeds each" in out and "<- champion" in out

    study = optuna.load_study(study_name="robust", storage=stores.storage_url)
    record = final_record(study)
    assert sorted(map(int, record["trials"])) == sorted(t.number for t in top_trials(study, 2))
    scored = [SeedScores(int(n), s) for n, s in record["trials"].items()]
    assert all(len(s.scores) == 2 and s.scores[0] == study.trials[s.trial].value for s in scored)
    assert record["winner"] == rank(scored, "maximize")[0].trial == champion_trial(study).number

    client = stores.client()
    for s in scored:
        run = client.get_run(study.trials[s.trial].user_attrs[RUN_ID])
        assert run.data.metrics["final_seeds"] == 2
        assert run.data.metrics["final_mean_val_accuracy"] == pytest.approx(s.mean)
        assert run.data.metrics["final_std_val_accuracy"] == pytest.approx(s.std)
    winner_run = study.trials[record["winner"]].user_attrs[RUN_ID]
    assert {a.path for a in client.list_artifacts(winner_run)} >= {FINAL_WEIGHTS_DIR}
    version = client.get_model_version_by_alias("robust", "champion")
    assert version.tags["trial"] == str(record["winner"]) and version.tags["final_seeds"] == "2"
    assert automl.load_best("robust", tracking_uri=stores.tracking_uri).metadata["trial"] == record["winner"]

    assert cli("search", "--space", space, *stores.flags()) == 0  # nothing left to run or retrain
    assert "final: training" not in capsys.readouterr().out
    assert len(client.search_model_versions("name='robust'")) == 1


def test_final_needs_two_seeds_and_one_objective(stores, tmp_path, capsys) -> None:
    for extra, message in [("final: {top_k: 2}\n", "final.seeds: missing"),
                           ("final: {seeds: 1}\n", "final.seeds: expected a whole number >= 2"),
                           ("objective: {metrics: [val_accuracy, n_parameters]}\nfinal: {seeds: 2}\n",
                            "final: the seed-robust final phase ranks one objective")]:
        space = tmp_path / "bad.yaml"
        space.write_text(TINY_SPACE.replace("objective: {metric: val_accuracy}\n", "") + extra)
        assert cli("search", "--space", space, *stores.flags()) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "optuna.db").exists() or not optuna.get_all_study_names(stores.storage_url)


def test_final_retraining_runs_in_the_search_worker_processes(stores, tmp_path, monkeypatch, capsys) -> None:
    """`--workers 2`: the (trial, seed) jobs run in processes of their own (their pids come back with the
    scores), and the records are those of training in this process: the same scores for the same
    seeds, the winner's best-seed weights under `final_weights/`, no run left RUNNING."""
    from mlflow.artifacts import download_artifacts

    from automl.api import _load_data
    from automl.record import space_of

    pids: list[int] = []
    in_processes = final._train_in_processes

    def recorded(*args, **kwargs):
        done = in_processes(*args, **kwargs)
        pids.extend(r.pid for r in done.values())
        return done

    monkeypatch.setattr(final, "_train_in_processes", recorded)
    space = tmp_path / "spread.yaml"
    space.write_text(TINY_SPACE + "final: {top_k: 2, seeds: 2}\n")
    threads = torch.get_num_threads()
    try:
        assert cli("search", "--space", space, "--workers", "2", "--threads", "1", "--seed", "3",
                   *stores.flags()) == 0
        out = capsys.readouterr().out
        assert "final: training the top 2 configuration(s) with 2 seeds each, 2 processes at once" in out
        assert len(pids) == 2 and os.getpid() not in pids  # trained elsewhere, one score per job

        study = optuna.load_study(study_name="spread", storage=stores.storage_url)
        record = final_record(study)
        top = top_trials(study, 2)
        assert sorted(map(int, record["trials"])) == sorted(t.number for t in top)
        # the same jobs trained here, as the search does without worker processes
        data = _load_data(space_of(study), 3, "data", False)
        here: dict[int, tuple[float | None, Path]] = {}
        for trial in top:
            folder = tmp_path / f"here-{trial.number}"
            here[trial.number] = (train_seed(space_of(study), data, trial, 3 + trial.number + SEED_STRIDE, folder),
                                  folder)
            assert record["trials"][str(trial.number)] == [trial.value, here[trial.number][0]]
    finally:
        torch.set_num_threads(threads)
    scored = [SeedScores(int(n), s) for n, s in record["trials"].items()]
    assert record["winner"] == rank(scored, "maximize")[0].trial == champion_trial(study).number

    client = stores.client()
    winner_run = study.trials[record["winner"]].user_attrs[RUN_ID]
    logged = download_artifacts(run_id=winner_run, artifact_path=FINAL_WEIGHTS_DIR, dst_path=str(tmp_path / "got"),
                                tracking_uri=stores.tracking_uri)
    got, expected = load_file(str(Path(logged) / WEIGHTS)), load_file(str(here[record["winner"]][1] / WEIGHTS))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    for s in scored:
        run = client.get_run(study.trials[s.trial].user_attrs[RUN_ID])
        assert run.data.metrics["final_mean_val_accuracy"] == pytest.approx(s.mean)
    experiment = client.get_experiment_by_name("spread").experiment_id
    assert [r.info.status for r in client.search_runs([experiment]) if r.info.status == "RUNNING"] == []


def test_a_failed_retraining_process_is_one_error_line(tmp_path, capfd) -> None:
    """A process that cannot start (here: its data file is gone) fails the phase with one FatalError line."""
    from automl.api import _load_data
    from automl.space import parse_space

    table = tmp_path / "table.csv"
    table.write_text("a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    csv = f"data: {{dataset: csv, path: {table}, target: y, task: classification}}"
    space = parse_space(TINY_SPACE.replace("data: {dataset: digits}", csv), "table.yaml")
    data = _load_data(space, 0, "data", False)
    table.unlink()
    trial = create_trial(state=TrialState.COMPLETE, value=0.5, params={"x": 0.5},
                         distributions={"x": FloatDistribution(0, 1)})
    with pytest.raises(FatalError) as failed:
        final._train_in_processes(FinalProcesses(2, _load_data), space, data, 0, [(trial, 1, tmp_path / "0-1")])
    message = str(failed.value)
    assert message.startswith("final: a retraining process could not start: ") and str(table) in message
    assert "\n" not in message and failed.value.__cause__ is None and failed.value.__context__ is None
    assert "Traceback" not in capfd.readouterr().err  # the process printed none either


def test_each_retraining_process_is_pinned_to_one_gpu(monkeypatch, tmp_path) -> None:
    """With GPUs, process i sees only GPU i (round robin, by CUDA_VISIBLE_DEVICES, as the workers),
    in a session of its own; the scores come back in job order whichever process trained them.
    (The processes are stood in for: this machine may have no GPU.)"""
    from automl.api import _load_data
    from automl.space import parse_space

    space = parse_space(TINY_SPACE, "tiny.yaml")
    data = _load_data(space, 0, "data", False)
    started: list[tuple[str | None, str, int | None, bool]] = []

    class Process:
        def __init__(self, argv: list[str], env: dict[str, str], start_new_session: bool) -> None:
            work = Path(argv[-1])
            plan = json.loads((work / final.PLAN).read_text())
            started.append((env.get("CUDA_VISIBLE_DEVICES"), plan["device"], plan["threads"], start_new_session))
            self.pid = 100 + len(started)
            for index, job in enumerate(plan["jobs"]):  # the last process started trains them all
                (work / f"{index}.json").write_text(json.dumps({"value": job["seed"] / 10, "pid": self.pid}))

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(final.subprocess, "Popen", Process)
    trials = [create_trial(state=TrialState.COMPLETE, value=0.5, params={"x": 0.5},
                           distributions={"x": FloatDistribution(0, 1)}) for _ in range(3)]
    for number, trial in enumerate(trials):
        trial.number = number
    jobs = [(trial, 7 + trial.number, tmp_path / str(trial.number)) for trial in trials]
    done = final._train_in_processes(FinalProcesses(4, _load_data, gpus=("3", "5")), space, data, 0, jobs)
    assert started == [("3", "cuda", None, True), ("5", "cuda", None, True), ("3", "cuda", None, True)]
    assert done == {(0, 7): (0.7, 103), (1, 8): (0.8, 103), (2, 9): (0.9, 103)}
