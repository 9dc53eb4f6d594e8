"""Datasets and the image pipeline on real files the tests write: folders, CSV, TFDS (mocked), elpv, IDX."""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxheads import data


def _image(path: Path, size: tuple[int, int] = (40, 30), mode: str = "RGB", seed: int = 0) -> Path:
    """Write a real image file (format from the suffix) with random pixels."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(path)
    return path


def make_folder(root: Path, per_class: int = 5, classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    """A class-per-folder dataset of JPEG and PNG files, with grayscale, RGBA and tiny images among them."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            suffix = ".jpg" if i % 2 else ".png"
            mode = ("L", "RGB", "RGBA", "RGB")[i % 4] if suffix == ".png" else ("L" if i == 3 else "RGB")
            size = (3, 5) if i == 1 else (40 + i, 30 + c)
            _image(root / name / f"{name}{i}{suffix}", size, mode, seed=10 * c + i)
    return root


def _truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


# ------------------------------------------------------------------------------------------------ image folder


def test_folder_dataset_splits_and_pipeline(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets", per_class=10)
    (root / "cat" / "notes.txt").write_text("not an image, ignored")
    ds = data.load_dataset(root, seed=1)
    assert ds.classes == ("cat", "dog") and ds.task == "multiclass"
    assert list(ds.splits) == ["train", "val", "test"]
    assert {s: len(ds.splits[s]) for s in ds.splits} == {"train": 12, "val": 4, "test": 4}
    for split in ds.splits:  # stratified: each class equally in every split
        assert ds.class_counts(split)[0] == ds.class_counts(split)[1]
    every = np.concatenate([np.asarray(ds.splits[s].sources) for s in ds.splits])
    assert len(set(every)) == 20
    batches = list(data.iter_batches(ds.split("train"), image_size=16, batch_size=5, num_workers=2))
    assert [len(b.images) for b in batches] == [5, 5, 2]
    assert all(b.images.dtype == np.uint8 and b.images.shape[1:] == (16, 16, 3) for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), ds.split("train").labels)
    floats = next(data.iter_batches(ds.split("val"), image_size=16, batch_size=4, dtype=np.float32))
    assert floats.images.dtype == np.float32 and floats.images.max() <= 255


def test_folder_with_split_folders_carves_val_only_when_missing(tmp_path: Path) -> None:
    make_folder(tmp_path / "d" / "train", per_class=6)
    make_folder(tmp_path / "d" / "test", per_class=2)
    ds = data.load_dataset(tmp_path / "d")
    assert {s: len(ds.splits[s]) for s in ds.splits} == {"train": 10, "val": 2, "test": 4}
    make_folder(tmp_path / "d" / "validation", per_class=1)
    ds = data.load_dataset(tmp_path / "d")
    assert {s: len(ds.splits[s]) for s in ds.splits} == {"train": 12, "val": 2, "test": 4}


def test_grayscale_rgba_and_tiny_images_become_rgb_at_input_size(tmp_path: Path) -> None:
    gray = data.load_image(str(_image(tmp_path / "g.png", mode="L")))
    rgba = data.load_image(str(_image(tmp_path / "a.png", mode="RGBA")))
    tiny = data.load_image(str(_image(tmp_path / "t.png", size=(2, 3))))
    for image in (gray, rgba, tiny):
        assert image.mode == "RGB"
        out = data.resize_center_crop(image, 24)
        assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    g = data.resize_center_crop(gray, 24)
    np.testing.assert_array_equal(g[..., 0], g[..., 2])  # grey stays grey
    wide = Image.fromarray(np.concatenate([np.zeros((10, 10, 3)), np.full((10, 20, 3), 255)], 1).astype(np.uint8))
    crop = data.resize_center_crop(wide, 10)  # shorter side 10, centre crop drops 10 px of each side
    assert crop.shape == (10, 10, 3) and crop.min() == 255


def test_unreadable_images_are_skipped_with_a_warning_or_fail_when_strict(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "bad", per_class=4)
    corrupt = root / "cat" / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a jpeg at all")
    truncated = _truncated_jpeg(root / "dog" / "truncated.jpg")
    ds = data.from_folder(root, fractions={"val": 0.0, "test": 0.0})
    split = ds.split("train")
    with pytest.warns(data.BadImageWarning) as record:
        batches = list(data.iter_batches(split, image_size=8, batch_size=4))
    messages = [str(w.message) for w in record]
    assert any(str(corrupt) in m for m in messages) and any(str(truncated) in m for m in messages)
    assert any("skipped 2 of 10" in m for m in messages)
    kept = np.concatenate([b.indices for b in batches])
    skipped = np.concatenate([b.skipped for b in batches])
    assert len(kept) == 8 and len(skipped) == 2  # no good image lost
    assert {split.name(int(i)) for i in skipped} == {str(corrupt), str(truncated)}
    with pytest.raises(data.BadImageError, match="corrupt.jpg"):
        list(data.iter_batches(split, image_size=8, batch_size=4, strict=True))


