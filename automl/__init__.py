"""automl: find a good custom PyTorch network for a dataset with Optuna, recorded in MLflow.

    import automl
    result = automl.search("search_spaces/digits_mlp.yaml", trials=30, seed=0)
    result.best.model, result.best.params, result.best.metrics, result.trials, result.model_uri
    best = automl.load_best("digits_mlp")           # the registered champion, never unpickled

Names are imported on first use: torch, Optuna and MLflow are heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"
_EXPORTS = {
    "search": "automl.api",
    "SearchResult": "automl.api",
    "load_best": "automl.best",
    "Space": "automl.space",
    "SpaceError": "automl.space",
    "DataError": "automl.data",
    "UsageError": "automl.errors",
    "FatalError": "automl.errors",
    "compare_studies": "automl.compare",
    "refine_space": "automl.refine",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'automl' has no attribute {name!r}")
