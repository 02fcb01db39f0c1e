"""Command line: argument parsing and one function per subcommand. `main(argv) -> exit code`.

Exit codes: 0 success, 1 runtime failure, 2 bad input, 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from automl.errors import FatalError, Terminated, UsageError

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "digits_mlp.yaml"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _quiet_libraries() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic", "urllib3", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")


def _common_store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///optuna.db)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db)")


def _worker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--data-dir", default="data", help="folder with torchvision-layout datasets (default: data)")
    p.add_argument("--download", action="store_true", help="download a missing torchvision dataset")
    p.add_argument("--timeout", type=_positive_float, help="start no new trial after this many seconds")
    p.add_argument("--heartbeat-interval", type=_positive_int, default=10,
                   help="seconds between a running trial's heartbeats (default 10)")
    p.add_argument("--grace-period", type=_positive_int, default=60,
                   help="seconds without heartbeat after which a trial counts as lost (default 60)")
    p.add_argument("--retry-failed", type=int, default=0, metavar="N",
                   help="re-run a trial whose worker was lost, at most N times (default 0)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for training (default: all)")
    p.add_argument("--quiet", action="store_true", help="only errors and the final summary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automl", description="Search for a good PyTorch network with Optuna, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True)

    search = sub.add_parser("search", help="run (or resume) a search", description=(
        "Run a search. --trials is the study's total: running the same command again resumes "
        "the study and runs only the trials still missing."))
    search.add_argument("--space", default=str(DEFAULT_SPACE), help="YAML search space (default: digits_mlp.yaml)")
    search.add_argument("--trials", type=_positive_int, help="total trials in the study (default: from the space)")
    search.add_argument("--study", help="study name (default: the space file's name)")
    search.add_argument("--seed", type=int, help="seed of the splits, the sampler and the trials (default 0)")
    search.add_argument("--workers", type=_positive_int, default=1, help="worker processes on this machine (default 1)")
    _common_store_flags(search)
    _worker_flags(search)
    search.set_defaults(func=cmd_search)

    worker = sub.add_parser("worker", help="join an existing study and run its queued trials")
    worker.add_argument("--study", required=True)
    worker.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    _common_store_flags(worker)
    _worker_flags(worker)
    worker.set_defaults(func=cmd_worker)

    best = sub.add_parser("best", help="show the best trial of a study")
    best.add_argument("--study", required=True)
    best.add_argument("--json", action="store_true", help="print JSON")
    _common_store_flags(best)
    best.set_defaults(func=cmd_best)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: bad flags exit with 2
        return int(e.code or 0)
    _quiet_libraries()
    from automl.study import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            return int(args.func(args))
    except UsageError as e:
        print(f"automl: error: {e}", file=sys.stderr)
        return 2
    except FatalError as e:
        print(f"automl: error: {e}", file=sys.stderr)
        return 1
    except Terminated:
        print("automl: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("automl: interrupted", file=sys.stderr)
        return 130


# --- helpers shared by search and worker ------------------------------------------------------


def _stores(args: argparse.Namespace) -> tuple[str, str | None]:
    from automl.study import DEFAULT_STORAGE, check_storage_url, check_tracking_uri

    storage = check_storage_url(args.storage or DEFAULT_STORAGE)
    tracking = check_tracking_uri(args.tracking_uri) if args.tracking_uri else None
    return storage, tracking


def _load_data(space: Any, args: argparse.Namespace, seed: int) -> Any:
    from automl.data import load_dataset

    return load_dataset(
        space.dataset, seed=seed, data_dir=args.data_dir,
        validation_fraction=space.validation_fraction, test_fraction=space.test_fraction,
        csv_path=space.csv_path, target=space.target, task=space.task, download=args.download,
    )


def _trial_reporter(metric: str, quiet: bool) -> Any:
    from optuna.trial import TrialState

    def report(outcome: Any, study: Any) -> None:
        if quiet:
            return
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "no complete trial yet"
        score = f"{metric}={outcome.value:.4f}" if outcome.value is not None else ""
        if outcome.state == TrialState.PRUNED:
            score = outcome.reason
        elif outcome.state == TrialState.FAIL:
            score = f"failed: {outcome.reason}"
        print(f"trial {outcome.number:>4}  {outcome.state.name:<8}  {score:<40}  "
              f"{outcome.seconds:6.1f}s  {best}", flush=True)

    return report


def _setup_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


# --- search ------------------------------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> int:
    from automl import study as st
    from automl.objective import Objective
    from automl.space import load_space
    from automl.tracking import DEFAULT_TRACKING_URI, Tracker
    from automl.train import resolve_device

    space = load_space(args.space)
    name = st.check_study_name(args.study or space.name)
    storage_url, tracking_uri = _stores(args)
    tracking_uri = tracking_uri or DEFAULT_TRACKING_URI
    device = resolve_device(args.device)
    if args.retry_failed < 0:
        raise UsageError(f"--retry-failed: must be 0 or more, got {args.retry_failed}")
    n_trials = args.trials or space.trials
    timeout = args.timeout or space.timeout
    seed = 0 if args.seed is None else args.seed
    data = _load_data(space, args, seed)

    _setup_threads(args.threads)
    storage = st.open_storage(storage_url, args.heartbeat_interval, args.grace_period,
                              st.close_stale_run(tracking_uri, args.retry_failed))
    tracker = Tracker(tracking_uri)
    with st.budget_lock(storage_url, name):
        study, created = st.create_or_load(name, storage, space, seed)
        stored_seed = study.user_attrs.get(st.SEED, seed)
        if stored_seed != seed:
            if args.seed is not None:
                raise UsageError(f"--seed: study {name!r} was created with seed {stored_seed}, not {seed}")
            seed = stored_seed
            data = _load_data(space, args, seed)
        params = {"dataset": space.dataset, "metric": space.metric, "direction": space.direction,
                  "epochs": space.epochs, "sampler": space.sampler, "pruner": space.pruner,
                  "seed": seed, "space_file": space.source, "space_digest": space.digest,
                  "family": space.family}
        experiment_id, parent = st.attach_tracking(study, tracker, params)
        queued = st.top_up_budget(study, n_trials)
    handle = st.StudyHandle(name, storage, space, st.make_sampler(space, seed), st.make_pruner(space),
                            seed, experiment_id, parent)
    swept = st.sweep(study, storage, tracker, parent, experiment_id)
    tracker.set_status(parent, "RUNNING")
    sizes = f"{len(data.train)}/{len(data.val)}/{len(data.test)}"
    print(f"study {name}: {'created' if created else 'resumed'}, {n_trials} trials in all, "
          f"{queued} queued now{f', {swept} lost trial(s) marked failed' if swept else ''}; "
          f"data {data.name} (train/val/test {sizes}); device {device}; workers {args.workers}",
          flush=True)
    print(f"  optuna storage {storage_url}; mlflow {tracking_uri} (experiment {experiment_id}, run {parent})",
          flush=True)

    deadline = time.monotonic() + timeout if timeout else None
    exit_code, status = 0, "FINISHED"
    try:
        if args.workers == 1:
            objective = Objective(space, data.to(device), seed)
            st.run_worker(handle, objective, tracker, deadline, _trial_reporter(space.metric, args.quiet))
        else:
            _run_worker_processes(args, name, storage_url, tracking_uri, timeout)
    except Terminated:
        exit_code, status = 143, "KILLED"
    except KeyboardInterrupt:
        exit_code, status = 130, "KILLED"
    except FatalError as e:
        print(f"automl: error: {e}", file=sys.stderr)
        exit_code, status = 1, "FAILED"
    if exit_code != 1:  # after a storage or tracking failure nothing more is written
        try:
            best = st.finalize(handle, tracker, data)
            _print_summary(name, handle, tracker, tracking_uri, best)
        except FatalError as e:
            print(f"automl: error: {e}", file=sys.stderr)
            exit_code, status = (exit_code or 1), ("FAILED" if status == "FINISHED" else status)
        except KeyboardInterrupt:
            exit_code, status = exit_code or 130, "KILLED"
    try:
        tracker.set_status(parent, status)
    except FatalError as e:
        print(f"automl: error: {e}", file=sys.stderr)
        exit_code = exit_code or 1
    return exit_code


def _print_summary(name: str, handle: Any, tracker: Any, tracking_uri: str, best: Any) -> None:
    from automl import study as st

    study = handle.load()
    totals = st.counts(study)
    print(f"study {name}: {totals['COMPLETE']} complete, {totals['PRUNED']} pruned, {totals['FAIL']} failed"
          f"{', ' + str(totals['WAITING']) + ' still queued' if totals['WAITING'] else ''}")
    if totals["COMPLETE"]:
        trial = study.best_trial
        line = f"best trial {trial.number}: {handle.space.metric}={trial.value:.4f}"
        if best is not None:
            test = ", ".join(f"{k}={v:.4f}" for k, v in best.test_metrics.items())
            line += f"; {test}; model version {best.version}"
        print(line)
        print(f"  reload: automl.load_best({name!r}) or mlflow.pytorch.load_model('models:/{name}@champion')")
    print(f"  view: mlflow ui --backend-store-uri {tracking_uri}")


def _run_worker_processes(args: argparse.Namespace, name: str, storage_url: str, tracking_uri: str,
                          timeout: float | None) -> None:
    """Start `--workers` worker processes on this study; forward SIGTERM; wait for them all."""
    cpus = os.cpu_count() or 1
    threads = args.threads or max(1, cpus // args.workers)
    gpus = _visible_gpus()
    processes = []
    for index in range(args.workers):
        command = [sys.executable, "-m", "automl", "worker", "--study", name, "--storage", storage_url,
                   "--tracking-uri", tracking_uri, "--data-dir", args.data_dir, "--device", args.device,
                   "--threads", str(threads), "--worker-index", str(index),
                   "--heartbeat-interval", str(args.heartbeat_interval),
                   "--grace-period", str(args.grace_period), "--retry-failed", str(args.retry_failed)]
        if timeout:
            command += ["--timeout", str(timeout)]
        if args.quiet:
            command.append("--quiet")
        env = dict(os.environ)
        if gpus and args.device in ("auto", "cuda"):
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        processes.append(subprocess.Popen(command, env=env))
    try:
        for process in processes:
            process.wait()
    except BaseException:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait()
        raise
    failed = [p.returncode for p in processes if p.returncode not in (0,)]
    if failed:
        raise FatalError(f"{len(failed)} worker process(es) failed (exit codes {failed})")


def _visible_gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [g for g in visible.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


# --- worker ----------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    import optuna

    from automl import study as st
    from automl.objective import Objective
    from automl.tracking import DEFAULT_TRACKING_URI, Tracker
    from automl.train import resolve_device

    name = st.check_study_name(args.study)
    storage_url, tracking_uri = _stores(args)
    device = resolve_device(args.device)
    _setup_threads(args.threads)
    probe = st.open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=name, storage=probe)
    except KeyError:
        raise UsageError(f"--study: no study named {name!r} in {storage_url}") from None
    space = st.space_of(study)
    attrs = study.user_attrs
    tracking_uri = tracking_uri or attrs.get(st.TRACKING_URI, DEFAULT_TRACKING_URI)
    if st.PARENT_RUN_ID not in attrs:
        raise UsageError(f"--study: study {name!r} has no MLflow run yet; start it with `automl search`")
    seed = int(attrs.get(st.SEED, 0))
    data = _load_data(space, args, seed)
    storage = st.open_storage(storage_url, args.heartbeat_interval, args.grace_period,
                              st.close_stale_run(tracking_uri, args.retry_failed))
    handle = st.StudyHandle(name, storage, space,
                            st.make_sampler(space, seed + 7919 * (args.worker_index + 1)),
                            st.make_pruner(space), seed, attrs[st.EXPERIMENT_ID], attrs[st.PARENT_RUN_ID])
    tracker = Tracker(tracking_uri)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    objective = Objective(space, data.to(device), seed)
    st.run_worker(handle, objective, tracker, deadline, _trial_reporter(space.metric, args.quiet))
    return 0


# --- best ------------------------------------------------------------------------------------


def cmd_best(args: argparse.Namespace) -> int:
    import optuna

    from automl import study as st
    from automl.best import study_run
    from automl.tracking import DEFAULT_TRACKING_URI, Tracker

    name = st.check_study_name(args.study)
    storage_url, tracking_uri = _stores(args)
    storage = st.open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UsageError(f"--study: no study named {name!r} in {storage_url}") from None
    tracking_uri = tracking_uri or study.user_attrs.get(st.TRACKING_URI, DEFAULT_TRACKING_URI)
    try:
        trial = study.best_trial
    except ValueError:
        raise FatalError(f"study {name!r} has no complete trial") from None
    space = st.space_of(study)
    run = study_run(Tracker(tracking_uri), name)
    metrics = run.data.metrics
    info = {
        "study": name,
        "trial": trial.number,
        "metric": space.metric,
        "direction": space.direction,
        "value": trial.value,
        "params": trial.params,
        "test": {k: v for k, v in metrics.items() if k.startswith("test_")},
        "trial_run_id": trial.user_attrs.get(st.RUN_ID),
        "study_run_id": run.info.run_id,
        "model_uri": run.data.tags.get("automl.best_model_uri"),
        "registered_model_uri": f"models:/{name}@champion",
        "registered_version": run.data.tags.get("automl.registered_version"),
        "logged_best_trial": int(run.data.tags.get("automl.best_trial", -1)),
        "tracking_uri": tracking_uri,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"study {name}: best trial {trial.number}, {space.metric}={trial.value:.4f}")
    for key, value in info["test"].items():
        print(f"  {key}: {value:.4f}")
    print("  params:")
    for key, value in trial.params.items():
        print(f"    {key}: {value}")
    print(f"  trial run: {info['trial_run_id']}   study run: {info['study_run_id']}")
    print(f"  model: {info['model_uri']}   registered: {info['registered_model_uri']} (version {info['registered_version']})")
    return 0
