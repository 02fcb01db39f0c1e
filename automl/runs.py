"""What the MLflow records are called and what a trial records, without importing MLflow.

`automl.tracking` writes the records with MLflow; the modules of the training process (the worker
loop, the objective, publishing, the recording process's parent side) need only these names, so a
search process that leaves MLflow to its recording process (`automl.recorder`) never imports it.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from automl.errors import AutomlError, FatalError

CHAMPION = "champion"
ROLE_TAG = "automl.role"
STUDY_TAG = "automl.study"
TRIAL_TAG = "automl.trial_number"
STATE_TAG = "automl.trial_state"
REASON_TAG = "automl.fail_reason"
BEST_TRIAL_TAG = "automl.best_trial"
WEIGHTS_DIR = "weights"  # a trial's candidate best weights, on its child run
FINAL_WEIGHTS_DIR = "final_weights"  # a trial's weights retrained with another seed (automl.final)
BEST_DIR = "best_model"  # the study's best weights and configs, on the parent run


class TrackingError(FatalError):
    """MLflow could not be reached or refused a write."""


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version, as the tool reads it."""

    version: str
    source: str  # the model's URI
    tags: dict[str, str] = field(default_factory=dict)


def now_ms() -> int:
    return int(time.time() * 1000)


def run_status_for(state: str) -> str:
    """MLflow run status for an Optuna trial state: the true outcome, not always FINISHED."""
    return {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[state]


class Downloads(Protocol):
    def download(self, run_id: str, path: str, into: Path) -> Path: ...

    def artifact_location(self, run_id: str, path: str) -> str: ...


@contextlib.contextmanager
def downloaded(tracker: Downloads, run_id: str, path: str) -> Iterator[Path]:
    """A run's artifact folder `path`, downloaded into a temporary folder for the block. An error
    of this tool raised in the block names the artifacts where the run keeps them, not the
    temporary copy (gone by the time anyone reads the message)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = tracker.download(run_id, path, Path(tmp))
        try:
            yield folder
        except AutomlError as e:
            if tmp not in str(e):
                raise
            where = tracker.artifact_location(run_id, path)
            raise type(e)(str(e).replace(str(folder), where).replace(tmp, where)) from None


class RunRecords(Protocol):
    """What a trial records on its run: a `TrialRun` (written here), a `NullTrialRun` (nothing) or
    an `automl.recorder.RecordedRun` (written by the recording process)."""

    @property
    def run_id(self) -> str: ...

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def log_metrics(self, metrics: dict[str, float]) -> None: ...

    def log_weights(self, folder: Path) -> None: ...

    def end(self, status: str, tags: dict[str, str]) -> None: ...


class NullTrialRun:
    """Same surface as `TrialRun`, records nothing (unit tests, tracking switched off)."""

    run_id = ""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float]) -> None:
        pass

    def log_weights(self, folder: Path) -> None:
        pass

    def end(self, status: str, tags: dict[str, str]) -> None:
        pass
