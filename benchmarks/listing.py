"""What one listing of a study's trials costs, by how many trials are unfinished.

Optuna lists a study's trials many times per trial (each claim, the sampler's search space, each
value TPE samples with its constant liar, each pruning check), and every listing re-reads each
unfinished trial, queued ones included. This is why the search queues its budget a few trials at
a time (`automl/budget.py`) and reads the other trials once per trial for its pruning checks
(`automl/pruning.py`). It uses the tool's own SQLite storage settings, in a temporary folder:

    .venv/bin/python benchmarks/listing.py        # a few seconds
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from automl.storage import open_storage  # noqa: E402 - the checkout's package


def listing_ms(study: optuna.Study, repeat: int = 50) -> float:
    """Mean milliseconds of one `get_trials` (the study's cache already warm)."""
    study.get_trials(deepcopy=False)
    started = time.perf_counter()
    for _ in range(repeat):
        study.get_trials(deepcopy=False)
    return (time.perf_counter() - started) / repeat * 1000


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        storage = open_storage(f"sqlite:///{Path(folder) / 'optuna.db'}")
        study = optuna.create_study(study_name="listing", storage=storage)
        for _ in range(20):  # 20 finished trials with a parameter and 5 reported epochs each
            trial = study.ask()
            trial.suggest_float("x", 0, 1)
            for step in range(5):
                trial.report(0.1 * step, step)
            study.tell(trial, 0.5)
        print(f"20 finished, none unfinished:   {listing_ms(study):6.1f} ms")
        study.ask()
        print(f"  + 1 running:                  {listing_ms(study):6.1f} ms")
        for queued in (4, 20, 200):
            while len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))) < queued:
                study.enqueue_trial({})
            print(f"  + 1 running, {queued:3d} queued:      {listing_ms(study):6.1f} ms")
        storage.engine.dispose()


if __name__ == "__main__":
    main()
