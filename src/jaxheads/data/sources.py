"""Where images come from: an image folder, a CSV of ``path,label`` rows, the embedded elpv solar-cell dataset,
Debian's Fashion-MNIST IDX files, and any TFDS dataset (animal-mnist's pickles have their own module,
:mod:`jaxheads.data.animal_mnist`, re-exported here). Each returns a :class:`~jaxheads.data.dataset.Dataset` whose
splits hold image sources (nothing is decoded here); :func:`jaxheads.data.load_dataset` picks the source, and
:mod:`jaxheads.data` re-exports these names.
"""

from __future__ import annotations

import csv
import gzip
import os
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxheads.data.animal_mnist import ANIMAL_MNIST_CLASSES, animal_mnist  # noqa: F401  (one of the sources)
from jaxheads.data.dataset import (Dataset, DatasetError, ImageSource, ImageSplit, LazyImages, Task, check_class_count,
                              check_multiclass_labels, complete_splits, split_fractions, stratified_split)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}

ELPV_CLASSES = ("functional", "possibly_defective", "likely_defective", "defective")
"""elpv defect probabilities 0, 1/3, 2/3 and 1, in that order."""
ELPV_MULTILABEL_CLASSES = ("defective", "mono", "poly")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
LABEL_CHUNK = 1024
"""Records per read when a lazy TFDS split's labels are collected."""


