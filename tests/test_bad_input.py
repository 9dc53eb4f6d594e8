"""Bad input through the public API and the `jaxheads` command: a folder built here with every case the issue
lists. Each run finishes (unreadable images skipped with a warning naming them, and counted) or fails as designed
with a one-line message naming the file or field; no readable image is lost."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxheads import backbones, cli, data, features

SWEEP = ["--pooling", "none", "--conv", "none", "--norm", "none", "--folds", "none", "--design", "grid",
         "--depths", "0", "--dropouts", "0", "--epochs", "2", "--seeds", "1",
         "--batch-size", "8", "--feature-batch-size", "8", "--lr", "0.01"]


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def build_bad_folder(root: Path) -> tuple[set[str], set[str]]:
    """Two classes, each with 6 plain RGB images and one of every convertible oddity, plus unreadable files.
    Returns (readable files, unreadable files) as absolute paths; also writes a ``notes.txt`` that is no sample."""
    rng = np.random.default_rng(0)
    good, bad = set(), set()
    for c, (name, colour) in enumerate((("cat", (210, 60, 40)), ("dog", (40, 70, 210)))):
        folder = root / name
        folder.mkdir(parents=True)

        def rgb(h: int = 40, w: int = 48) -> Image.Image:
            return Image.fromarray(np.clip(np.asarray(colour) + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8))

        files = {f"{i}.png": _encode(rgb(), "PNG") for i in range(6)}
        files |= {
            "gray.jpg": _encode(rgb().convert("L"), "JPEG"),
            "rgba.png": _encode(rgb().convert("RGBA"), "PNG"),
            "palette.png": _encode(rgb().convert("P"), "PNG"),
            "cmyk.jpg": _encode(rgb().convert("CMYK"), "JPEG"),
            "sixteen_bit.tif": _encode(Image.fromarray((rng.integers(0, 65535, (30, 30))).astype(np.uint16)), "TIFF"),
            "tiny_3x2.png": _encode(rgb(2, 3), "PNG"),  # far smaller than the 32 px input: scaled up
            "UPPER.JPG": _encode(rgb(), "JPEG"),
        }
        broken = {
            "truncated.jpg": _encode(rgb(), "JPEG")[:300],
            "truncated.png": _encode(rgb(), "PNG")[:200],
        }
        if c == 0:
            broken |= {"empty.png": b"", "not_an_image.jpg": b"this is text, not a JPEG"}
        for filename, blob in {**files, **broken}.items():
            (folder / filename).write_bytes(blob)
            (good if filename in files else bad).add(str((folder / filename).absolute()))
        (folder / "notes.txt").write_text("not an image extension: never listed as a sample")
    return good, bad


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str], set[str]]:
    root = tmp_path_factory.mktemp("bad") / "images"
    good, bad = build_bad_folder(root)
    return root, good, bad


def _sweep(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = cli.main(["sweep", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _never() -> backbones.Backbone:
    raise AssertionError("the backbone was built although every image was cached")


def _cache_metas(cache: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(cache.glob("*/meta.json"))]


@pytest.mark.slow
def test_unreadable_images_are_skipped_named_and_counted_and_no_good_one_is_lost(
        bad_folder: tuple[Path, set[str], set[str]], tmp_path: Path, capsys: pytest.CaptureFixture,
        tiny_backbone) -> None:
    root, good, bad = bad_folder
    with pytest.warns(data.BadImageWarning) as record:
        code, out, err = _sweep(capsys, "--dataset", root, "--backbone", tiny_backbone, "--out", tmp_path / "run",
                                "--cache-dir", tmp_path / "cache", *SWEEP)
    assert code == 0, err
    messages = [str(w.message) for w in record]
    for path in bad:  # each unreadable file is named, with what went wrong
        assert any(path in m and "cannot decode image" in m for m in messages), path
    assert any("skipped" in m and "could not be decoded" in m for m in messages)  # the per-split count
    (meta,) = _cache_metas(tmp_path / "cache")  # one cache entry for the images of every split
    assert meta["count"] == len(good) + len(bad) and meta["skipped"] == len(bad)
    assert set(meta["skipped_names"]) == bad
    # Every readable image is in the cache under its own label (RGBA, CMYK, 16-bit, 3x2 px ... all converted).
    ds = data.load_dataset(root)
    cached = dataclasses.replace(features.backbone_source(tiny_backbone), load=_never)
    with pytest.warns(data.BadImageWarning, match="left out"):
        splits = features.extract_all(cached, ds, features.ExtractOptions(cache_dir=tmp_path / "cache"))
    assert sorted(splits) == ["test", "train", "val"]
    kept: set[str] = set()
    for name, split in splits.items():
        sources = [s for s in ds.split(name).sources if s not in bad]
        labels = ds.split(name).labels[[s not in bad for s in ds.split(name).sources]]
        np.testing.assert_array_equal(split.labels, labels)
        assert split.pooled.shape == (len(sources), 16)
        kept |= set(sources)
    assert kept == good
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["members"] and (tmp_path / "run" / "head").is_dir()

    # --strict fails instead, naming the first unreadable file (a fresh cache, and also on the cache above:
    # a cache that left images out must not let a strict run pass).
    code, _, err = _sweep(capsys, "--dataset", root, "--backbone", tiny_backbone, "--out", tmp_path / "strict",
                          "--cache-dir", tmp_path / "strict_cache", "--strict", *SWEEP)
    assert code == 2 and "cannot decode image" in err and any(Path(p).name in err for p in bad)
    code, _, err = _sweep(capsys, "--dataset", root, "--backbone", tiny_backbone, "--out", tmp_path / "strict2",
                          "--cache-dir", tmp_path / "cache", "--strict", *SWEEP)
    assert code == 2 and "left out" in err and any(Path(p).name in err for p in bad)


@pytest.mark.slow
def test_finetune_skips_unreadable_images_too(bad_folder: tuple[Path, set[str], set[str]], tmp_path: Path,
                                              capsys: pytest.CaptureFixture, tiny_backbone) -> None:
    root, _, bad = bad_folder
    with pytest.warns(data.BadImageWarning):
        code, _, err = _sweep(capsys, "--dataset", root, "--backbone", tiny_backbone, "--out", tmp_path / "run",
                              "--cache-dir", tmp_path / "cache", *SWEEP)
    assert code == 0, err
    with pytest.warns(data.BadImageWarning) as record:
        code = cli.main(["finetune", str(tmp_path / "run" / "head"), "--dataset", str(root), "--out",
                         str(tmp_path / "ft"), "--epochs", "1", "--batch-size", "8", "--unfreeze", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "unfrozen: head" in out
    named = {p for p in bad if any(p in str(w.message) for w in record)}
    assert named  # the train/val split's unreadable files are named (test-split ones are never read)
    code = cli.main(["finetune", str(tmp_path / "run" / "head"), "--dataset", str(root), "--out",
                     str(tmp_path / "ft_strict"), "--epochs", "1", "--batch-size", "8", "--strict"])
    assert code == 2 and "cannot decode image" in capsys.readouterr().err


def test_dataset_shapes_that_cannot_train_fail_naming_the_folder(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture, tiny_backbone) -> None:
    rng = np.random.default_rng(1)
    pixels = lambda: Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))  # noqa: E731
    one_class = tmp_path / "one_class"
    (one_class / "cat").mkdir(parents=True)
    for i in range(4):
        pixels().save(one_class / "cat" / f"{i}.png")
    code, _, err = _sweep(capsys, "--dataset", one_class, "--backbone", tiny_backbone, "--out", tmp_path / "o", *SWEEP)
    assert code == 2 and "needs at least 2 classes, found 1 (cat)" in err and str(one_class) in err

    empty_class = tmp_path / "empty_class"
    for name, n in (("cat", 4), ("dog", 4), ("bird", 0)):
        (empty_class / name).mkdir(parents=True)
        for i in range(n):
            pixels().save(empty_class / name / f"{i}.png")
    (empty_class / "bird" / "readme.txt").write_text("no images here")
    code, _, err = _sweep(capsys, "--dataset", empty_class, "--backbone", tiny_backbone, "--out", tmp_path / "e",
                          *SWEEP)
    assert code == 2 and f"{empty_class / 'bird'}: class folder is empty" in err


def test_csv_labels_outside_the_class_list_missing_files_and_one_class(
        tmp_path: Path, capsys: pytest.CaptureFixture, tiny_backbone) -> None:
    rng = np.random.default_rng(2)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    outside = tmp_path / "outside.csv"
    outside.write_text("path,label\n0.png,cat\n1.png,dog\n2.png,bird\n3.png,cat\n")
    with pytest.raises(data.DatasetError, match=r"outside.csv:4: label 'bird' is not in the class list \(cat, dog\)"):
        data.load_dataset(outside, classes=("cat", "dog"), task="multiclass")
    missing = tmp_path / "missing.csv"
    missing.write_text("0.png,cat\n1.png,dog\ngone.png,cat\n3.png,dog\nalso_gone.png,dog\n")
    code, _, err = _sweep(capsys, "--dataset", missing, "--task", "multiclass", "--backbone", tiny_backbone,
                          "--out", tmp_path / "m", *SWEEP)
    assert code == 2 and "missing.csv:3: image file 'gone.png' does not exist" in err
    assert "1 more rows name missing files" in err
    single = tmp_path / "single.csv"
    single.write_text("".join(f"{i}.png,cat\n" for i in range(6)))
    with pytest.raises(data.DatasetError, match="single.csv: a classifier needs at least 2 classes, found 1"):
        data.load_dataset(single, task="multiclass")
    two_listed_one_used = tmp_path / "one_used.csv"
    two_listed_one_used.write_text("".join(f"{i}.png,cat\n" for i in range(6)))
    with pytest.raises(data.DatasetError, match="every image has the same class"):
        data.load_dataset(two_listed_one_used, classes=("cat", "dog"), task="multiclass")


def test_a_cache_of_another_backbone_or_preprocessing_is_rebuilt_never_mixed(
        bad_folder: tuple[Path, set[str], set[str]], tmp_path: Path, tiny_backbone, tiny_relatives) -> None:
    root, good, _ = bad_folder
    tiny_b, tiny_c = tiny_relatives  # B: other weights; C: A's weights with other preprocessing
    ds = data.load_dataset(root)
    cache = tmp_path / "cache"
    options, kwargs = features.ExtractOptions(cache_dir=cache, batch_size=8), {"splits": ["train"]}
    with pytest.warns(data.BadImageWarning):
        a = features.extract_all(features.backbone_source(tiny_backbone), ds, options, **kwargs)["train"]
    snapshot = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    with pytest.warns(data.BadImageWarning):
        b = features.extract_all(features.backbone_source(tiny_b), ds, options, **kwargs)["train"]
        c = features.extract_all(features.backbone_source(tiny_c), ds, options, **kwargs)["train"]
    assert len(list(cache.glob("*/meta.json"))) == 3  # three keys side by side
    assert {p: p.read_bytes() for p in snapshot} == snapshot  # A's cache untouched
    assert not np.array_equal(a.pooled, b.pooled) and not np.array_equal(a.pooled, c.pooled)
    with pytest.warns(data.BadImageWarning):
        fresh_c = features.extract_all(features.backbone_source(tiny_c), ds,
                                       options.replace(cache_dir=tmp_path / "fresh"),
                                       **kwargs)["train"]
    np.testing.assert_array_equal(c.pooled, fresh_c.pooled)  # nothing of A leaked into C's features
    # A cache whose meta names other preprocessing under A's key (e.g. copied in by hand) is rebuilt.
    (meta_path,) = [p for p in cache.glob("*/meta.json") if json.loads(p.read_text())["backbone"] == tiny_backbone]
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "preprocessing": features.backbone_source(tiny_c).preprocessing.key()}))
    np.save(meta_path.parent / "pooled.npy", np.zeros_like(a.pooled))
    with pytest.warns(data.BadImageWarning):
        again = features.extract_all(features.backbone_source(tiny_backbone), ds, options, **kwargs)["train"]
    np.testing.assert_array_equal(again.pooled, a.pooled)
    assert len(again) == len(a)
