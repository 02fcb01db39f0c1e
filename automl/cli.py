"""Command line: arguments -> request -> a call into `automl.api` -> printed result; exit codes.

Exit codes: 0 success, 1 runtime failure, 2 bad input, 130 Ctrl-C, 143 SIGTERM. Importing this
module is cheap (no torch, Optuna or MLflow), so `--help` and `--version` answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from automl import __version__, api, queries
from automl.errors import FatalError, Terminated, UsageError
from automl.registries import PRUNERS, SAMPLERS

EXAMPLES = """examples:
  automl search                                           the default search: MLPs on the built-in digits
  automl search --space search_spaces/mnist_cnn.yaml --data-dir data --trials 50 --timeout 600
  automl report --study digits_mlp --top 5                the best five trials
  automl compare digits_mlp digits_b --output compare.png  best so far of two studies, by trial and by time
  automl refine --study digits_mlp --output narrower.yaml  a narrower space around the best trials
"""


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


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has a meaningful one) after its help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Bad flags are reported in one line (exit code 2), like every other bad input."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"automl: error: {self.prog}: {message} (see --help)\n")


def _store_flags(p: argparse.ArgumentParser, tracking: bool = True) -> None:
    p.add_argument("--storage", help="Optuna storage URL (default: $AUTOML_STORAGE, else sqlite:///optuna.db)")
    if tracking:
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $AUTOML_TRACKING_URI, else the "
                                              "study's, else sqlite:///mlflow.db)")


def _worker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--data-dir", default="data", help="folder with torchvision-layout datasets")
    p.add_argument("--download", action="store_true", help="download a missing torchvision dataset")
    p.add_argument("--timeout", type=_positive_float, help="start no new trial after this many seconds")
    p.add_argument("--heartbeat-interval", type=_positive_int, default=10,
                   help="seconds between a running trial's heartbeats")
    p.add_argument("--grace-period", type=_positive_int, default=60,
                   help="seconds without heartbeat after which a trial counts as lost")
    p.add_argument("--retry-failed", type=_non_negative_int, default=0, metavar="N",
                   help="re-run a trial whose worker was lost, at most N times")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for training (default: all)")
    p.add_argument("--quiet", action="store_true", help="only errors, the start line and the final summary")


def _search_parser(sub: Any) -> None:
    search = sub.add_parser("search", help="run (or resume) a search", formatter_class=_Formatter, description=(
        "Run a search. --trials is the study's total: running the same command again resumes "
        "the study and runs only the trials still missing."))
    search.add_argument("--space", default=str(api.DEFAULT_SPACE), help="YAML search space")
    search.add_argument("--trials", type=_positive_int, help="total trials in the study (default: from the space)")
    search.add_argument("--study", help="study name (default: the space file's name)")
    search.add_argument("--seed", type=int, help="seed of the splits, the sampler and the trials (default 0)")
    search.add_argument("--workers", type=_non_negative_int,
                        help="worker processes on this machine (default: one per GPU, or 1 on the CPU); "
                             "0 only creates the study, waits for workers elsewhere and summarises")
    search.add_argument("--workers-per-gpu", type=_positive_int, default=1,
                        help="workers on each GPU when --workers is not given")
    search.add_argument("--launcher", choices=("local", "ray"), default="local",
                        help="start workers as local processes or as Ray tasks")
    search.add_argument("--resume", action="store_true", help="continue an existing study (error if there is none)")
    search.add_argument("--sampler", choices=list(SAMPLERS),
                        help="the Optuna sampler, instead of the space's (a new study only)")
    search.add_argument("--pruner", choices=list(PRUNERS),
                        help="the Optuna pruner, instead of the space's (a new study only)")
    search.add_argument("--warm-start", action="append", metavar="STUDY",
                        help="run the best parameter sets of this earlier study (same storage) first; repeatable")
    search.add_argument("--warm-start-k", type=_positive_int, default=3, metavar="K",
                        help="how many parameter sets --warm-start takes in all")
    _store_flags(search)
    _worker_flags(search)
    search.set_defaults(func=cmd_search)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="automl", epilog=EXAMPLES,
                     description="Search for a good PyTorch network with Optuna, tracked in MLflow.")
    parser.add_argument("--version", action="version", version=f"automl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _search_parser(sub)

    worker = sub.add_parser("worker", help="join an existing study and run its queued trials")
    worker.add_argument("--study", required=True, help="the study to join")
    worker.add_argument("--worker-index", type=_non_negative_int, default=0,
                        help="this worker's number: offsets its sampler seed from the other workers'")
    _store_flags(worker)
    _worker_flags(worker)
    worker.set_defaults(func=cmd_worker)

    best = sub.add_parser("best", help="show the best trial of a study")
    best.add_argument("--study", required=True, help="the study")
    best.add_argument("--json", action="store_true", help="print JSON")
    _store_flags(best)
    best.set_defaults(func=cmd_best)

    report = sub.add_parser("report", help="table of all trials of a study, best first")
    report.add_argument("--study", required=True, help="the study")
    report.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    report.add_argument("--json", action="store_true", help="print JSON records")
    report.add_argument("--top", type=_positive_int, metavar="N", help="only the best N trials")
    report.add_argument("--columns", help="comma-separated columns to show, e.g. number,state,val_accuracy")
    report.add_argument("--all-columns", action="store_true", help="print run ids and reasons too")
    _store_flags(report)
    report.set_defaults(func=cmd_report)

    studies = sub.add_parser("studies", help="the studies in a storage")
    studies.add_argument("--json", action="store_true", help="print JSON records")
    _store_flags(studies, tracking=False)
    studies.set_defaults(func=cmd_studies)

    compare = sub.add_parser("compare", help="best value so far of several studies, by trial number and by "
                                             "wall time: a table and a plot")
    compare.add_argument("studies", nargs="+", metavar="STUDY", help="studies of one metric and direction")
    compare.add_argument("--output", type=Path, action="append", metavar="FILE",
                         help="write the plot here: .png, .svg or .pdf (two panels) or .html (interactive); "
                              "repeatable (default: the table only)")
    compare.add_argument("--json", action="store_true", help="print JSON records")
    _store_flags(compare)
    compare.set_defaults(func=cmd_compare)

    refine = sub.add_parser("refine", help="write a narrower search space around a study's best trials")
    refine.add_argument("--study", required=True, help="the study")
    refine.add_argument("--output", type=Path, required=True, help="the YAML file to write")
    refine.add_argument("--top", type=_positive_int, metavar="N",
                        help="narrow around the best N complete trials (default: the best 20%%, at least 5)")
    refine.add_argument("--force", action="store_true", help="replace --output when it exists")
    _store_flags(refine)
    refine.set_defaults(func=cmd_refine)

    predict = sub.add_parser("predict", help="predict with a study's champion model")
    predict.add_argument("--study", required=True, help="the study whose champion predicts")
    predict.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                         help="one .npy array, one CSV table (tabular studies) or image files")
    predict.add_argument("--output", type=Path, help="write the predictions as CSV here")
    predict.add_argument("--json", action="store_true", help="print JSON records")
    predict.add_argument("--tracking-uri", help="MLflow tracking URI (default: $AUTOML_TRACKING_URI, else "
                                                "sqlite:///mlflow.db)")
    predict.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    predict.set_defaults(func=cmd_predict)

    ui = sub.add_parser("ui", help="the MLflow UI on the stores a search wrote to, opened on a study's runs")
    ui.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db)")
    ui.add_argument("--study", help="the study whose runs the printed link opens (default: the newest)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (anything but loopback is reachable from other machines)")
    ui.add_argument("--port", type=_positive_int, default=5000, help="port to listen on")
    ui.add_argument("--allowed-hosts", help="extra Host header values to accept, comma-separated")
    ui.set_defaults(func=cmd_ui)
    return parser


def _quiet_libraries() -> None:
    import logging
    import warnings

    for name in ("mlflow", "alembic", "urllib3", "torch", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("OPTUNA_LOGGING_LEVEL", "WARNING")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*ExperimentalWarning.*")
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: bad flags exit with 2, --help and --version with 0
        return int(e.code or 0)
    _quiet_libraries()
    from automl.signals import sigterm_as_interrupt

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
        print("automl: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("automl: interrupted (Ctrl-C)", file=sys.stderr)
        return 130


# --- commands: each turns its flags into one api call and prints the result --------------------


def cmd_search(args: argparse.Namespace) -> int:
    request = api.SearchRequest(
        space=args.space, trials=args.trials, timeout=args.timeout, study=args.study, seed=args.seed,
        storage=args.storage, tracking_uri=args.tracking_uri, device=args.device, data_dir=args.data_dir,
        download=args.download, workers=args.workers, workers_per_gpu=args.workers_per_gpu,
        launcher=args.launcher, resume=args.resume, sampler=args.sampler, pruner=args.pruner,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
        retry_failed=args.retry_failed, threads=args.threads, quiet=args.quiet,
        warm_start=args.warm_start, warm_start_k=args.warm_start_k)
    api.run_search(request)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    api.run_worker(api.WorkerRequest(
        study=args.study, storage=args.storage, tracking_uri=args.tracking_uri, device=args.device,
        data_dir=args.data_dir, download=args.download, timeout=args.timeout,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
        retry_failed=args.retry_failed, threads=args.threads, quiet=args.quiet, worker_index=args.worker_index))
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    info = queries.best_info(args.study, args.storage, args.tracking_uri)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"study {info['study']}: best trial {info['trial']}, {info['metric']}={info['value']:.4f}")
    for key, value in info["test"].items():
        print(f"  {key}: {value:.4f}")
    print("  params:")
    for key, value in info["params"].items():
        print(f"    {key}: {value}")
    print(f"  trial run: {info['trial_run_id']}   study run: {info['study_run_id']}")
    print(f"  model: {info['model_uri']}   registered: {info['registered_model_uri']} "
          f"(version {info['registered_version']})")
    return 0


def _check_output(path: Path | None, flag: str) -> None:
    if path is not None:
        from automl.best import check_output_path

        check_output_path(path, flag)


def cmd_report(args: argparse.Namespace) -> int:
    from automl.report import format_table, select

    _check_output(args.csv, "--csv")
    table, metric = queries.report(args.study, args.storage)
    if args.csv:
        table.to_csv(args.csv, index=False)
    shown = select(table, metric, args.top, args.columns, args.all_columns or args.json)
    if args.json:
        print(_records_json(shown))
    else:
        print(format_table(shown, metric))
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    from automl.report import format_table

    table = queries.studies(args.storage)
    if args.json:
        print(_records_json(table))
    elif table.empty:
        print("no studies here yet (run `automl search` first)")
    else:
        print(format_table(table))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from automl.compare import compare_studies, format_summary

    table = compare_studies(args.studies, args.storage, args.output)
    if args.json:
        print(_records_json(table))
    else:
        print(format_summary(table))
    for path in args.output or []:
        print(f"plot written to {path}", file=sys.stderr)
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    from automl.refine import refine_space

    result = refine_space(args.study, args.output, storage=args.storage, top=args.top, force=args.force)
    print(f"wrote {args.output}: {len(result.changes)} range(s) changed around the best {result.top} of "
          f"{result.complete} complete trials of study {args.study!r}")
    for change in result.changes:
        print(f"  {change.comment()}")
    print(f"search it: automl search --space {args.output}")
    return 0


def _records_json(table: Any) -> str:
    """JSON records with full float precision; missing values become null."""
    records = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    return json.dumps(records, indent=2, default=str)


def cmd_predict(args: argparse.Namespace) -> int:
    _check_output(args.output, "--output")
    table = queries.predict(args.study, args.inputs, args.tracking_uri, args.device)
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
    from automl import checks

    uri = checks.tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise UsageError(f"--tracking-uri: {checks.mask_url(uri)} is already a tracking server: open it in a browser")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port), "--workers", "1"]
    if args.allowed_hosts:
        command += ["--allowed-hosts", args.allowed_hosts]
    if args.host not in LOOPBACK:
        print(f"automl: warning: the UI listens on {args.host} and is reachable from other machines; "
              "MLflow's UI has no login", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    link = queries.ui_path(uri, args.study)
    print(f"MLflow UI for {checks.mask_url(uri)}: http://{shown}:{args.port}{link}  (Ctrl-C to stop)", flush=True)
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
