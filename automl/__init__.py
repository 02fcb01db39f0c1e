"""automl: find a good custom PyTorch network for a dataset with Optuna, recorded in MLflow.

`automl.load_best(study)` returns the best network of a finished search (see `automl.best`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_best", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "load_best":  # imported on use: torch and MLflow are heavy
        from automl.best import load_best

        return load_best
    raise AttributeError(f"module 'automl' has no attribute {name!r}")
