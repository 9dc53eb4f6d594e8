"""Datasets and the image pipeline: where images come from, which labels they carry, and how they become batches.

A :class:`Dataset` is a plain description: class names, a task (``"multiclass"`` or ``"multilabel"``) and named
splits (``"train"``, ``"val"``, and usually ``"test"``). Each :class:`Split` holds its image *sources* (file
paths, encoded bytes, or decoded arrays) and labels; nothing is decoded until :func:`iter_batches` runs, so
building a dataset is cheap and a feature-cache hit never touches the pixels.

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
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, NamedTuple, Sequence

import numpy as np
from PIL import Image

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
    "RESIZE_METHOD",
    "Split",
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

Task = Literal["multiclass", "multilabel"]
ImageSource = str | bytes | np.ndarray
"""A path to an image file, an encoded image (JPEG/PNG/... bytes), or a decoded (H, W[, C]) uint8 array."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_NAMES = ("train", "val", "test")
_SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
RESIZE_METHOD = "pil-bilinear-shorter-side-center-crop-v1"
"""Names what :func:`resize_center_crop` does; part of the feature-cache key, so change it when the resize does."""

ELPV_CLASSES = ("functional", "possibly_defective", "likely_defective", "defective")
"""elpv defect probabilities 0, 1/3, 2/3 and 1, in that order."""
ELPV_MULTILABEL_CLASSES = ("defective", "mono", "poly")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message names the file or field and what was expected."""


class BadImageError(DatasetError):
    """An image that cannot be decoded (corrupt, truncated, not an image)."""


class BadImageWarning(UserWarning):
    """An unreadable image was skipped (the run goes on without it)."""


# --------------------------------------------------------------------------------------------------------------
# The description


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split: image sources and their labels, in a fixed order (the order of the cached features).

    sources: file paths (str), encoded images (bytes), or one (N, H, W[, C]) uint8 array.
    labels:  (N,) int32 class ids (multiclass) or (N, K) uint8 multi-hot (multilabel).
    names:   a human-readable name per item for messages (defaults to the path, or ``split[i]``).
    """

    sources: Sequence[ImageSource] | np.ndarray
    labels: np.ndarray
    names: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.labels):
            raise DatasetError(f"split has {len(self.sources)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        """What to call item ``i`` in a message: its path when it has one."""
        if self.names is not None:
            return str(self.names[i])
        source = self.sources[i]
        return source if isinstance(source, str) else f"item {i}"

    def subset(self, indices: np.ndarray) -> Split:
        """The items at ``indices`` (in that order)."""
        indices = np.asarray(indices, np.int64)
        if isinstance(self.sources, np.ndarray):
            sources: Sequence[ImageSource] | np.ndarray = self.sources[indices]
        else:
            sources = [self.sources[i] for i in indices]
        names = None if self.names is None else [self.names[i] for i in indices]
        return Split(sources, self.labels[indices], names)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image dataset: class names, task, and named splits (``train``, ``val``, optionally ``test``).

    ``root`` is where relative names are taken from when fingerprinting file-backed splits, so a moved or copied
    folder keeps its feature cache.
    """

    name: str
    classes: tuple[str, ...]
    task: Task
    splits: Mapping[str, Split]
    root: Path | None = None
    source: str = ""
    """Where it came from, for messages and reports (a path, ``tfds:NAME``, ``elpv``)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Split:
        """The split called ``name``; a clear error lists the ones there are."""
        if name not in self.splits:
            raise DatasetError(f"dataset {self.name!r} has no split {name!r}; it has {', '.join(self.splits)}")
        return self.splits[name]

    def fingerprint(self, split: str) -> str:
        """A hash of everything that decides split ``split``'s features and labels: task, classes, labels, and
        each image's identity (relative path + size + mtime for files, content hash for bytes and arrays)."""
        return _fingerprint(self, split)

    def class_counts(self, split: str) -> np.ndarray:
        """Images per class in ``split`` (multilabel: positives per label)."""
        labels = self.split(split).labels
        if self.task == "multilabel":
            return labels.sum(axis=0).astype(np.int64)
        return np.bincount(labels, minlength=self.num_classes)

    def summary(self) -> str:
        """One line per split: size and per-class counts."""
        lines = [f"{self.name} ({self.task}, {self.num_classes} classes: {', '.join(self.classes)})"]
        for name, split in self.splits.items():
            counts = ", ".join(f"{c}={n}" for c, n in zip(self.classes, self.class_counts(name), strict=True))
            lines.append(f"  {name}: {len(split)} images ({counts})")
        return "\n".join(lines)


def _fingerprint(dataset: Dataset, split_name: str) -> str:
    split = dataset.split(split_name)
    h = hashlib.sha256()
    h.update(json.dumps({"task": dataset.task, "classes": list(dataset.classes)}).encode())
    h.update(np.ascontiguousarray(split.labels).tobytes())
    h.update(str(split.labels.dtype).encode())
    if isinstance(split.sources, np.ndarray):
        h.update(repr(split.sources.shape).encode())
        h.update(np.ascontiguousarray(split.sources).tobytes())
    else:
        for source in split.sources:
            h.update(_source_identity(source, dataset.root))
    return h.hexdigest()[:32]


def _source_identity(source: ImageSource, root: Path | None) -> bytes:
    """Bytes that change when the image does: a file's path relative to ``root``, size and mtime; else content."""
    if isinstance(source, str):
        path = Path(source)
        try:
            rel = str(path.relative_to(root)) if root is not None else str(path)
        except ValueError:
            rel = str(path)
        try:
            st = path.stat()
            return f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
        except OSError:
            return f"{rel}\0missing\n".encode()
    if isinstance(source, bytes):
        return hashlib.sha256(source).digest()
    arr = np.ascontiguousarray(source)
    return hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).digest()


