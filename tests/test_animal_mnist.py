"""animal-mnist as a built-in dataset: its gzip'd pickles read with the restricted unpickler (fake files in the shipped
format, written here), its seeded stratified split, and the refusal of a pickle that names anything but an array."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxheads import data
from jaxheads.data.animal_mnist import ANIMAL_MNIST_FILES


def _write_pickle(path: Path, value: object) -> Path:
    """``value`` pickled with protocol 4 (as the shipped files are) into a gzip file at ``path``."""
    with gzip.open(path, "wb") as f:
        pickle.dump(value, f, protocol=4)
    return path


def _fake_animal_mnist(folder: Path, per_class: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The two files of the package, in its format, with ``per_class`` random 28x28 images of each class."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10, dtype=np.int64), per_class)  # sorted by class, as shipped
    images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    _write_pickle(folder / ANIMAL_MNIST_FILES[0], images)
    _write_pickle(folder / ANIMAL_MNIST_FILES[1], labels)
    return images, labels


def test_animal_mnist_reads_its_pickles_into_a_stratified_seeded_split(tmp_path: Path) -> None:
    images, labels = _fake_animal_mnist(tmp_path)
    ds = data.animal_mnist(root=tmp_path)
    assert ds.name == "animal_mnist" and ds.task == "multiclass" and ds.classes == data.ANIMAL_MNIST_CLASSES
    assert list(ds.splits) == ["train", "val", "test"]
    assert {name: list(ds.class_counts(name)) for name in ds.splits} == {
        "train": [6] * 10, "val": [2] * 10, "test": [2] * 10}
    # Every image lands in exactly one split with its own label; the pixels are the file's.
    seen = np.concatenate([ds.split(n).sources.reshape(len(ds.split(n)), -1) for n in ds.splits])
    assert sorted(map(bytes, seen)) == sorted(map(bytes, images.reshape(len(images), -1)))
    for name in ds.splits:
        split = ds.split(name)
        for image, label in zip(split.sources, split.labels, strict=True):
            assert labels[np.flatnonzero((images == image).all(axis=(1, 2)))[0]] == label
    again, other = data.animal_mnist(root=tmp_path), data.animal_mnist(root=tmp_path, seed=1)
    assert np.array_equal(again.split("test").sources, ds.split("test").sources)
    assert not np.array_equal(other.split("test").sources, ds.split("test").sources)
    batch = next(data.iter_batches(ds.split("val"), image_size=32, batch_size=4))
    assert batch.images.shape == (4, 32, 32, 3) and batch.images.dtype == np.uint8


def test_load_dataset_resolves_the_built_in_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_animal_mnist(tmp_path / "animal_mnist" / "data" / "Animal_MNIST", per_class=5)
    (tmp_path / "animal_mnist" / "__init__.py").write_text("raise ImportError('the package must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("animal_mnist", "animal-mnist"):
        ds = data.load_dataset(name, val_fraction=0.2, test_fraction=0.2)
        assert ds.split_sizes() == {"train": 30, "val": 10, "test": 10}
    assert "animal_mnist" not in sys.modules


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)
    with pytest.raises(data.DatasetError, match="pip install --no-deps animal-mnist"):
        data.load_dataset("animal_mnist")


class _Payload:
    """A pickle that would run ``os.mkdir(path)`` when loaded by a plain unpickler."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.path),)


def test_a_pickle_naming_any_other_global_is_refused_before_it_runs(tmp_path: Path) -> None:
    target = tmp_path / "ran"
    _fake_animal_mnist(tmp_path)
    bad = _write_pickle(tmp_path / ANIMAL_MNIST_FILES[1], [np.zeros(3, np.int64), _Payload(target)])
    with pytest.raises(data.DatasetError) as err:
        data.animal_mnist(root=tmp_path)
    message = str(err.value)
    assert message.startswith(f"{bad}: refused global ") and "mkdir" in message and "\n" not in message
    assert not target.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"not gzip", "expected a gzip'd pickle of a NumPy array"),
     (gzip.compress(pickle.dumps({"a": 1}, protocol=4)), "expected a pickled numeric NumPy array, got dict"),
     (gzip.compress(pickle.dumps(np.array(["x"], object), protocol=4)), "expected a pickled numeric NumPy array")],
)
def test_files_that_are_not_array_pickles_get_one_line_naming_them(tmp_path: Path, content: bytes,
                                                                    expected: str) -> None:
    _fake_animal_mnist(tmp_path)
    path = tmp_path / ANIMAL_MNIST_FILES[0]
    path.write_bytes(content)
    with pytest.raises(data.DatasetError, match=f"^{re.escape(f'{path}: {expected}')}"):
        data.animal_mnist(root=tmp_path)


def test_labels_that_do_not_fit_the_images_are_refused_by_file(tmp_path: Path) -> None:
    _fake_animal_mnist(tmp_path)
    path = _write_pickle(tmp_path / ANIMAL_MNIST_FILES[1], np.arange(7, dtype=np.int64))
    with pytest.raises(data.DatasetError, match=f"^{re.escape(f'{path}: expected (100,) integer labels')}"):
        data.animal_mnist(root=tmp_path)
