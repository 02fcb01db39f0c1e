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
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from automl import checks
from automl.errors import FatalError, Terminated, UsageError
from automl.progress import Progress

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "digits_mlp.yaml"


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


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
    for name in ("mlflow", "alembic", "urllib3", "torch"):
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
    p.add_argument("--retry-failed", type=_non_negative_int, default=0, metavar="N",
                   help="re-run a trial whose worker was lost, at most N times (default 0)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for training (default: all)")
    p.add_argument("--quiet", action="store_true", help="only errors and the final summary")


class _Parser(argparse.ArgumentParser):
    """Bad flags are reported in one line (exit code 2), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"automl: error: {self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="automl", description="Search for a good PyTorch network with Optuna, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True)

    search = sub.add_parser("search", help="run (or resume) a search", description=(
        "Run a search. --trials is the study's total: running the same command again resumes "
        "the study and runs only the trials still missing."))
    search.add_argument("--space", default=str(DEFAULT_SPACE), help="YAML search space (default: digits_mlp.yaml)")
    search.add_argument("--trials", type=_positive_int, help="total trials in the study (default: from the space)")
    search.add_argument("--study", help="study name (default: the space file's name)")
    search.add_argument("--seed", type=int, help="seed of the splits, the sampler and the trials (default 0)")
    search.add_argument("--workers", type=_non_negative_int,
                        help="worker processes on this machine (default: one per GPU, or 1 on the CPU); "
                             "0 only creates the study, waits for workers elsewhere and summarises")
    search.add_argument("--workers-per-gpu", type=_positive_int, default=1,
                        help="workers on each GPU when --workers is not given (default 1)")
    search.add_argument("--launcher", choices=("local", "ray"), default="local",
                        help="start workers as local processes (default) or as Ray tasks")
    search.add_argument("--resume", action="store_true", help="continue an existing study (error if there is none)")
    search.add_argument("--sampler", choices=("tpe", "random", "qmc", "gp"),
                        help="the Optuna sampler, instead of the space's (a new study only)")
    search.add_argument("--pruner", choices=("median", "percentile", "successive_halving", "hyperband", "none"),
                        help="the Optuna pruner, instead of the space's (a new study only)")
    _common_store_flags(search)
    _worker_flags(search)
    search.set_defaults(func=cmd_search)

    worker = sub.add_parser("worker", help="join an existing study and run its queued trials")
    worker.add_argument("--study", required=True)
    worker.add_argument("--worker-index", type=_non_negative_int, default=0,
                        help="this worker's number: offsets its sampler seed from the other workers' (default 0)")
    _common_store_flags(worker)
    _worker_flags(worker)
    worker.set_defaults(func=cmd_worker)

    best = sub.add_parser("best", help="show the best trial of a study")
    best.add_argument("--study", required=True)
    best.add_argument("--json", action="store_true", help="print JSON")
    _common_store_flags(best)
    best.set_defaults(func=cmd_best)

    report = sub.add_parser("report", help="table of all trials of a study, best first")
    report.add_argument("--study", required=True)
    report.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    report.add_argument("--json", action="store_true", help="print JSON records")
    report.add_argument("--all-columns", action="store_true", help="print run ids and reasons too")
    _common_store_flags(report)
    report.set_defaults(func=cmd_report)

    studies = sub.add_parser("studies", help="the studies in a storage")
    studies.add_argument("--json", action="store_true", help="print JSON records")
    studies.add_argument("--storage", help="Optuna storage URL (default: sqlite:///optuna.db)")
    studies.set_defaults(func=cmd_studies)

    predict = sub.add_parser("predict", help="predict with a study's champion model")
    predict.add_argument("--study", required=True)
    predict.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                         help="one .npy array, one CSV table (tabular studies) or image files")
    predict.add_argument("--output", type=Path, help="write the predictions as CSV here")
    predict.add_argument("--json", action="store_true", help="print JSON records")
    predict.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db)")
    predict.add_argument("--device", default="cpu")
    predict.set_defaults(func=cmd_predict)

    ui = sub.add_parser("ui", help="the MLflow UI on the stores a search wrote to")
    ui.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; anything else is reachable from other machines)")
    ui.add_argument("--port", type=_positive_int, default=5000)
    ui.add_argument("--allowed-hosts", help="extra Host header values to accept, comma-separated")
    ui.set_defaults(func=cmd_ui)
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
    storage = checks.check_storage_url(args.storage or checks.DEFAULT_STORAGE)
    tracking = checks.check_tracking_uri(args.tracking_uri) if args.tracking_uri else None
    return storage, tracking


def _load_data(space: Any, args: argparse.Namespace, seed: int) -> Any:
    from automl.data import load_dataset

    return load_dataset(
        space.dataset, seed=seed, data_dir=args.data_dir,
        validation_fraction=space.validation_fraction, test_fraction=space.test_fraction,
        csv_path=space.csv_path, target=space.target, task=space.task, download=args.download,
    )


def _setup_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


# --- search ------------------------------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> int:
    import optuna

    from automl import launch
    from automl import study as st
    from automl.objective import Objective
    from automl.space import load_space
    from automl.tracking import Tracker
    from automl.train import resolve_device

    space = load_space(args.space)
    if args.pruner == "percentile":
        raise UsageError("--pruner: percentile needs its `percentile` option: set it in the space's pruner section")
    space = st.with_algorithms(space, args.sampler, args.pruner)
    name = checks.check_study_name(args.study or space.name)
    storage_url, tracking_uri = _stores(args)
    tracking_uri = tracking_uri or checks.DEFAULT_TRACKING_URI
    device = resolve_device(args.device)
    gpus = launch.visible_gpus() if device.type == "cuda" else []
    if args.workers is not None:
        workers = args.workers
    else:  # one worker per GPU (times --workers-per-gpu), or one on the CPU
        workers = len(gpus) * args.workers_per_gpu if gpus else 1
    if args.launcher == "ray" and workers < 1:
        raise UsageError("--workers: the Ray launcher needs at least one worker")
    n_trials = args.trials or space.trials
    timeout = args.timeout or space.timeout
    seed = 0 if args.seed is None else args.seed
    data = _load_data(space, args, seed)

    _setup_threads(args.threads)
    storage = st.open_storage(storage_url, args.heartbeat_interval, args.grace_period,
                              st.close_stale_run(tracking_uri, args.retry_failed))
    if args.resume and name not in optuna.study.get_all_study_names(storage):
        raise UsageError(f"--resume: no study named {name!r} in {storage_url}")
    tracker = Tracker(tracking_uri)
    with st.budget_lock(storage_url, name):
        study, created = st.create_or_load(name, storage, space, seed)
        stored = st.space_of(study)  # a resumed study keeps the sampler and pruner it began with
        if (args.sampler or stored.sampler) != stored.sampler or (args.pruner or stored.pruner) != stored.pruner:
            raise UsageError(f"--sampler/--pruner: study {name!r} uses sampler {stored.sampler!r} and pruner "
                             f"{stored.pruner!r}; a study keeps them (use another --study name)")
        space = stored
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
    sizes = f"{len(data.train)}/{len(data.val)}/{len(data.test)}"
    print(f"study {name}: {'created' if created else 'resumed'}, {n_trials} trials in all, {queued} queued "
          f"now; data {data.name} (train/val/test {sizes}); device {device}; workers {workers}", flush=True)
    print(f"  optuna storage {storage_url}; mlflow {tracking_uri} (experiment {experiment_id}, run {parent})",
          flush=True)

    deadline = time.monotonic() + timeout if timeout else None
    exit_code, status = 0, "FINISHED"
    in_study = len(study.get_trials(deepcopy=False))
    progress = Progress(in_study, in_study - st.queued_total(study), space.metric, args.quiet)
    try:
        swept = st.sweep(study, storage, tracker, parent, experiment_id)
        if swept:
            print(f"  {swept} trial(s) left running by a dead worker marked failed", flush=True)
        tracker.set_status(parent, "RUNNING")
        plan = launch.WorkerPlan(
            name, launch.absolute_sqlite(storage_url), launch.absolute_sqlite(tracking_uri),
            str(Path(args.data_dir).resolve()), args.device, args.heartbeat_interval, args.grace_period,
            args.retry_failed, timeout, args.quiet)
        if args.launcher == "ray":
            launch.run_ray_workers(plan, workers, args.threads)
        elif workers == 1 and len(gpus) <= 1:
            objective = Objective(space, data.to(device), seed)
            st.run_worker(handle, objective, tracker, deadline, progress.trial, linger=args.retry_failed > 0)
        elif workers > 0:
            launch.run_local_workers(plan, workers, args.threads, gpus, handle, progress)
        launch.wait_for_other_workers(handle, progress, deadline, include_queued=workers == 0)
    except Terminated:
        exit_code, status = 143, "KILLED"
    except KeyboardInterrupt:
        exit_code, status = 130, "KILLED"
    except FatalError as e:
        print(f"automl: error: {e}", file=sys.stderr)
        exit_code, status = 1, "FAILED"
    finally:
        progress.close()
    if exit_code != 1:  # after a storage or tracking failure nothing more is written
        try:
            with st.budget_lock(storage_url, name):
                best = st.finalize(handle, tracker, data)
            _print_summary(name, handle, tracking_uri, best)
        except FatalError as e:
            print(f"automl: error: {e}", file=sys.stderr)
            exit_code = exit_code or 1
            status = "FAILED" if status == "FINISHED" else status
        except KeyboardInterrupt as e:
            exit_code = exit_code or (143 if isinstance(e, Terminated) else 130)
            status = "KILLED"
    try:
        tracker.set_status(parent, status)
    except FatalError as e:
        print(f"automl: error: {e}", file=sys.stderr)
        exit_code = exit_code or 1
    return exit_code


def _print_summary(name: str, handle: Any, tracking_uri: str, best: Any) -> None:
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


# --- worker ----------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    import optuna

    from automl import study as st
    from automl.objective import Objective
    from automl.tracking import Tracker
    from automl.train import resolve_device

    name = checks.check_study_name(args.study)
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
    tracking_uri = tracking_uri or attrs.get(st.TRACKING_URI, checks.DEFAULT_TRACKING_URI)
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
    progress = Progress(int(attrs.get(st.BUDGET, 0)), 0, space.metric, args.quiet)
    try:
        st.run_worker(handle, objective, tracker, deadline, progress.trial, linger=args.retry_failed > 0)
    finally:
        progress.close()
    return 0


# --- best ------------------------------------------------------------------------------------


def cmd_best(args: argparse.Namespace) -> int:
    import optuna

    from automl import study as st
    from automl.best import study_run
    from automl.tracking import Tracker

    name = checks.check_study_name(args.study)
    storage_url, tracking_uri = _stores(args)
    storage = st.open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UsageError(f"--study: no study named {name!r} in {storage_url}") from None
    tracking_uri = tracking_uri or study.user_attrs.get(st.TRACKING_URI, checks.DEFAULT_TRACKING_URI)
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
    print(f"  model: {info['model_uri']}   registered: {info['registered_model_uri']} "
          f"(version {info['registered_version']})")
    return 0


# --- report, studies, predict, ui -----------------------------------------------------------


def _load_study(name: str, storage_url: str) -> Any:
    import optuna

    from automl import study as st

    try:
        return optuna.load_study(study_name=checks.check_study_name(name), storage=st.open_storage(storage_url))
    except KeyError:
        raise UsageError(f"--study: no study named {name!r} in {storage_url}") from None


def _records_json(table: Any) -> str:
    """JSON records with full float precision; missing values become null."""
    records = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    return json.dumps(records, indent=2, default=str)


def _print_table(table: Any, as_json: bool) -> None:
    if as_json:
        print(_records_json(table))
    elif table.empty:
        print("(nothing yet)")
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))


def cmd_report(args: argparse.Namespace) -> int:
    from automl.report import trials_table

    storage_url, _ = _stores(args)
    table = trials_table(_load_study(args.study, storage_url))
    if args.csv:
        table.to_csv(args.csv, index=False)
    shown = table if args.all_columns or args.json else table.drop(
        columns=[c for c in ("mlflow_run_id", "reason") if c in table.columns])
    _print_table(shown, args.json)
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    from automl import study as st
    from automl.report import studies_table

    storage_url = checks.check_storage_url(args.storage or checks.DEFAULT_STORAGE)
    _print_table(studies_table(st.open_storage(storage_url)), args.json)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from automl.best import load_best, predict_table, read_inputs
    from automl.train import resolve_device

    name = checks.check_study_name(args.study)
    tracking_uri = checks.check_tracking_uri(args.tracking_uri or checks.DEFAULT_TRACKING_URI)
    device = resolve_device(args.device)
    missing = [p for p in args.inputs if not p.is_file()]
    if missing:
        raise UsageError(f"INPUT: {missing[0]}: file not found")
    loaded = load_best(name, tracking_uri, device)
    x, names = read_inputs(args.inputs, loaded.preprocessing)
    table = predict_table(loaded, x, names)
    if args.output:
        table.to_csv(args.output, index=False)
        print(f"{len(table)} prediction(s) written to {args.output}", file=sys.stderr)
    elif args.json:
        print(_records_json(table))
    else:
        print(table.to_csv(index=False, float_format="%.6f"), end="")
    return 0


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def cmd_ui(args: argparse.Namespace) -> int:
    uri = checks.check_tracking_uri(args.tracking_uri or checks.DEFAULT_TRACKING_URI)
    if uri.startswith(("http://", "https://")):
        raise UsageError(f"--tracking-uri: {uri} is already a tracking server: open it in a browser")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port), "--workers", "1"]
    if args.allowed_hosts:
        command += ["--allowed-hosts", args.allowed_hosts]
    if args.host not in LOOPBACK:
        print(f"automl: warning: the UI listens on {args.host} and is reachable from other machines; "
              "MLflow's UI has no login", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"MLflow UI for {uri}: http://{shown}:{args.port}  (Ctrl-C to stop)", flush=True)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true")}
    server = subprocess.Popen(command, env=env)
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        return 0
