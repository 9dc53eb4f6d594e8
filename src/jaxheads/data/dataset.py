"""A labelled image dataset as a plain description: :class:`Dataset` (class names, task, named splits) and its
:class:`ImageSplit` s (image sources + labels, nothing decoded), the errors bad input raises, the per-image
identities the feature cache keys on (:meth:`Dataset.image_ids`, which do not depend on how the images are split),
and the seeded stratified split that carves val/test where a source defines none.

:mod:`jaxheads.data` is the public face and re-exports these names.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Iterable, Literal, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

Task = Literal["multiclass", "multilabel"]


class RecordReader(Protocol):
    """Random access to a collection of encoded images (a TFDS ArrayRecord split): read one when it is decoded."""

    def read(self, index: int) -> bytes | np.ndarray:
        """The encoded image (or decoded uint8 array) at ``index``."""
        ...

    def identity(self, index: int) -> str:
        """What names image ``index`` for the feature cache without reading it (e.g. ``tfds:NAME/VERSION/split[i]``)."""
        ...


class ImageRef(NamedTuple):
    """An image not read yet: item ``index`` of ``reader``; :func:`jaxheads.data.images.load_image` reads and decodes it."""

    reader: RecordReader
    index: int

    def read(self) -> bytes | np.ndarray:
        return self.reader.read(self.index)

    @property
    def name(self) -> str:
        return self.reader.identity(self.index)


ImageSource = str | bytes | np.ndarray | ImageRef
"""A path to an image file, an encoded image (JPEG/PNG/... bytes), a decoded (H, W[, C]) uint8 array, or an
:class:`ImageRef` read when its batch is built."""


class LazyImages(Sequence[ImageRef]):
    """A split's images as :class:`ImageRef` s into one reader: a reader and an index array, so neither the images nor
    one Python object per image is held; :meth:`ImageSplit.subset` keeps it lazy."""

    def __init__(self, reader: RecordReader, indices: np.ndarray) -> None:
        self.reader, self.indices = reader, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):  # type: ignore[override]  # int -> ImageRef, slice -> LazyImages
        if isinstance(i, slice):
            return LazyImages(self.reader, self.indices[i])
        return ImageRef(self.reader, int(self.indices[i]))

    def subset(self, indices: np.ndarray) -> LazyImages:
        return LazyImages(self.reader, self.indices[np.asarray(indices, np.int64)])

SPLIT_NAMES = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message names the file or field and what was expected."""


class BadImageError(DatasetError):
    """An image that cannot be decoded (corrupt, truncated, not an image)."""


class BadImageWarning(UserWarning):
    """An unreadable image was skipped (the run goes on without it)."""


# --------------------------------------------------------------------------------------------------------------
# The description


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split as images still to decode, with their labels (what the backbone reads); the same split's cached
    backbone features are a :class:`jaxheads.features.split.FeatureSplit` (what the heads train on).

    The items keep a fixed order: the order of the cached features.
    sources: file paths (str), encoded images (bytes), one (N, H, W[, C]) uint8 array, or :class:`LazyImages`.
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
        if isinstance(source, ImageRef):
            return source.name
        return source if isinstance(source, str) else f"item {i}"

    def subset(self, indices: np.ndarray) -> ImageSplit:
        """The items at ``indices`` (in that order)."""
        indices = np.asarray(indices, np.int64)
        if isinstance(self.sources, (np.ndarray, LazyImages)):
            sources: Sequence[ImageSource] | np.ndarray = (
                self.sources[indices] if isinstance(self.sources, np.ndarray) else self.sources.subset(indices))
        else:
            sources = [self.sources[i] for i in indices]
        names = None if self.names is None else [self.names[i] for i in indices]
        return ImageSplit(sources, self.labels[indices], names)


