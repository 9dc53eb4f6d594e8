"""animal-mnist (PyPI ``animal-mnist`` 0.4, MIT): 10,000 28x28 grayscale animal silhouettes, 1,000 per class.

The package ships its data as two gzip'd pickles of NumPy arrays, and importing it imports TensorFlow; so the package
is never imported here. Its folder is found with :func:`importlib.util.find_spec` (which runs none of its code) and
the pickles are read with :class:`ArrayUnpickler`, which rebuilds NumPy arrays and refuses every other global: a
pickle can run any code it names, and these files come from a registry. The set ships no splits, so train/val/test
are carved with the seeded stratified split (60/20/20 by default, as for elpv). :mod:`jaxheads.data` re-exports
:func:`animal_mnist`.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxheads.data.dataset import (
    Dataset,
    DatasetError,
    ImageSplit,
    split_fractions,
    stratified_split,
)

__all__ = ["ANIMAL_MNIST_CLASSES", "ANIMAL_MNIST_FILES", "ArrayUnpickler", "animal_mnist", "read_array_pickle"]

ANIMAL_MNIST_CLASSES = ("Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra")
"""Label ids 0..9 in this order (the package's README lists them so, and the images agree)."""
ANIMAL_MNIST_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")
"""(images (N, 28, 28) uint8, labels (N,) integers), in the package's ``data/Animal_MNIST`` folder."""

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's ``_reconstruct``, wherever this numpy keeps it
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # NumPy 1 wrote this name (these files do)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # NumPy 2
}
"""Every global a plain numeric array's pickle names (protocols 2-4): the array, its dtype, the constructor."""


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds NumPy arrays: any other global (a function or class the pickle would call)
    and any persistent id raise :class:`pickle.UnpicklingError` before anything runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refused global {module}.{name} (only NumPy arrays may be unpickled)")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id (only NumPy arrays may be unpickled)")


def read_array_pickle(path: str | os.PathLike[str]) -> np.ndarray:
    """The numeric NumPy array in the gzip'd pickle at ``path``, read with :class:`ArrayUnpickler`. Anything else
    (another global, an object array, not gzip, not a pickle) raises :class:`DatasetError` in one line naming it."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        value = ArrayUnpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as err:
        raise DatasetError(f"{path}: {err}") from err
    except (OSError, EOFError, zlib.error, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise DatasetError(f"{path}: expected a gzip'd pickle of a NumPy array ({type(err).__name__}: {err})") from err
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "uif":
        kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise DatasetError(f"{path}: expected a pickled numeric NumPy array, got {kind}")
    return value


def _package_folder() -> Path:
    """``animal_mnist/data/Animal_MNIST`` of the installed package, found without importing it."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "dataset 'animal_mnist' needs the animal-mnist package (its files are read, it is never imported): "
            "pip install --no-deps animal-mnist"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"


def _read(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W) uint8, labels (N,) int32) from ``folder``, checked against each other and the classes."""
    images_path, labels_path = (folder / name for name in ANIMAL_MNIST_FILES)
    for path in (images_path, labels_path):
        if not path.is_file():
            raise DatasetError(f"animal_mnist: {path} not found; reinstall it: pip install --no-deps animal-mnist")
    images, labels = read_array_pickle(images_path), read_array_pickle(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(f"{images_path}: expected (N, H, W) uint8 images, got {images.shape} {images.dtype}")
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"{labels_path}: expected ({len(images)},) integer labels, got {labels.shape} {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(ANIMAL_MNIST_CLASSES)):
        raise DatasetError(f"{labels_path}: label ids outside 0..{len(ANIMAL_MNIST_CLASSES) - 1}")
    return images, labels.astype(np.int32)


def animal_mnist(
    *, root: str | os.PathLike[str] | None = None, seed: int = 0, fractions: Mapping[str, float] | None = None
) -> Dataset:
    """animal-mnist from the installed ``animal-mnist`` package's files (``root``: a folder holding
    :data:`ANIMAL_MNIST_FILES` instead), decoded in memory. It ships no splits: ``val`` and ``test`` (``fractions``,
    default 0.2 each) are carved per class with :func:`~jaxheads.data.dataset.stratified_split` (``seed``), the rest
    is ``train``."""
    folder = Path(root) if root is not None else _package_folder()
    images, labels = _read(folder)
    full = ImageSplit(images, labels)
    parts = stratified_split(labels, split_fractions(fractions), seed=seed)
    splits = {name: full.subset(idx) for name, idx in parts.items()}
    return Dataset("animal_mnist", ANIMAL_MNIST_CLASSES, "multiclass", splits, root=folder, source="animal_mnist")
