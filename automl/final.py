"""A champion that is not a lucky seed: the space's `final: {top_k, seeds}` section.

After the trials, the top-k complete trials' configurations are trained again with more seeds
(the trial's own run counts as its first seed). Each configuration is ranked by the mean minus one
standard deviation of its seeds' scores (mean plus one standard deviation for a metric to
minimize); the best-ranked one wins. Its weights are the best-scoring seed's, kept on its trial
run under `final_weights/`. The scores are stored on the study (a rerun of the same command does
not train them again), mean ± std are logged on each trial run, and `selection.champion_trial`
returns the winner.

The retraining runs in the search's own process or, for a search with local worker processes
(`FinalProcesses`), as (trial, seed) jobs in as many processes at once, started like the workers:
`python` processes in their own session, each pinned to one GPU (round robin) by
CUDA_VISIBLE_DEVICES when there are GPUs. Such a process reads a JSON plan (the space as the YAML
a worker reads from the study, the data source, the jobs), loads the data as a worker does, claims
jobs one at a time (a file created exclusively) and leaves each job's score beside the plan and its
weights in the job's folder. It touches neither store and imports no MLflow: the search's process
records everything, in job order, so both ways record the same.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import optuna
import torch
from optuna.trial import FrozenTrial

from automl.checkpoint import save_checkpoint
from automl.data import Dataset
from automl.errors import AutomlError, FatalError
from automl.keys import FINAL_SEEDS, RUN_ID
from automl.model import build_model
from automl.registries import improves
from automl.selection import final_record, final_winner, top_trials
from automl.signals import signals_ignored
from automl.space import SearchSpace, parse_space, suggest
from automl.train import NonFiniteLoss, fit

if TYPE_CHECKING:  # retraining processes import this module: MLflow stays out of them
    from automl.tracking import Tracker

SEED_STRIDE = 1_000_003  # seed s of trial n trains with seed + n + s * SEED_STRIDE
POLL_SECONDS = 0.2
PLAN = "plan.json"
_CHILD = "import sys; from automl.final import retraining_process; retraining_process(sys.argv[1])"

LoadData = Callable[[SearchSpace, int, str, bool], Dataset]


@dataclass
class SeedScores:
    """One configuration's scores over its seeds (the first is the trial's own)."""

    trial: int
    scores: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def std(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0

    def robust(self, direction: str) -> float:
        """Mean minus one standard deviation (plus, for a metric to minimize): the ranking score."""
        return self.mean - self.std if direction == "maximize" else self.mean + self.std


@dataclass(frozen=True)
class FinalProcesses:
    """The retraining spread over `count` local processes at once (the search's `--workers`).

    Each process loads the data with `load_data(space, seed, data_dir, download)`, the function a
    worker loads it with (module-level: the processes import it by name), and checks that it got
    the search's data; it uses `threads` torch threads (default: the CPU cores shared out, or
    torch's default on GPUs) and runs on `device`, or on one of `gpus` (round robin)."""

    count: int
    load_data: LoadData
    data_dir: str = "data"
    device: str = "cpu"
    threads: int | None = None
    gpus: tuple[str, ...] = ()


class Retrained(NamedTuple):
    """One (trial, seed) job's score (None: training diverged) and the process that trained it."""

    value: float | None
    pid: int


def rank(results: list[SeedScores], direction: str) -> list[SeedScores]:
    """Best first by the robust score; ties by the earlier trial."""
    ordered: list[SeedScores] = []
    for item in sorted(results, key=lambda r: r.trial):
        at = next((i for i, other in enumerate(ordered)
                   if improves(item.robust(direction), other.robust(direction), direction)), len(ordered))
        ordered.insert(at, item)
    return ordered


def train_seed(space: SearchSpace, data: Dataset, trial: FrozenTrial, seed: int,
               folder: Path) -> float | None:
    """Train the trial's configuration with `seed`; its weights go to `folder`. None: training failed."""
    return _train(space, data, trial.params, trial.number, seed, folder)


def _train(space: SearchSpace, data: Dataset, params: dict[str, Any], number: int, seed: int,
           folder: Path) -> float | None:
    fixed = optuna.trial.FixedTrial(params, number=number)
    model_config, train_config = suggest(fixed, space, data.input_shape, data.n_outputs, seed)
    torch.manual_seed(seed)
    model = build_model(model_config)
    model.set_statistics(data.input_mean, data.input_std, data.target_mean, data.target_std)
    try:
        result = fit(model, data, train_config)
    except NonFiniteLoss:
        return None
    value = float(result.metrics[space.metric])
    save_checkpoint(folder, model, model_config, train_config, data.preprocessing())
    return value


def run_final(study: optuna.Study, space: SearchSpace, data: Dataset, tracker: Tracker, seed: int,
              say: Callable[[str], None], processes: FinalProcesses | None = None) -> int | None:
    """Retrain the top-k configurations with `space.final_seeds` seeds; record and return the winner.

    With `processes` (count > 1) the (trial, seed) jobs run in up to that many processes at once
    (`data`, which may stay on the CPU, only checks theirs); otherwise here, on `data`'s device."""
    from automl.runs import FINAL_WEIGHTS_DIR

    top_k, seeds = space.final_top_k, space.final_seeds
    top = top_trials(study, top_k)
    if not top or seeds < 2:
        return None
    record = final_record(study)
    if record.get("seeds") == seeds and final_winner(study) is not None:
        return final_winner(study)  # done by an earlier run of this command, on the same top-k
    jobs = [(trial, s) for trial in top for s in range(1, seeds)]
    spread = processes if processes is not None and processes.count > 1 else None
    at_once = min(spread.count, len(jobs)) if spread else 1
    say(f"final: training the top {len(top)} configuration(s) with {seeds} seeds each"
        + (f", {at_once} processes at once" if at_once > 1 else ""))
    results: list[SeedScores] = []
    kept: dict[int, tuple[float, Path]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        def folder(trial: FrozenTrial, s: int) -> Path:
            return Path(tmp) / f"{trial.number}-{s}"

        def trial_seed(trial: FrozenTrial, s: int) -> int:
            return seed + trial.number + s * SEED_STRIDE

        done: dict[tuple[int, int], Retrained] = {}
        if spread:
            done = _train_in_processes(spread, space, data, seed,
                                       [(t, trial_seed(t, s), folder(t, s)) for t, s in jobs])

        def retrained(trial: FrozenTrial, s: int) -> float | None:
            if spread:
                return done[trial.number, trial_seed(trial, s)].value
            return train_seed(space, data, trial, trial_seed(trial, s), folder(trial, s))

        for trial in top:
            scores = [float(trial.value)]  # type: ignore[arg-type]
            for s in range(1, seeds):
                value = retrained(trial, s)
                if value is None:  # a seed that diverges counts as the worst score seen
                    scores.append(min(scores) if space.direction == "maximize" else max(scores))
                    continue
                scores.append(value)
                if trial.number not in kept or improves(value, kept[trial.number][0], space.direction):
                    kept[trial.number] = (value, folder(trial, s))
            results.append(SeedScores(trial.number, scores))
            _log_seeds(tracker, trial, space.metric, results[-1])
        # a configuration whose every extra seed diverged has no weights to register
        ranked = [r for r in rank(results, space.direction) if r.trial in kept]
        if not ranked:
            return None
        winner = ranked[0]
        run_id = next(t for t in top if t.number == winner.trial).user_attrs.get(RUN_ID)
        if winner.trial in kept and run_id:
            tracker.log_folder(run_id, kept[winner.trial][1], FINAL_WEIGHTS_DIR)
    study._storage.set_study_system_attr(study._study_id, FINAL_SEEDS, {
        "top_k": top_k, "seeds": seeds, "winner": winner.trial,
        "trials": {str(r.trial): r.scores for r in results},
    })
    for r in ranked:
        say(f"final: trial {r.trial}: {space.metric} {r.mean:.4f} ± {r.std:.4f} over {len(r.scores)} seeds"
            + ("  <- champion" if r is winner else ""))
    return winner.trial


def _log_seeds(tracker: Tracker, trial: FrozenTrial, metric: str, scores: SeedScores) -> None:
    """mean ± std of the seeds on the trial's run."""
    run_id = trial.user_attrs.get(RUN_ID)
    if run_id:
        tracker.log_metrics(run_id, {f"final_mean_{metric}": scores.mean, f"final_std_{metric}": scores.std,
                                     "final_seeds": float(len(scores.scores))})


# --- the retraining in processes of its own ----------------------------------------------------


def _train_in_processes(spread: FinalProcesses, space: SearchSpace, data: Dataset, seed: int,
                        jobs: list[tuple[FrozenTrial, int, Path]]) -> dict[tuple[int, int], Retrained]:
    """Run `jobs` (trial, its seed, weights folder) in up to `spread.count` processes at once, on
    the data `data` was loaded as (with `seed`); their results by (trial number, seed). A process
    that fails stops the others and raises one FatalError line; Ctrl-C (or SIGTERM) stops them all
    and is raised again."""
    if not jobs:
        return {}
    at_once = min(spread.count, len(jobs))
    gpus = list(spread.gpus)
    threads = spread.threads or (None if gpus else max(1, (os.cpu_count() or 1) // at_once))
    plan = {
        "space": space.to_yaml(), "source": space.source,  # as a worker reads the space from the study
        "load_data": _import_path(spread.load_data), "data_dir": str(Path(spread.data_dir).resolve()),
        "seed": seed, "digest": data.identity()["digest"], "threads": threads,
        "device": "cuda" if gpus else spread.device,
        "jobs": [{"trial": t.number, "params": t.params, "seed": s, "folder": str(f)} for t, s, f in jobs],
    }
    with tempfile.TemporaryDirectory(prefix="automl-final-") as work:
        Path(work, PLAN).write_text(json.dumps(plan))
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for index in range(at_once):
                env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)]} if gpus else {})}
                # own session: a terminal's Ctrl-C reaches the search only, which stops them
                processes.append(subprocess.Popen([sys.executable, "-c", _CHILD, work], env=env,
                                                  start_new_session=True))
            _wait(processes, Path(work))
        except BaseException:
            with signals_ignored():  # a second Ctrl-C does not leave them running
                for process in processes:
                    if process.poll() is None:
                        process.terminate()
                for process in processes:
                    process.wait()
            raise
        return {(t.number, s): _result(Path(work), index, t, s) for index, (t, s, _) in enumerate(jobs)}