# --------------------------------------------------------------------------------------------------------------
# Loading


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
    _check_class_count(class_names, str(root))
    raw = {name: _read_class_folders(folder, class_names) for name, folder in split_dirs.items()}
    splits = {name: Split(paths, np.asarray(labels, np.int32)) for name, (paths, labels) in raw.items()}
    _check_multiclass_labels(splits["train"].labels, class_names, f"{split_dirs['train']}")
    splits = _complete_splits(splits, fractions, seed, carve)
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
    _check_class_count(class_names, str(path))
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
        _check_multiclass_labels(labels_arr, class_names, str(path))
    else:
        labels_arr = np.zeros((len(rows), len(class_names)), np.uint8)
        for r, (_, _, labels) in enumerate(rows):
            labels_arr[r, [index[label] for label in labels]] = 1
    splits = _complete_splits({"train": Split(sources, labels_arr)}, fractions, seed)
    return Dataset(path.stem, class_names, task, splits, root=path.parent, source=str(path))


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
    parts = stratified_split(level * 2 + poly, _fractions(fractions), seed=seed)
    full = Split(sources, labels)
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
    loaded: dict[str, Split] = {}
    for split, (images_name, labels_name) in files.items():
        images = _read_idx(_find_idx(folder, images_name))
        labels = _read_idx(_find_idx(folder, labels_name)).astype(np.int32)
        if images.ndim != 3 or len(images) != len(labels):
            shapes = f"{images.shape} images, {labels.shape} labels"
            raise DatasetError(f"{folder}: {images_name} and {labels_name} do not match ({shapes})")
        loaded[split] = Split(images, labels)
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
    string) is carved from train with a seeded stratified split. Images are kept encoded in memory (decoded by the
    pipeline). ``label_key`` names a ``ClassLabel`` (multiclass) or a ``Sequence(ClassLabel)`` (multilabel).
    """
    import tensorflow_datasets as tfds  # heavy (imports TensorFlow): only when a TFDS dataset is asked for

    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    except tfds.core.registered.DatasetNotFoundError as err:
        raise DatasetError(
            f"unknown dataset {name!r}: not an existing path, not a built-in (elpv, elpv-multilabel, fashion_mnist), "
            "and not a TFDS dataset name"
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
    _check_class_count(classes, f"tfds:{name}")
    if isinstance(split, str):
        wanted: dict[str, str] = {"train": split}
    elif split is None:
        wanted = {"train": "train", "val": "validation", "test": "test"}
    else:
        wanted = dict(split)
    splits: dict[str, Split] = {}
    for ours, theirs in wanted.items():
        required = ours == "train" or split is not None
        read = _read_tfds_split(builder, theirs, image_key, label_key, len(classes), multilabel, required)
        if read is not None:
            splits[ours] = read
    splits = _complete_splits(splits, fractions, seed, ("val", "test") if isinstance(split, str) else ("val",))
    task: Task = "multilabel" if multilabel else "multiclass"
    if not multilabel:
        _check_multiclass_labels(splits["train"].labels, classes, f"tfds:{name}")
    return Dataset(name, classes, task, splits, root=None, source=f"tfds:{name}")


def _read_tfds_split(
    builder: Any, split: str, image_key: str, label_key: str, num_classes: int, multilabel: bool, required: bool
) -> Split | None:
    """Every (encoded image, label) of one TFDS split, or None when an optional split does not exist."""
    import tensorflow_datasets as tfds

    try:
        ds = builder.as_dataset(split=split, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()})
    except (ValueError, KeyError) as err:
        if required:
            raise DatasetError(f"tfds:{builder.name}: cannot read split {split!r} ({err})") from err
        return None
    except AssertionError as err:  # TFDS asserts when the data is not prepared in data_dir
        raise DatasetError(
            f"tfds:{builder.name}: not prepared in {builder.data_dir}; prepare it once with "
            f"`tfds build {builder.name} --data_dir DIR` (needs the network) and pass that data_dir"
        ) from err
    sources: list[ImageSource] = []
    labels: list[Any] = []
    for example in tfds.as_numpy(ds):
        sources.append(example[image_key])
        labels.append(example[label_key])
    if multilabel:
        multi_hot = np.zeros((len(labels), num_classes), np.uint8)
        for r, ids in enumerate(labels):
            multi_hot[r, np.asarray(ids, np.int64)] = 1
        label_array = multi_hot
    else:
        label_array = np.asarray(labels, np.int32).reshape(-1)
    return Split(sources, label_array, [f"tfds:{builder.name}/{split}[{i}]" for i in range(len(sources))])


def _check_class_count(classes: Sequence[str], where: str) -> None:
    if len(classes) < 2:
        raise DatasetError(
            f"{where}: a classifier needs at least 2 classes, found {len(classes)} ({', '.join(classes) or 'none'})"
        )
    duplicates = [c for c, n in collections.Counter(classes).items() if n > 1]
    if duplicates:
        raise DatasetError(f"{where}: class names repeat: {', '.join(duplicates)}")


def _check_multiclass_labels(labels: np.ndarray, classes: Sequence[str], where: str) -> None:
    """At least two classes must have images; ids must index ``classes``."""
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DatasetError(f"{where}: label ids outside 0..{len(classes) - 1}")
    present = np.unique(labels)
    if present.size < 2:
        only = classes[int(present[0])] if present.size else "none"
        raise DatasetError(f"{where}: every image has the same class ({only}); a classifier needs at least 2")


# --------------------------------------------------------------------------------------------------------------
# Splitting


def _fractions(fractions: Mapping[str, float] | None) -> dict[str, float]:
    out = {"val": 0.2, "test": 0.2}
    out.update(fractions or {})
    if any(f < 0 for f in out.values()) or sum(out.values()) >= 1:
        raise DatasetError(f"split fractions {out} must be >= 0 and leave some images for train")
    return out


def stratified_split(strata: np.ndarray, fractions: Mapping[str, float], *, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded stratified split of ``range(len(strata))``: within each stratum (a class id, a label row for
    multilabel, or any key), ``round(n * fraction)`` items go to each named split and the rest to ``"train"``.

    Returns sorted index arrays keyed ``"train"`` then ``fractions``' keys. The same strata and seed always
    give the same split (NumPy's PCG64 stream is stable across versions).
    """
    strata = np.asarray(strata)
    flat = strata.reshape(len(strata), -1)
    _, stratum_ids = np.unique(flat, axis=0, return_inverse=True)
    stratum_ids = stratum_ids.reshape(-1)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], **{name: [] for name in fractions}}
    for stratum in range(int(stratum_ids.max()) + 1 if len(stratum_ids) else 0):
        members = rng.permutation(np.flatnonzero(stratum_ids == stratum))
        start = 0
        for name, fraction in fractions.items():
            count = int(round(len(members) * fraction))
            count = min(count, len(members) - start - 1) if len(members) > 1 else 0
            parts[name].append(members[start : start + max(count, 0)])
            start += max(count, 0)
        parts["train"].append(members[start:])
    return {name: np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for name, p in parts.items()}


