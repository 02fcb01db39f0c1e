"""What the use cases are asked to do: a search and a worker, as plain data. The command line's
flags map one to one onto these fields; `launch` turns a worker request into a worker process's
command line and environment. Light: no torch, Optuna or MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from automl.checks import STORAGE_ENV, TRACKING_ENV


@dataclass
class SearchRequest:
    """Everything a search needs; the command line's flags map one to one onto these fields."""

    space: Any  # a path, YAML text, a dict or an automl.Space
    trials: int | None = None
    timeout: float | None = None
    study: str | None = None
    seed: int | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    device: str = "auto"
    data_dir: str = "data"
    download: bool = False
    workers: int | None = None
    workers_per_gpu: int = 1
    launcher: str = "local"
    resume: bool = False
    sampler: str | None = None
    pruner: str | None = None
    heartbeat_interval: int = 10
    grace_period: int = 60
    retry_failed: int = 0
    threads: int | None = None
    quiet: bool = False
    data: Any = None  # data given from Python: (X, y), (DataFrame, "target") or a torch Dataset
    model: Any = None  # a builder given from Python: an nn.Module class or a function
    warm_start: list[str] | None = None  # earlier studies whose best parameter sets run first
    warm_start_k: int = 3


@dataclass(frozen=True)
class WorkerRequest:
    """A worker joining an existing study (`automl worker`, a process started by `--workers N`, or a
    Ray task). URLs must make sense on the worker's machine."""

    study: str
    storage: str | None = None
    tracking_uri: str | None = None
    device: str = "auto"
    data_dir: str = "data"
    download: bool = False
    timeout: float | None = None
    heartbeat_interval: int = 10
    grace_period: int = 60
    retry_failed: int = 0
    threads: int | None = None
    quiet: bool = False
    worker_index: int = 0
    record_in_child: bool = True  # trial runs written by a forked child (automl.recorder); not in Ray

    def argv(self) -> list[str]:
        """The `automl worker` command line (URLs go by `env`)."""
        args = ["worker", "--study", self.study, "--data-dir", self.data_dir, "--device", self.device,
                "--worker-index", str(self.worker_index), "--heartbeat-interval", str(self.heartbeat_interval),
                "--grace-period", str(self.grace_period), "--retry-failed", str(self.retry_failed)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.timeout:
            args += ["--timeout", str(self.timeout)]
        if self.quiet:
            args.append("--quiet")
        return args

    def env(self) -> dict[str, str]:
        """The URLs, with their passwords, for a worker's environment."""
        return {k: v for k, v in ((STORAGE_ENV, self.storage), (TRACKING_ENV, self.tracking_uri)) if v}