def from_folder(
    root: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    fractions: Mapping[str, float] | None = None,
) -> Dataset:
    """An image folder: ``root/<class>/<image>`` (any depth below the class folder), or the same under
    ``root/train``, ``root/val`` (or ``valid``/``validation``) and ``root/test``. Class names are the train
    folder's sub-folder names, sorted (or ``classes``, which fixes their order). Without split folders, a seeded
    stratified split is carved; with ``train`` but no ``val``, ``val`` is carved from train.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    split_dirs = {_SPLIT_FOLDERS[p.name.lower()]: p for p in _subdirs(root) if p.name.lower() in _SPLIT_FOLDERS}
    if split_dirs and "train" not in split_dirs:
        raise DatasetError(f"{root}: has {', '.join(sorted(split_dirs))} split folders but no train/ folder")
    carve = ("val",) if split_dirs else ("val", "test")
    if not split_dirs:
        split_dirs = {"train": root}
    class_names = tuple(classes) if classes is not None else tuple(p.name for p in _subdirs(split_dirs["train"]))
    if not class_names:
        raise DatasetError(f"{split_dirs['train']}: no class sub-folders (expected {root}/<class>/<image files>)")
    check_class_count(class_names, str(root))
    raw = {name: _read_class_folders(folder, class_names) for name, folder in split_dirs.items()}
    splits = {name: ImageSplit(paths, np.asarray(labels, np.int32)) for name, (paths, labels) in raw.items()}
    check_multiclass_labels(splits["train"].labels, class_names, f"{split_dirs['train']}")
    splits = complete_splits(splits, fractions, seed, carve)
    return Dataset(root.name, class_names, "multiclass", splits, root=root, source=str(root))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_class_folders(folder: Path, classes: Sequence[str]) -> tuple[list[str], list[int]]:
    """Image paths and class ids under ``folder/<class>/``; an empty or unknown class folder is an error."""
    known = set(classes)
    for sub in _subdirs(folder):
        if sub.name not in known:
            raise DatasetError(f"{sub}: class folder {sub.name!r} is not one of the classes ({', '.join(classes)})")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        files = sorted(
            str(p)
            for p in class_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            raise DatasetError(
                f"{class_dir}: class folder is empty (no {'/'.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))} files)"
            )
        paths += files
        labels += [label] * len(files)
    return paths, labels


def from_csv(
    path: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    task: Task = "multilabel",
    seed: int = 0,
    fractions: Mapping[str, float] | None = None,
) -> Dataset:
    """A CSV of ``path,label[,label...]`` rows; paths are relative to the CSV's folder (or absolute).

    A first row whose first cell is ``path``/``file``/``filename``/``image`` is a header; blank lines and lines
    starting with ``#`` are skipped. Multilabel (the default): a row's labels form its multi-hot target (a row
    may have none). Multiclass: each row has exactly one label. Class names are ``classes`` when given (a label
    outside it is an error naming the line), else the sorted set of labels seen. Every listed file must exist.
    """
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {path} does not exist")
    rows = _read_csv_rows(path)
    if not rows:
        raise DatasetError(f"{path}: no rows (expected path,label[,label...])")
    class_names, index = _csv_classes(path, rows, classes, task)
    missing = [(line, rel) for line, rel, _ in rows if not (path.parent / rel).is_file()]
    if missing:
        line, rel = missing[0]
        raise DatasetError(
            f"{path}:{line}: image file {rel!r} does not exist ({path.parent / rel})"
            + (f"; {len(missing) - 1} more rows name missing files" if len(missing) > 1 else "")
        )
    sources = [str((path.parent / rel).absolute()) for _, rel, _ in rows]
    if task == "multiclass":
        labels_arr = np.asarray([index[labels[0]] for _, _, labels in rows], np.int32)
        check_multiclass_labels(labels_arr, class_names, str(path))
    else:
        labels_arr = np.zeros((len(rows), len(class_names)), np.uint8)
        for r, (_, _, labels) in enumerate(rows):
            labels_arr[r, [index[label] for label in labels]] = 1
    splits = complete_splits({"train": ImageSplit(sources, labels_arr)}, fractions, seed)
    return Dataset(path.stem, class_names, task, splits, root=path.parent, source=str(path))


def _csv_classes(
    path: Path, rows: list[tuple[int, str, list[str]]], classes: Sequence[str] | None, task: Task
) -> tuple[tuple[str, ...], dict[str, int]]:
    """The class names (``classes``, else the sorted labels seen) and their ids; a multiclass row without exactly
    one label, or a label outside ``classes``, is an error naming its line."""
    if task == "multiclass":
        for line, _, labels in rows:
            if len(labels) != 1:
                raise DatasetError(f"{path}:{line}: multiclass rows need exactly one label, got {len(labels)}")
    seen = sorted({label for _, _, labels in rows for label in labels})
    class_names = tuple(classes) if classes is not None else tuple(seen)
    index = {c: i for i, c in enumerate(class_names)}
    for line, _, labels in rows:
        for label in labels:
            if label not in index:
                known = ", ".join(class_names)
                raise DatasetError(f"{path}:{line}: label {label!r} is not in the class list ({known})")
    check_class_count(class_names, str(path))
    return class_names, index


def _read_csv_rows(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, relative path, labels) per data row."""
    rows: list[tuple[int, str, list[str]]] = []
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, cells in enumerate(csv.reader(f, delimiter=delimiter), start=1):
            cells = [c.strip() for c in cells]
            if not cells or not any(cells) or cells[0].startswith("#"):
                continue
            if not rows and line == 1 and cells[0].lower() in {"path", "file", "filename", "image"}:
                continue
            if not cells[0]:
                raise DatasetError(f"{path}:{line}: empty path field")
            rows.append((line, cells[0], [c for c in cells[1:] if c]))
    return rows


