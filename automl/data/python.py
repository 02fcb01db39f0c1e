"""Data handed over from a Python session: (X, y) arrays or tensors, (DataFrame, "target column"),
or a `torch.utils.data.Dataset` of (x, y) pairs, materialised once into tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from automl.data.arrays import dataset_from_arrays
from automl.data.dataset import MAX_IN_MEMORY_BYTES, DataError, Dataset, gib
from automl.data.splits import check_fractions, check_task
from automl.data.tabular import dataset_from_frame


def dataset_from_python(
    data: Any,
    task: str | None = None,
    seed: int = 0,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    validation: Any = None,
    test: Any = None,
    name: str | None = None,
) -> Dataset:
    """A Dataset from in-memory data. `data` (and the optional `validation` and `test` sets, in the
    same form) is `(X, y)` with numpy arrays or torch tensors, `(DataFrame, "target column")`, or a
    torch Dataset of (x, y) pairs (refused above MAX_IN_MEMORY_BYTES, 4 GiB, estimated from its
    first item). The task is inferred unless given: float targets -> regression, integer, bool or
    string labels -> classification (string labels become class indices; the names are kept).
    Splits not given are carved seeded (stratified for classes) from `data`."""
    check_task(task, "python data")
    check_fractions(validation_fraction, test_fraction, "python data", seed)
    name = name or "python"
    forms = {"train": data, "validation": validation, "test": test}
    if _is_frame_pair(data):
        for key in ("validation", "test"):
            if forms[key] is not None and not _is_frame_pair(forms[key]):
                raise DataError(f"python data: {key} must be (DataFrame, target) like the training data")
        frame, target = data
        others = {k: forms[k][0] if forms[k] is not None else None for k in ("validation", "test")}
        return dataset_from_frame(frame, target, task, seed, validation_fraction, test_fraction,
                                  name=name, source="python", where="python data", **others)
    parts = {key: None if value is None else _pair(value, key) for key, value in forms.items()}
    return dataset_from_arrays(parts, task, seed, validation_fraction, test_fraction,
                               name=name, source="python", where="python data")


def _is_frame_pair(value: Any) -> bool:
    return (isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[0], pd.DataFrame)
            and isinstance(value[1], str | int))


def _pair(value: Any, key: str) -> tuple[Any, Any]:
    """(x, y) from a pair of arrays / tensors or from a torch Dataset."""
    if isinstance(value, torch.utils.data.Dataset):
        return materialise(value, f"python data ({key})")
    if isinstance(value, tuple | list) and len(value) == 2:
        if isinstance(value[0], pd.DataFrame):
            raise DataError(f"python data ({key}): a DataFrame comes with its target column's name, "
                            f"got {type(value[1]).__name__}")
        return value[0], value[1]
    raise DataError(f"python data ({key}): expected (X, y), (DataFrame, 'target') or a "
                    f"torch.utils.data.Dataset, got {type(value).__name__}")


def _item_array(value: Any) -> np.ndarray:
    """One input as an array: tensors, numpy arrays, PIL images and numbers."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _item_label(value: Any) -> Any:
    if isinstance(value, torch.Tensor | np.ndarray):
        if _item_array(value).size == 1:
            return value.item()
        raise DataError(f"a target must be one value per item, got shape {tuple(value.shape)}")
    return value


def materialise(dataset: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Every (x, y) item of a map-style torch Dataset stacked into arrays, once; refused up front
    when the first item's size times the length exceeds MAX_IN_MEMORY_BYTES."""
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        raise DataError(f"{where}: a torch Dataset needs __len__ and indexing (an IterableDataset "
                        f"cannot be split); pass (X, y) arrays instead")
    n = len(dataset)
    if n == 0:
        raise DataError(f"{where}: the torch Dataset is empty")
    first = dataset[0]
    if not isinstance(first, tuple | list) or len(first) != 2:
        raise DataError(f"{where}: items must be (x, y) pairs, item 0 is {type(first).__name__}")
    x0 = _item_array(first[0])
    need = x0.nbytes * n
    if need > MAX_IN_MEMORY_BYTES:
        raise DataError(f"{where}: {n} items of shape {x0.shape} ({x0.dtype}) need about {gib(need)}, "
                        f"above the {gib(MAX_IN_MEMORY_BYTES)} in-memory limit; pass a "
                        f"torch.utils.data.Subset or load the data from files")
    x = np.empty((n, *x0.shape), dtype=x0.dtype)
    labels: list[Any] = []
    for i in range(n):
        item = first if i == 0 else dataset[i]
        xi = x0 if i == 0 else _item_array(item[0])
        if xi.shape != x0.shape:
            raise DataError(f"{where}: item {i} has inputs of shape {xi.shape}, item 0 {x0.shape}")
        x[i] = xi
        try:
            labels.append(_item_label(item[1]))
        except DataError as e:
            raise DataError(f"{where}: item {i}: {e}") from None
    return x, np.asarray(labels)