def _complete_splits(
    splits: dict[str, Split], fractions: Mapping[str, float] | None, seed: int, carve: Sequence[str] = ("val", "test")
) -> dict[str, Split]:
    """Carve each split in ``carve`` that is missing out of train (stratified, seeded, ``fractions`` of it)."""
    all_fractions = _fractions(fractions)
    missing = {name: all_fractions[name] for name in carve if name not in splits and all_fractions[name] > 0}
    if not missing:
        return _ordered(splits)
    train = splits["train"]
    parts = stratified_split(train.labels, missing, seed=seed)
    out = dict(splits)
    out["train"] = train.subset(parts["train"])
    for name in missing:
        out[name] = train.subset(parts[name])
    return _ordered(out)


def _ordered(splits: Mapping[str, Split]) -> dict[str, Split]:
    order = [s for s in SPLIT_NAMES if s in splits] + [s for s in splits if s not in SPLIT_NAMES]
    return {name: splits[name] for name in order}


# --------------------------------------------------------------------------------------------------------------
# Decoding and the batched pipeline


def load_image(source: ImageSource, *, name: str | None = None) -> Image.Image:
    """Decode one image to an RGB PIL image: grayscale is replicated, alpha dropped (as PIL/torchvision do),
    16-bit scaled to 8-bit. Any failure (missing, corrupt, truncated, not an image) raises
    :class:`BadImageError` naming the file."""
    label = name or (source if isinstance(source, str) else "image")
    try:
        if isinstance(source, np.ndarray):
            return _array_to_rgb(source)
        with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as image:
            image.load()  # decode now: truncated files fail here, not later
            return _to_rgb(image)
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... for bad files
        raise BadImageError(f"{label}: cannot decode image ({type(err).__name__}: {err})") from err


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {array.dtype}")
    return _to_rgb(Image.fromarray(array))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode.startswith("I;16") or values.max() > 255 else 1.0
        image = Image.fromarray(np.clip(np.rint(values / scale), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` (bilinear, antialiased when shrinking), then take the centred
    ``size`` x ``size`` crop; (size, size, 3) uint8. Images smaller than ``size`` are scaled up."""
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new != (width, height):
        image = image.resize(new, Image.Resampling.BILINEAR)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


class Batch(NamedTuple):
    """One batch: images (B, S, S, 3) uint8 (or float32 in [0, 255]), labels, dataset indices of the images, and
    the indices of this batch's items that were skipped as unreadable."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    skipped: np.ndarray


def iter_batches(
    split: Split,
    *,
    image_size: int,
    batch_size: int,
    indices: Sequence[int] | np.ndarray | None = None,
    strict: bool = False,
    num_workers: int | None = None,
    prefetch: int = 2,
    dtype: type | np.dtype = np.uint8,
) -> Iterator[Batch]:
    """Decode, convert to RGB and resize+crop ``split``'s images (``indices``, default all, in order) to
    ``image_size``, in batches of ``batch_size``, on a thread pool that runs ``prefetch`` batches ahead
    (PIL releases the GIL while decoding and resizing).

    An unreadable image is left out of its batch with a :class:`BadImageWarning` naming it (and a closing warning
    with the count), or raises :class:`BadImageError` when ``strict``. Batches keep their place even when every
    image in one is bad (``images`` is then empty), so callers can track progress by ``indices``/``skipped``.
    """
    order = np.arange(len(split)) if indices is None else np.asarray(indices, np.int64)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    workers = num_workers or min(4, os.cpu_count() or 1)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    skipped_total = 0

    def decode(i: int) -> np.ndarray:
        return resize_center_crop(load_image(split.sources[i], name=split.name(i)), image_size)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jaxheads-decode")
    pending: collections.deque[tuple[np.ndarray, list[concurrent.futures.Future[np.ndarray]]]] = collections.deque()
    try:
        next_chunk = 0
        while pending or next_chunk < len(chunks):
            while next_chunk < len(chunks) and len(pending) <= max(prefetch, 0):
                ids = chunks[next_chunk]
                pending.append((ids, [pool.submit(decode, int(i)) for i in ids]))
                next_chunk += 1
            ids, futures = pending.popleft()
            images, kept, bad = [], [], []
            for i, future in zip(ids, futures, strict=True):
                try:
                    images.append(future.result())
                    kept.append(i)
                except BadImageError as err:
                    if strict:
                        raise
                    warnings.warn(f"skipping unreadable image {err}", BadImageWarning, stacklevel=2)
                    bad.append(i)
            skipped_total += len(bad)
            kept_ids = np.asarray(kept, np.int64)
            stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
            yield Batch(stacked.astype(dtype, copy=False), split.labels[kept_ids], kept_ids, np.asarray(bad, np.int64))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if skipped_total:
        warnings.warn(
            f"skipped {skipped_total} of {len(order)} images that could not be decoded (strict=True fails instead)",
            BadImageWarning,
            stacklevel=2,
        )
