"""`python -m automl`: the command line; a search then exits without the interpreter's teardown."""

import atexit
import contextlib
import os
import sys
import threading

from automl.cli import main


def run() -> None:
    """Run the command line and exit with its code.

    A search has closed both of its stores when it returns (its Optuna engine is disposed, so
    SQLite folds and removes its write-ahead log; MLflow's SQLite store keeps none), so once no
    thread runs beside the main one it leaves without tearing the interpreter down: with torch,
    MLflow and SQLAlchemy loaded that takes about a second and writes nothing. The exit handlers
    (logging, temporary folders, child processes) still run and the output is flushed. Other
    commands exit as usual: their stores are closed by the teardown."""
    code = main()
    if sys.argv[1:2] != ["search"] or threading.active_count() > 1:
        raise SystemExit(code)
    atexit._run_exitfuncs()
    with contextlib.suppress(OSError):  # a closed pipe (`automl search ... | head`) is not an error
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