Split = ImageSplit
"""The name :class:`ImageSplit` had first; kept so ``data.Split`` keeps working."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image dataset: class names, task, and named splits (``train``, ``val``, optionally ``test``).

    ``root`` is where relative names are taken from when fingerprinting file-backed splits, so a moved or copied
    folder keeps its feature cache.
    """

    name: str
    classes: tuple[str, ...]
    task: Task
    splits: Mapping[str, ImageSplit]
    root: Path | None = None
    source: str = ""
    """Where it came from, for messages and reports (a path, ``tfds:NAME``, ``elpv``)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_sizes(self) -> dict[str, int]:
        """{split name: its number of examples}."""
        return {name: len(split) for name, split in self.splits.items()}

    def split(self, name: str) -> ImageSplit:
        """The split called ``name``; a clear error lists the ones there are."""
        if name not in self.splits:
            raise DatasetError(f"dataset {self.name!r} has no split {name!r}; it has {', '.join(self.splits)}")
        return self.splits[name]

    def fingerprint(self, split: str) -> str:
        """A hash of everything that decides split ``split``'s features and labels: task, classes, labels, and
        each image's identity (relative path + size + mtime for files, content hash for bytes and arrays, the
        reader's name for an :class:`ImageRef`)."""
        return _fingerprint(self, split)

    def image_ids(self, split: str) -> np.ndarray:
        """(N,) identity of each image of ``split``, 32 hex digits each (dtype ``S32``): a hash of what decides its
        pixels (relative path + size + mtime for a file, the content for bytes and arrays, the record it is read
        from for an :class:`ImageRef`), and of nothing else: not its label, not which split holds it. An image keeps its id when the splits are drawn again (another
        ``seed``), so the feature cache finds its features (:mod:`jaxheads.features`)."""
        split_ = self.split(split)
        if isinstance(split_.sources, np.ndarray):
            items = [_source_identity(item, None) for item in split_.sources]
        else:
            items = [_source_identity(source, self.root) for source in split_.sources]
        return np.asarray([hashlib.sha256(item).hexdigest()[:32].encode() for item in items], dtype="S32")

    def images_fingerprint(self) -> str:
        """A hash of the set of images over all splits (:func:`image_set_fingerprint` of :meth:`image_ids`): the
        same however the images are divided into splits."""
        return image_set_fingerprint(self.image_ids(name) for name in self.splits)

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


def image_set_fingerprint(ids: Iterable[np.ndarray]) -> str:
    """32 hex digits naming a set of image ids (:meth:`Dataset.image_ids`): order and repeats do not matter."""
    parts = [np.asarray(i, "S32") for i in ids]
    unique = np.unique(np.concatenate(parts)) if parts else np.zeros(0, "S32")
    return hashlib.sha256(unique.tobytes()).hexdigest()[:32]


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
    if isinstance(source, ImageRef):  # named by where it is read from: hashing the content would read every image
        return f"{source.name}\n".encode()
    if isinstance(source, bytes):
        return hashlib.sha256(source).digest()
    arr = np.ascontiguousarray(source)
    return hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).digest()


# --------------------------------------------------------------------------------------------------------------
# Checks shared by the sources


def check_class_count(classes: Sequence[str], where: str) -> None:
    """At least two classes, no name twice; the error names ``where`` (a file, a folder, ``tfds:NAME``)."""
    if len(classes) < 2:
        raise DatasetError(
            f"{where}: a classifier needs at least 2 classes, found {len(classes)} ({', '.join(classes) or 'none'})"
        )
    duplicates = [c for c, n in collections.Counter(classes).items() if n > 1]
    if duplicates:
        raise DatasetError(f"{where}: class names repeat: {', '.join(duplicates)}")


def check_multiclass_labels(labels: np.ndarray, classes: Sequence[str], where: str) -> None:
    """At least two classes must have images; ids must index ``classes``."""
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DatasetError(f"{where}: label ids outside 0..{len(classes) - 1}")
    present = np.unique(labels)
    if present.size < 2:
        only = classes[int(present[0])] if present.size else "none"
        raise DatasetError(f"{where}: every image has the same class ({only}); a classifier needs at least 2")


# --------------------------------------------------------------------------------------------------------------
# Splitting


def split_fractions(fractions: Mapping[str, float] | None) -> dict[str, float]:
    """``fractions`` over the defaults (val 0.2, test 0.2), checked to leave some images for train."""
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


def complete_splits(
    splits: dict[str, ImageSplit],
    fractions: Mapping[str, float] | None,
    seed: int,
    carve: Sequence[str] = ("val", "test"),
) -> dict[str, ImageSplit]:
    """Carve each split in ``carve`` that is missing out of train (stratified, seeded, ``fractions`` of it)."""
    all_fractions = split_fractions(fractions)
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


def _ordered(splits: Mapping[str, ImageSplit]) -> dict[str, ImageSplit]:
    order = [s for s in SPLIT_NAMES if s in splits] + [s for s in splits if s not in SPLIT_NAMES]
    return {name: splits[name] for name in order}