def test_folder_errors_name_the_problem(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "e", per_class=2)
    (root / "empty_class").mkdir()
    with pytest.raises(data.DatasetError, match=r"empty_class: class folder is empty"):
        data.load_dataset(root)
    single = make_folder(tmp_path / "one", per_class=3, classes=("only",))
    with pytest.raises(data.DatasetError, match="at least 2 classes"):
        data.load_dataset(single)
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        data.load_dataset(tmp_path / "does-not-exist")


# ------------------------------------------------------------------------------------------------ CSV


def _csv_dataset(tmp_path: Path) -> Path:
    images = [_image(tmp_path / "imgs" / f"{i}.png", seed=i) for i in range(12)]
    tags = [["sky"], ["sea", "sky"], ["sand"], [], ["sea"], ["sand", "sky"]] * 2
    rows = ["path,labels"] + [",".join([f"imgs/{p.name}", *t]) for p, t in zip(images, tags, strict=True)]
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_multilabel(tmp_path: Path) -> None:
    ds = data.load_dataset(_csv_dataset(tmp_path), test_fraction=0.0)
    assert ds.task == "multilabel" and ds.classes == ("sand", "sea", "sky")
    assert list(ds.splits) == ["train", "val"] and len(ds.split("train")) + len(ds.split("val")) == 12
    every = {Path(s).name: tuple(y) for sp in ds.splits.values() for s, y in zip(sp.sources, sp.labels, strict=True)}
    assert every["1.png"] == (0, 1, 1) and every["3.png"] == (0, 0, 0) and every["5.png"] == (1, 0, 1)
    batch = next(data.iter_batches(ds.split("train"), image_size=8, batch_size=3))
    assert batch.labels.shape == (3, 3)


def test_csv_errors_name_the_line(tmp_path: Path) -> None:
    path = _csv_dataset(tmp_path)
    with pytest.raises(data.DatasetError, match=r"labels.csv:3: label 'sea' is not in the class list"):
        data.from_csv(path, classes=["sky", "sand"])
    with pytest.raises(data.DatasetError, match=r"multiclass rows need exactly one label"):
        data.from_csv(path, task="multiclass")
    path.write_text(path.read_text() + "imgs/missing.png,sky\n")
    with pytest.raises(data.DatasetError, match=r"labels.csv:14: image file 'imgs/missing.png' does not exist"):
        data.from_csv(path)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        data.load_dataset(tmp_path / "nope.csv")


def test_image_ids_name_the_images_not_how_they_are_split(tmp_path: Path) -> None:
    """What the feature cache keys on: the same image has the same id in every split drawing, and the set of ids
    (``images_fingerprint``) changes when an image does, not when the splits or the labels do."""
    import os
    import shutil

    root = make_folder(tmp_path / "pets", per_class=5)
    one, two = data.load_dataset(root, seed=0), data.load_dataset(root, seed=3)
    assert list(one.split("train").sources) != list(two.split("train").sources)
    ids = {p: i for s in one.splits for p, i in zip(one.split(s).sources, one.image_ids(s), strict=True)}
    assert len(set(ids.values())) == 10 and all(len(i) == 32 for i in ids.values())
    for s in two.splits:
        assert [ids[p] for p in two.split(s).sources] == two.image_ids(s).tolist()
    assert one.images_fingerprint() == two.images_fingerprint() != one.fingerprint("train")
    moved = Path(shutil.copytree(root, tmp_path / "moved", copy_function=shutil.copy2))
    assert data.load_dataset(moved).images_fingerprint() == one.images_fingerprint()  # relative paths
    before = one.images_fingerprint()
    os.utime(root / "cat" / "cat0.png", ns=(1, 1))
    assert data.load_dataset(root).images_fingerprint() != before
    arrays = data.Dataset("a", ("x", "y"), "multiclass", {
        "train": data.ImageSplit(np.zeros((3, 4, 4), np.uint8) + np.arange(3)[:, None, None].astype(np.uint8),
                                 np.asarray([0, 1, 0], np.int32))})
    assert len(set(arrays.image_ids("train").tolist())) == 3


# ------------------------------------------------------------------------------------------------ built-ins