def _wait(processes: list[subprocess.Popen[bytes]], work: Path) -> None:
    """Until every process has ended; the first one that failed raises its error line."""
    while True:
        codes = [p.poll() for p in processes]
        for process, code in zip(processes, codes, strict=True):
            if code not in (None, 0):
                error = work / f"error-{process.pid}.txt"
                raise FatalError(f"final: {error.read_text()}" if error.is_file() else
                                 f"final: a retraining process stopped unexpectedly (exit code {code})")
        if all(code == 0 for code in codes):
            return
        time.sleep(POLL_SECONDS)


def _result(work: Path, index: int, trial: FrozenTrial, trial_seed: int) -> Retrained:
    try:
        done = json.loads((work / f"{index}.json").read_text())
    except (OSError, ValueError):
        raise FatalError(f"final: retraining trial {trial.number} with seed {trial_seed} left no score") from None
    return Retrained(done["value"], done["pid"])


def _import_path(function: Callable[..., Any]) -> str:
    """`module:name` of a module-level function (what a retraining process imports)."""
    path = f"{function.__module__}:{function.__qualname__}"
    if _imported(path) is not function:
        raise ValueError(f"FinalProcesses.load_data: {path} is not a module-level function")
    return path


def _imported(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name, None)


def retraining_process(work: str) -> None:
    """A retraining process (`python -c`, started by `_train_in_processes`): load the plan's space
    and data, then claim and train its jobs until none is left. A failure leaves one line in
    `error-<pid>.txt` and exits 1, without a traceback."""
    try:
        _retrain_jobs(Path(work))
    except BaseException as e:
        message = str(e) if isinstance(e, AutomlError) else f"{type(e).__name__}: {e}"
        Path(work, f"error-{os.getpid()}.txt").write_text((message.strip().splitlines() or [""])[0])
        raise SystemExit(1) from None


