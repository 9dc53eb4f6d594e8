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
- ``"animal_mnist"`` — PyPI ``animal-mnist`` (MIT): 10,000 28x28 animal silhouettes, 10 balanced classes
  (:data:`ANIMAL_MNIST_CLASSES`), read from the package's two gzip'd pickles with an unpickler that only rebuilds
  NumPy arrays (the package itself, which imports TensorFlow, is never imported); seeded stratified train/val/test.
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

- :mod:`jaxheads.data.dataset` — the description (:class:`Dataset`, :class:`ImageSplit`, errors, fingerprint) and the
  seeded stratified split;
- :mod:`jaxheads.data.sources` — the sources above, one function each (animal-mnist in
  :mod:`jaxheads.data.animal_mnist`);
- :mod:`jaxheads.data.images` — decoding, resize + centre crop, and the batch pipeline.
"""

from .dataset import BadImageError, BadImageWarning, Dataset, DatasetError, ImageSource, ImageSplit, SPLIT_NAMES, Split, Task, stratified_split
from .images import Batch, RESIZE_METHOD, iter_batches, load_image, resize_center_crop
from .load import load_dataset
from .sources import ANIMAL_MNIST_CLASSES, ELPV_CLASSES, ELPV_MULTILABEL_CLASSES, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, IMAGE_EXTENSIONS, animal_mnist, elpv, fashion_mnist, from_csv, from_folder, from_tfds

__all__ = [
    "ANIMAL_MNIST_CLASSES",
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
    "animal_mnist",
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
