"""Datasets and the image pipeline: where images come from, which labels they carry, and how they become batches.

A :class:`Dataset` is a plain description: class names, a task (``"multiclass"`` or ``"multilabel"``) and named
splits (``"train"``, ``"val"``, and usually ``"test"``). Each :class:`ImageSplit` (also ``Split``) holds its image
*sources* (file paths, encoded bytes, or decoded arrays) and labels; nothing is decoded until :func:`iter_batches`
runs, so building a dataset is cheap and a feature-cache hit never touches the pixels.

Sources, all through :func:`load_dataset`:

- ``"elpv"`` — the embedded default: 2,624 real 300x300 grayscale electroluminescence images of solar cells
  (PyPI ``elpv-dataset``, CC-BY-NC-SA-4.0). Multiclass over the four expert defect probabilities
  (:data:`ELPV_CLASSES`).
- ``"elpv-multilabel"`` — the same images as multi-hot ``("defective", "mono", "poly")``: ``defective`` when the
  defect probability is >= 1/2 (i.e. 2/3 or 1), plus the cell type (exactly one of mono/poly). Both elpv variants
  share one seeded split, stratified by (defect level, cell type).
- ``"fashion_mnist"`` — Debian's ``dataset-fashion-mnist`` IDX files under ``/usr/share/datasets/fashion-mnist/``
  (60k train, of which a stratified ``val`` is held out, and the official 10k test).
- an image folder with one sub-folder per class, optionally under ``train/``, ``val/`` and ``test/``;
- a CSV file of ``path,label[,label...]`` rows (paths relative to the CSV), multilabel by default;
- any TFDS dataset: ``"tfds:NAME"`` (or a bare name that is none of the above), read with ``tfds.builder`` from
  ``data_dir`` when given.

Splits that a source does not define are carved with :func:`stratified_split` (seeded, so reruns and the feature
cache see the same images). Bad input raises :class:`DatasetError` naming the file or field at load time; an
unreadable image is found when decoded and is skipped with a :class:`BadImageWarning` naming it (or raises
:class:`BadImageError` with ``strict=True``).

This module is the public face of the data side: it picks the source (:func:`load_dataset`) and re-exports every
name of the three modules that do the work:

- :mod:`jaxheads.dataset` — the description (:class:`Dataset`, :class:`ImageSplit`, errors, fingerprint) and the
  seeded stratified split;
- :mod:`jaxheads.loaders` — the sources above, one function each;
- :mod:`jaxheads.images` — decoding, resize + centre crop, and the batch pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from jaxheads.dataset import (SPLIT_NAMES, BadImageError, BadImageWarning, Dataset, DatasetError, ImageSource,
                              ImageSplit, Split, Task, stratified_split)
from jaxheads.images import RESIZE_METHOD, Batch, iter_batches, load_image, resize_center_crop
from jaxheads.loaders import (ELPV_CLASSES, ELPV_MULTILABEL_CLASSES, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR,
                              IMAGE_EXTENSIONS, elpv, fashion_mnist, from_csv, from_folder, from_tfds)

__all__ = [
    "BadImageError",
    "BadImageWarning",
    "Batch",
    "Dataset",
    "DatasetError",
    "ELPV_CLASSES",
    "ELPV_MULTILABEL_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "ImageSplit",
    "RESIZE_METHOD",
    "SPLIT_NAMES",
    "Split",
    "Task",
    "elpv",
    "fashion_mnist",
    "from_csv",
    "from_folder",
    "from_tfds",
    "iter_batches",
    "load_dataset",
    "load_image",
    "resize_center_crop",
    "stratified_split",
]


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
    names ``elpv``, ``elpv-multilabel``, ``fashion_mnist``; ``tfds:NAME`` or any other name as a TFDS dataset.

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
    if text.startswith("tfds:"):
        return from_tfds(text[5:], split=split, data_dir=data_dir, seed=seed, fractions=fractions)
    if os.sep in text or text.startswith(".") or path.suffix.lower() == ".csv":
        raise FileNotFoundError(f"dataset path {text} does not exist")
    return from_tfds(text, split=split, data_dir=data_dir, seed=seed, fractions=fractions)
