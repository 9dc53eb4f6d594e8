"""Pick a dataset's source by name or path: :func:`load_dataset`, the one entry point of the data stage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from jaxheads.data.dataset import Dataset, DatasetError, Task
from jaxheads.data.sources import animal_mnist, elpv, fashion_mnist, from_csv, from_folder, from_tfds

__all__ = ["load_dataset"]


def load_dataset(
    source: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    split: str | Mapping[str, str] | None = None,
    classes: Sequence[str] | None = None,
    task: Task | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> Dataset:
    """Resolve ``source`` to a :class:`Dataset`, in this order: an existing ``.csv`` file or folder; the built-in
    names ``elpv``, ``elpv-multilabel``, ``fashion_mnist``, ``animal_mnist``; ``tfds:NAME`` or any other name as a
    TFDS dataset.

    ``split`` only applies to TFDS (see :func:`from_tfds`); ``classes`` and ``task`` to CSV files and folders;
    ``seed``, ``val_fraction``, ``test_fraction`` to splits carved from a source that does not define them.
    """
    fractions = {"val": val_fraction, "test": test_fraction}
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return from_folder(path, classes=classes, seed=seed, fractions=fractions)
    if path.is_file():
        if path.suffix.lower() in {".csv", ".tsv", ".txt"}:
            return from_csv(path, classes=classes, task=task or "multilabel", seed=seed, fractions=fractions)
        raise DatasetError(f"{path}: expected a folder of class sub-folders or a .csv of path,label rows")
    builtin = text.lower().replace("_", "-")
    if builtin in ("elpv", "elpv-multilabel"):
        return elpv(multilabel=builtin == "elpv-multilabel", seed=seed, fractions=fractions)
    if builtin == "fashion-mnist":
        return fashion_mnist(seed=seed, val_fraction=val_fraction)
    if builtin == "animal-mnist":
        return animal_mnist(seed=seed, fractions=fractions)
    if text.startswith("tfds:"):
        return from_tfds(text[5:], split=split, data_dir=data_dir, seed=seed, fractions=fractions)
    if os.sep in text or text.startswith(".") or path.suffix.lower() == ".csv":
        raise FileNotFoundError(f"dataset path {text} does not exist")
    return from_tfds(text, split=split, data_dir=data_dir, seed=seed, fractions=fractions)
