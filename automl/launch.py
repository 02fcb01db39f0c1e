"""Starting workers on one study: local processes (pinned to GPUs), Ray tasks, and waiting for
workers elsewhere. Every worker runs `api.run_worker` (as `python -m automl worker`, or inside a
Ray task), so a trial runs the same way wherever it runs. URLs reach worker processes through the
environment (AUTOML_STORAGE, AUTOML_TRACKING_URI), never on their command line, where `ps` shows
passwords."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import optuna
from optuna.trial import TrialState

from automl.budget import unopened
from automl.errors import FatalError, Terminated, UsageError
from automl.keys import FAIL_REASON, PRUNED_REASON, SECONDS
from automl.progress import Progress
from automl.record import StudyHandle
from automl.requests import WorkerRequest
from automl.selection import champion_trial, primary_value
from automl.signals import signals_ignored
from automl.worker import TrialOutcome

POLL_SECONDS = 1.0


def visible_gpus() -> list[str]:
    """GPU ids this process may use (honouring CUDA_VISIBLE_DEVICES)."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [g.strip() for g in visible.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def run_local_workers(plan: WorkerRequest, workers: int, gpus: list[str], handle: StudyHandle,
                      progress: Progress) -> None:
    """`workers` worker processes on this machine (`plan` with worker indexes 0..workers-1), each
    pinned to one GPU (round robin) when there are GPUs; forwards Ctrl-C and SIGTERM to them and
    waits for them all."""
    threads = plan.threads or (None if gpus else max(1, (os.cpu_count() or 1) // workers))
    # on a terminal this process draws the one progress bar; the workers stay quiet
    quiet = plan.quiet or progress.bar is not None
    processes = []
    for index in range(workers):
        env = {**os.environ, **plan.env()}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        argv = replace(plan, worker_index=index, threads=threads, quiet=quiet).argv()
        # own session: a terminal's Ctrl-C reaches this process only, which forwards it once
        processes.append(subprocess.Popen([sys.executable, "-m", "automl", *argv], env=env,
                                          start_new_session=True))
    try:
        while any(p.poll() is None for p in processes):
            _poll_progress(handle, progress)
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt as e:
        forwarded = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
        with signals_ignored():
            for process in processes:
                if process.poll() is None:
                    process.send_signal(forwarded)
            for process in processes:
                process.wait()
        raise
    failed = [p.returncode for p in processes if p.returncode != 0]
    if failed:
        raise FatalError(f"{len(failed)} worker process(es) failed (exit codes {failed})")


def run_ray_workers(run: Callable[[WorkerRequest], Any], plan: WorkerRequest, workers: int) -> None:
    """`workers` Ray tasks, each calling `run` (the worker use case) with `plan` and its worker index,
    one GPU each where the cluster has GPUs, on the cluster RAY_ADDRESS names (or a local Ray
    instance started here)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # every worker's trial lines, not a digest
    try:
        import ray
    except ImportError:
        raise UsageError('--launcher ray: Ray is not installed (pip install "automl[ray]")') from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False, log_to_driver=not plan.quiet)
    try:
        gpus_per_task = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(_ray_worker).options(num_gpus=gpus_per_task, num_cpus=plan.threads or 1,
                                               max_retries=0)
        # no recording child: forking a Ray worker (gRPC threads) is not safe
        futures = [task.remote(run, replace(plan, worker_index=index, record_in_child=False))
                   for index in range(workers)]
        try:
            codes = ray.get(futures)
        except KeyboardInterrupt:
            for future in futures:
                ray.cancel(future)
            raise
    finally:
        if started_here:
            ray.shutdown()
    failed = [c for c in codes if c != 0]
    if failed:
        raise FatalError(f"{len(failed)} Ray worker task(s) failed (exit codes {failed})")


def _ray_worker(run: Callable[[WorkerRequest], Any], request: WorkerRequest) -> int:
    """One worker inside a Ray task (Ray sets CUDA_VISIBLE_DEVICES to the task's GPU); its exit code."""
    from automl.errors import AutomlError

    try:
        run(request)
    except AutomlError as e:
        print(f"automl: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    return 0


def wait_for_other_workers(handle: StudyHandle, progress: Progress, deadline: float | None,
                           include_queued: bool) -> None:
    """Wait until no trial is running on any worker (and, with `include_queued`, none is queued),
    failing trials whose worker stopped sending heartbeats. Reports each trial that finishes."""
    reported = {t.number for t in handle.load().get_trials(deepcopy=False) if t.state.is_finished()}
    announced = False
    while deadline is None or time.monotonic() < deadline:
        study = handle.load()
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        for trial in trials:
            if trial.state.is_finished() and trial.number not in reported:
                reported.add(trial.number)
                progress.trial(_outcome(trial, study))
        busy = [t for t in trials if t.state == TrialState.RUNNING
                or (include_queued and t.state == TrialState.WAITING)]
        pending = len(busy) + (unopened(study) if include_queued else 0)  # the budget not queued yet too
        if not pending:
            return
        if not announced and progress.bar is None and not progress.quiet:
            print(f"waiting for {pending} trial(s) on other workers ...", flush=True)
            announced = True
        time.sleep(POLL_SECONDS)


def _outcome(trial: optuna.trial.FrozenTrial, study: optuna.Study) -> TrialOutcome:
    try:
        best = champion_trial(study)
    except ValueError:
        best = None
    reason = trial.user_attrs.get(FAIL_REASON) or trial.user_attrs.get(PRUNED_REASON, "")
    return TrialOutcome(trial.number, trial.state, primary_value(trial), float(trial.user_attrs.get(SECONDS, 0.0)),
                        reason, best)


def _poll_progress(handle: StudyHandle, progress: Progress) -> None:
    if progress.bar is None:
        return
    study = handle.load()
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    complete = any(t.state == TrialState.COMPLETE for t in finished)
    progress.poll(len(finished), champion_trial(study) if complete else None)