def test_elpv_split_is_stratified_seeded_and_shared_by_both_variants() -> None:
    ds = data.load_dataset("elpv")
    assert ds.classes == data.ELPV_CLASSES and ds.task == "multiclass"
    sizes = {s: len(ds.splits[s]) for s in ds.splits}
    assert sizes == {"train": 1574, "val": 525, "test": 525}
    assert ds.class_counts("val").tolist() == [302, 59, 21, 143]
    total = sum(ds.class_counts(s) for s in ds.splits)
    assert total.tolist() == [1508, 295, 106, 715]
    for split in ("val", "test"):  # each class's share within a point of its overall share
        np.testing.assert_allclose(ds.class_counts(split) / sizes[split], total / total.sum(), atol=0.01)
    sources = [set(ds.splits[s].sources) for s in ds.splits]
    assert not (sources[0] & sources[1]) and not (sources[0] & sources[2]) and not (sources[1] & sources[2])
    again = data.load_dataset("elpv")
    assert again.fingerprint("train") == ds.fingerprint("train")
    assert list(again.split("val").sources) == list(ds.split("val").sources)
    other = data.load_dataset("elpv", seed=1)
    assert list(other.split("val").sources) != list(ds.split("val").sources)
    multi = data.load_dataset("elpv-multilabel")
    assert multi.classes == ("defective", "mono", "poly") and multi.task == "multilabel"
    assert list(multi.split("val").sources) == list(ds.split("val").sources)
    val = multi.split("val").labels
    np.testing.assert_array_equal(val[:, 0], ds.split("val").labels >= 2)
    np.testing.assert_array_equal(val[:, 1] + val[:, 2], 1)
    batch = next(data.iter_batches(ds.split("test"), image_size=32, batch_size=4))
    assert batch.images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(batch.images[..., 0], batch.images[..., 1])  # grayscale photographs


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files_and_says_how_to_install(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    ds = data.fashion_mnist(root=tmp_path, val_fraction=0.2)
    assert {s: len(ds.splits[s]) for s in ds.splits} == {"train": 40, "val": 10, "test": 20}
    assert ds.classes[0] == "T-shirt/top" and ds.class_counts("val").tolist() == [1] * 10
    batch = next(data.iter_batches(ds.split("test"), image_size=32, batch_size=8))
    assert batch.images.shape == (8, 32, 32, 3)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist(root=tmp_path / "absent")


def test_stratified_split_properties() -> None:
    labels = np.repeat(np.arange(3), [10, 20, 1])
    parts = data.stratified_split(labels, {"val": 0.2, "test": 0.1}, seed=3)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(31))
    assert np.bincount(labels[parts["val"]], minlength=3).tolist() == [2, 4, 0]
    assert np.bincount(labels[parts["test"]], minlength=3).tolist() == [1, 2, 0]
    again = data.stratified_split(labels, {"val": 0.2, "test": 0.1}, seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)


# ------------------------------------------------------------------------------------------------ TFDS


@pytest.mark.slow
def test_tfds_dataset_through_mock_data() -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with tfds.testing.mock_data(num_examples=30):
            ds = data.load_dataset("tfds:mnist")
            single = data.load_dataset("mnist", split="train", test_fraction=0.0)
    assert ds.classes == tuple(str(i) for i in range(10)) and ds.source == "tfds:mnist"
    assert set(ds.splits) == {"train", "val", "test"} and len(ds.split("train")) == 30
    assert set(single.splits) == {"train", "val"} and len(single.split("train")) + len(single.split("val")) == 30
    batch = next(data.iter_batches(ds.split("test"), image_size=16, batch_size=8))
    assert batch.images.shape == (8, 16, 16, 3) and batch.labels.shape == (8,)
    assert len(ds.fingerprint("test")) == 32  # mock splits hold the same examples, so no inequality here
    with pytest.raises(data.DatasetError, match="unknown dataset 'no_such_dataset_xyz'"):
        data.load_dataset("no_such_dataset_xyz")


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DatasetError, match=r"tfds:mnist: not prepared in .*tfds build mnist"):
        data.load_dataset("mnist", data_dir=tmp_path)


def test_data_re_exports_its_modules_and_split_is_image_split():
    from jaxheads.data import dataset
    from jaxheads.data import images
    from jaxheads.data import sources as loaders

    assert data.Split is data.ImageSplit is dataset.ImageSplit
    for name in data.__all__:
        if name != "load_dataset":  # the one function data.py defines itself
            assert any(getattr(m, name, None) is getattr(data, name) for m in (dataset, images, loaders)), name
    split = data.Split(["a.png", "b.png", "c.png"], np.asarray([0, 1, 0], np.int32))
    assert isinstance(split.subset(np.asarray([2, 0])), data.ImageSplit) and split.subset([2, 0]).name(0) == "c.png"