def elpv(*, multilabel: bool = False, seed: int = 0, fractions: Mapping[str, float] | None = None) -> Dataset:
    """The embedded default dataset (PyPI ``elpv-dataset``, CC-BY-NC-SA-4.0): solar-cell EL images.

    Reads only the label file here (images are decoded by the pipeline). Multiclass labels index
    :data:`ELPV_CLASSES` by defect probability; multilabel labels are multi-hot over
    :data:`ELPV_MULTILABEL_CLASSES`. The train/val/test split is stratified by (defect level, cell type) and is
    the same for both variants.
    """
    try:
        import elpv_dataset
    except ImportError as err:
        raise DatasetError("dataset 'elpv' needs the elpv-dataset package: pip install elpv-dataset") from err
    data_dir = Path(elpv_dataset.__file__).parent / "data"
    label_file = data_dir / "labels.csv"
    table = np.genfromtxt(label_file, dtype=["U64", "f8", "U8"], names=["path", "probability", "type"])
    level = np.rint(table["probability"] * 3).astype(np.int32)
    if not np.allclose(level / 3, table["probability"]) or level.min() < 0 or level.max() > 3:
        raise DatasetError(f"{label_file}: defect probabilities outside {{0, 1/3, 2/3, 1}}")
    poly = table["type"] == "poly"
    if not np.all(poly | (table["type"] == "mono")):
        raise DatasetError(f"{label_file}: cell types other than mono/poly")
    sources = [str(data_dir / p) for p in table["path"]]
    if multilabel:
        labels = np.stack([level >= 2, ~poly, poly], axis=1).astype(np.uint8)
        classes = ELPV_MULTILABEL_CLASSES
    else:
        labels, classes = level, ELPV_CLASSES
    parts = stratified_split(level * 2 + poly, split_fractions(fractions), seed=seed)
    full = ImageSplit(sources, labels)
    splits = {name: full.subset(idx) for name, idx in parts.items()}
    name = "elpv-multilabel" if multilabel else "elpv"
    return Dataset(name, classes, "multilabel" if multilabel else "multiclass", splits, root=data_dir, source=name)