def _retrain_jobs(work: Path) -> None:
    from automl.train import resolve_device

    search = os.getppid()
    plan = json.loads((work / PLAN).read_text())
    try:
        if plan["threads"]:
            torch.set_num_threads(plan["threads"])
        space = parse_space(plan["space"], plan["source"])
        data = _imported(plan["load_data"])(space, plan["seed"], plan["data_dir"], False)
        if data.identity()["digest"] != plan["digest"]:
            raise FatalError(f"the data loaded again ({data.name}) differs from the search's: was it changed?")
        data = data.to(resolve_device(plan["device"]))
    except Exception as e:
        detail = str(e) if isinstance(e, AutomlError) else f"{type(e).__name__}: {e}"
        raise FatalError(f"a retraining process could not start: {detail}") from None
    for index, job in enumerate(plan["jobs"]):
        if os.getppid() != search:
            return  # the search is gone: nobody would read the scores
        try:
            os.close(os.open(work / f"{index}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue  # another process trains it
        try:
            value = _train(space, data, job["params"], job["trial"], job["seed"], Path(job["folder"]))
        except Exception as e:
            detail = str(e) if isinstance(e, AutomlError) else f"{type(e).__name__}: {e}"
            raise FatalError(f"retraining trial {job['trial']} with seed {job['seed']} failed: {detail}") from None
        (work / f"{index}.json").write_text(json.dumps({"value": value, "pid": os.getpid()}))
