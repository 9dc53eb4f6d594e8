"""Streamed TFDS input (issue 18, item 1): a builder prepared as ArrayRecord is read lazily, an image only when its
batch is built, and yields the same images and labels as the in-memory (TFRecord, tf.data) path; its fingerprint and
image ids need no image read. A tiny local builder, prepared offline in a temporary data_dir."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from jaxheads import data
from jaxheads.data import sources as loaders
from jaxheads.data.dataset import LazyImages

tfds = pytest.importorskip("tensorflow_datasets")

CLASSES = ("red", "green", "blue")


class JaxheadsTinyColours(tfds.core.GeneratorBasedBuilder):
    """15 train and 6 test PNGs of varying height, each tinted by its class."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> Any:
        features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3)),
                                               "label": tfds.features.ClassLabel(names=list(CLASSES))})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
        return {"train": self._generate_examples(15, 0), "test": self._generate_examples(6, 1)}

    def _generate_examples(self, count: int, seed: int) -> Iterator[tuple[str, dict[str, Any]]]:
        rng = np.random.default_rng(seed)
        for i in range(count):
            image = rng.integers(0, 60, (10 + i, 12, 3), dtype=np.uint8)
            image[..., i % 3] += 150
            yield f"{seed}-{i}", {"image": image, "label": i % 3}


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The builder prepared twice: as ArrayRecord (random access) and as TFRecord (tf.data only)."""
    dirs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for file_format in ("array_record", "tfrecord"):
            dirs[file_format] = tmp_path_factory.mktemp(file_format)
            JaxheadsTinyColours(data_dir=str(dirs[file_format]), file_format=file_format).download_and_prepare()
    return dirs


def _load(data_dir: Path, **kwargs: Any) -> data.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return data.load_dataset("tfds:jaxheads_tiny_colours", data_dir=data_dir, **kwargs)


def _pixels(split: data.ImageSplit) -> np.ndarray:
    return np.concatenate([b.images for b in data.iter_batches(split, image_size=8, batch_size=4)])


def test_lazy_split_equals_in_memory_split(data_dirs: dict[str, Path]) -> None:
    lazy, eager = _load(data_dirs["array_record"]), _load(data_dirs["tfrecord"])
    assert isinstance(lazy.split("train").sources, LazyImages)
    assert not isinstance(eager.split("train").sources, LazyImages)
    assert set(lazy.splits) == set(eager.splits) == {"train", "val", "test"}
    for name in lazy.splits:
        np.testing.assert_array_equal(lazy.split(name).labels, eager.split(name).labels)
        np.testing.assert_array_equal(_pixels(lazy.split(name)), _pixels(eager.split(name)))
    assert lazy.split("val").name(0).startswith("tfds:jaxheads_tiny_colours/1.0.0/train/15[")


def test_fingerprint_and_ids_read_no_image(data_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    original = loaders.TfdsRecords.read
    monkeypatch.setattr(loaders.TfdsRecords, "read", lambda self, i: reads.append(i) or original(self, i))
    one, again, reseeded = _load(data_dirs["array_record"]), _load(data_dirs["array_record"]), None
    reseeded = _load(data_dirs["array_record"], seed=5)
    assert one.fingerprint("train") == again.fingerprint("train") != one.fingerprint("val")
    assert one.images_fingerprint() == reseeded.images_fingerprint()  # carving val again keeps every image's id
    every = np.concatenate([one.image_ids(s) for s in one.splits])
    assert len(set(every.tolist())) == 21 and reads == []
    first = next(data.iter_batches(one.split("train"), image_size=8, batch_size=2, prefetch=1))
    assert first.images.shape == (2, 8, 8, 3)
    assert len(reads) <= 2 * 2  # this batch and the one prefetched: the rest of the split is still on disk


def test_unreadable_record_is_named(data_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loaders.TfdsRecords, "read", lambda self, i: b"not an image")
    split = _load(data_dirs["array_record"]).split("test")
    with pytest.raises(data.BadImageError, match=r"tfds:jaxheads_tiny_colours/1\.0\.0/test/6\[0\]: cannot decode"):
        next(data.iter_batches(split, image_size=8, batch_size=2, strict=True))