def fashion_mnist(*, root: str | os.PathLike[str] | None = None, seed: int = 0, val_fraction: float = 0.1) -> Dataset:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` IDX files (``root`` overrides the folder):
    ``train`` (60k less a stratified ``val``) and the official 10k ``test``; 28x28 grayscale, decoded in memory.
    """
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    files = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    loaded: dict[str, ImageSplit] = {}
    for split, (images_name, labels_name) in files.items():
        images = _read_idx(_find_idx(folder, images_name))
        labels = _read_idx(_find_idx(folder, labels_name)).astype(np.int32)
        if images.ndim != 3 or len(images) != len(labels):
            shapes = f"{images.shape} images, {labels.shape} labels"
            raise DatasetError(f"{folder}: {images_name} and {labels_name} do not match ({shapes})")
        loaded[split] = ImageSplit(images, labels)
    parts = stratified_split(loaded["train"].labels, {"val": val_fraction}, seed=seed)
    splits = {"train": loaded["train"].subset(parts["train"]), "val": loaded["train"].subset(parts["val"])}
    splits["test"] = loaded["test"]
    return Dataset("fashion_mnist", FASHION_MNIST_CLASSES, "multiclass", splits, root=folder, source="fashion_mnist")


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"fashion_mnist: {folder / (stem + '.gz')} not found; install it with "
        "`apt-get install dataset-fashion-mnist` (or use tfds:fashion_mnist)"
    )


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: zero bytes, a type code, the rank, big-endian sizes, then the data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: truncated IDX file ({body.size} bytes for shape {shape})")
    return body.reshape(shape)


def from_tfds(
    name: str,
    *,
    split: str | Mapping[str, str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    seed: int = 0,
    fractions: Mapping[str, float] | None = None,
) -> Dataset:
    """A TFDS dataset read with ``tfds.builder(name, data_dir=...)`` (it must be prepared there, or mocked).

    ``split``: ``None`` takes the builder's ``train``, ``validation`` and ``test`` splits where they exist; a
    string (e.g. ``"train[:50%]"``) is one TFDS split that is divided into train/val/test; a mapping gives the
    TFDS split for each of ours (``{"train": "train[:80%]", "val": "train[80%:]"}``). A missing val (or test, for a
    string) is carved from train with a seeded stratified split. A builder prepared as ArrayRecord is read lazily:
    its labels are read once in chunks, and each image is read from disk when its batch is built (``as_data_source``),
    so memory does not grow with the dataset; its image ids name the record (``tfds:NAME/VERSION/split/size[i]``).
    A TFRecord-only builder is read through ``tf.data`` and keeps its encoded images in memory; that needs TensorFlow,
    which is not in the default install (``pip install "jaxheads[tfrecord]"``). ``label_key`` names a ``ClassLabel``
    (multiclass) or a ``Sequence(ClassLabel)`` (multilabel).
    """
    import tensorflow_datasets as tfds  # about 1 s to import (TensorFlow is not imported): only when asked for

    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    except tfds.core.registered.DatasetNotFoundError as err:
        raise DatasetError(
            f"unknown dataset {name!r}: not an existing path, not a built-in (elpv, elpv-multilabel, fashion_mnist, "
            "animal_mnist), and not a TFDS dataset name"
        ) from err
    features = builder.info.features
    for key in (image_key, label_key):
        if key not in features:
            raise DatasetError(f"tfds:{name}: no feature {key!r} (features: {', '.join(features.keys())})")
    label_feature = features[label_key]
    multilabel = isinstance(label_feature, tfds.features.Sequence)
    class_feature = label_feature.feature if multilabel else label_feature
    if not isinstance(class_feature, tfds.features.ClassLabel):
        raise DatasetError(f"tfds:{name}: feature {label_key!r} is not a ClassLabel (or a Sequence of them)")
    classes = tuple(class_feature.names)
    check_class_count(classes, f"tfds:{name}")
    if isinstance(split, str):
        wanted: dict[str, str] = {"train": split}
    elif split is None:
        wanted = {"train": "train", "val": "validation", "test": "test"}
    else:
        wanted = dict(split)
    splits: dict[str, ImageSplit] = {}
    for ours, theirs in wanted.items():
        required = ours == "train" or split is not None
        read = _read_tfds_split(builder, theirs, image_key, label_key, len(classes), multilabel, required)
        if read is not None:
            splits[ours] = read
    splits = complete_splits(splits, fractions, seed, ("val", "test") if isinstance(split, str) else ("val",))
    task: Task = "multilabel" if multilabel else "multiclass"
    if not multilabel:
        check_multiclass_labels(splits["train"].labels, classes, f"tfds:{name}")
    return Dataset(name, classes, task, splits, root=None, source=f"tfds:{name}")


def _read_tfds_split(
    builder: Any, split: str, image_key: str, label_key: str, num_classes: int, multilabel: bool, required: bool
) -> ImageSplit | None:
    """One TFDS split, or None when an optional split does not exist: lazy (:class:`TfdsRecords`) where the builder
    has an ArrayRecord form, else every encoded image read into memory through ``tf.data``."""
    try:
        return _lazy_tfds_split(builder, split, image_key, label_key, num_classes, multilabel)
    except _NoRandomAccess:
        return _eager_tfds_split(builder, split, image_key, label_key, num_classes, multilabel, required)
    except (ValueError, KeyError) as err:
        if required:
            raise DatasetError(f"tfds:{builder.name}: cannot read split {split!r} ({err})") from err
        return None


class _NoRandomAccess(Exception):
    """The builder has no random-access (ArrayRecord) form of its data."""


class TfdsRecords:
    """Random access to one TFDS split's encoded images through ``builder.as_data_source`` (ArrayRecord): opened on
    first read, so a dataset that is only fingerprinted or served from the feature cache never opens it."""

    def __init__(self, builder: Any, split: str, image_key: str) -> None:
        self.builder, self.split, self.image_key = builder, split, image_key
        self.prefix = f"tfds:{builder.info.full_name}/{split}/{builder.info.splits[split].num_examples}"
        self._source: Any = None
        self._lock = threading.Lock()

    def read(self, index: int) -> bytes:
        with self._lock:  # the decode threads share one reader; decoding itself runs outside the lock
            if self._source is None:
                self._source = _data_source(self.builder, self.split, self.image_key)
            return self._source[index][self.image_key]

    def identity(self, index: int) -> str:
        return f"{self.prefix}[{index}]"


def _data_source(builder: Any, split: str, image_key: str) -> Any:
    """``builder.as_data_source`` for ``split`` with the image left encoded (decoded by the pipeline)."""
    import tensorflow_datasets as tfds

    return builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()})


def _lazy_tfds_split(builder: Any, split: str, image_key: str, label_key: str, num_classes: int,
                     multilabel: bool) -> ImageSplit:
    """The split's labels, read in chunks (the images stay on disk); its images as :class:`LazyImages`."""
    import tensorflow_datasets as tfds

    formats = {builder.info.file_format, *getattr(builder.info, "alternative_file_formats", ())}
    if tfds.core.file_adapters.FileFormat.ARRAY_RECORD not in formats:
        raise _NoRandomAccess
    source = _data_source(builder, split, image_key)
    labels: list[Any] = []
    for start in range(0, len(source), LABEL_CHUNK):  # chunks: the label pass holds one chunk's images at a time
        chunk = source.__getitems__(list(range(start, min(start + LABEL_CHUNK, len(source)))))
        labels += [example[label_key] for example in chunk]
    records = TfdsRecords(builder, split, image_key)
    return ImageSplit(LazyImages(records, np.arange(len(source))), _label_array(labels, num_classes, multilabel))


def _label_array(labels: list[Any], num_classes: int, multilabel: bool) -> np.ndarray:
    """(N,) int32 class ids, or (N, K) uint8 multi-hot from each example's list of ids."""
    if not multilabel:
        return np.asarray(labels, np.int32).reshape(-1)
    multi_hot = np.zeros((len(labels), num_classes), np.uint8)
    for r, ids in enumerate(labels):
        multi_hot[r, np.asarray(ids, np.int64)] = 1
    return multi_hot


def _eager_tfds_split(
    builder: Any, split: str, image_key: str, label_key: str, num_classes: int, multilabel: bool, required: bool
) -> ImageSplit | None:
    """Every (encoded image, label) of one TFDS split in memory, through ``tf.data`` (TFRecord-only builders)."""
    import tensorflow_datasets as tfds

    _require_tensorflow(builder)
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()})
    except (ValueError, KeyError) as err:
        if required:
            raise DatasetError(f"tfds:{builder.name}: cannot read split {split!r} ({err})") from err
        return None
    except AssertionError as err:  # TFDS asserts when the data is not prepared in data_dir
        raise _not_prepared(builder) from err
    sources: list[ImageSource] = []
    labels: list[Any] = []
    for example in tfds.as_numpy(ds):
        sources.append(example[image_key])
        labels.append(example[label_key])
    names = [f"tfds:{builder.name}/{split}[{i}]" for i in range(len(sources))]
    return ImageSplit(sources, _label_array(labels, num_classes, multilabel), names)


def _not_prepared(builder: Any) -> DatasetError:
    return DatasetError(
        f"tfds:{builder.name}: not prepared in {builder.data_dir}; prepare it once with "
        f"`tfds build {builder.name} --data_dir DIR` (needs the network) and pass that data_dir"
    )


def _require_tensorflow(builder: Any) -> None:
    """Refuse, in one line naming the extra, a TFRecord-only builder when TensorFlow (``tf.data``) is not installed."""
    try:
        import tensorflow  # noqa: F401  (only the [tfrecord] extra installs it)
    except ImportError as err:
        if not builder.is_prepared():
            raise _not_prepared(builder) from err
        raise DatasetError(
            f"tfds:{builder.name}: prepared in {builder.data_dir} as TFRecord only, which is read through TensorFlow "
            f'(not installed): pip install "jaxheads[tfrecord]", or prepare it as ArrayRecord once with '
            f"`tfds build {builder.name} --file_format=array_record --data_dir DIR`"
        ) from err
