"""Datasets -> tensors with deterministic train/validation/test splits and normalisation statistics.

Images stay compact (uint8, N x C x H x W) and are normalised on the device by the network's first
layer; tabular data becomes float32 features. Statistics come from the training split only.

Sources (`load_dataset`): scikit-learn's `digits`, `breast_cancer`, `wine` (built in, offline);
`mnist`, `fashion_mnist`, `kmnist` (IDX files) and `cifar10` (python batches) from `--data-dir` in
torchvision's layout, downloaded only when asked; `csv` and `parquet` tables, `npz` arrays and an
`image_folder` from `path`. From a Python session: `dataset_from_python`.

Modules: dataset (records, identity, preprocessing), splits, targets, builtin, idx, tabular, arrays,
images, python, load.
"""

from automl.data.arrays import as_inputs, dataset_from_arrays, load_npz
from automl.data.builtin import BUILTIN_DATASETS, CIFAR10_CLASSES, CIFAR10_FILES, CIFAR10_FOLDER
from automl.data.dataset import MAX_IN_MEMORY_BYTES, DataError, Dataset, Split
from automl.data.idx import IDX_DATASETS, IDX_FILES, read_idx, write_idx
from automl.data.images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, decode_image, load_image_folder
from automl.data.load import DATASET_NAMES, FILE_SOURCES, load_dataset
from automl.data.python import dataset_from_python
from automl.data.tabular import dataset_from_frame, encode_frame, fit_encoding, read_table

__all__ = [
    "BUILTIN_DATASETS", "CIFAR10_CLASSES", "CIFAR10_FILES", "CIFAR10_FOLDER", "DATASET_NAMES",
    "FILE_SOURCES", "IDX_DATASETS", "IDX_FILES", "IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS",
    "MAX_IN_MEMORY_BYTES", "DataError", "Dataset", "Split", "as_inputs", "dataset_from_arrays",
    "dataset_from_frame", "dataset_from_python", "decode_image", "encode_frame", "fit_encoding",
    "load_dataset", "load_image_folder", "load_npz", "read_idx", "read_table", "write_idx",
]
