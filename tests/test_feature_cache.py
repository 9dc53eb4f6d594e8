"""The per-image, sharded feature cache (issues 16 and 18): another split seed or fold count never runs the
backbone; shards are fixed-size float16 .npy files read memory-mapped; a deleted shard is computed again; a cache
that cannot be written stops with one line naming the path and leaves no torn shard."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
from pathlib import Path

import numpy as np
import pytest

from jaxheads import backbones, data, features
from jaxheads.data.dataset import image_set_fingerprint
from jaxheads.features.store import FeatureCacheError


def _never() -> object:
    raise AssertionError("the backbone was built although every image was cached")


def _by_image(ds: data.Dataset, splits: dict[str, features.FeatureSplit]) -> dict[str, tuple[np.ndarray, ...]]:
    """Each image's (label, pooled, maps), by its path."""
    out = {}
    for name, split in splits.items():
        for i, path in enumerate(ds.split(name).sources):
            out[path] = (split.labels[i], split.pooled[i], split.maps[i])
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, make_folder) -> Path:
    root = make_folder(tmp_path_factory.mktemp("cache") / "imgs", per_class=6)
    rows = [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.*"))]
    (root.parent / "labels.csv").write_text("path,label\n" + "\n".join(f"imgs/{r}" for r in rows) + "\n")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "csv"])
def test_another_split_seed_reads_every_image_from_the_cache(
        images: Path, tmp_path: Path, kind: str, tiny_source, extract_options, tiny_source_cached,
        tiny_source_counted) -> None:
    where = images if kind == "folder" else images.parent / "labels.csv"
    first_ds = data.load_dataset(where, seed=0)
    again_ds = data.load_dataset(where, seed=1)
    assert list(first_ds.split("train").sources) != list(again_ds.split("train").sources)
    calls: list[int] = []
    first = features.extract_all(tiny_source_counted(calls), first_ds,
                                 features.ExtractOptions(cache_dir=tmp_path, **extract_options))
    assert calls == [1]
    events: list[features.PassProgress] = []
    again = features.extract_all(tiny_source_cached, again_ds,
                                 features.ExtractOptions(cache_dir=tmp_path, **extract_options),
                                 progress=events.append)
    assert {e.split for e in events} == set(again_ds.splits) and all(e.cached for e in events)
    want, got = _by_image(first_ds, first), _by_image(again_ds, again)
    assert sorted(got) == sorted(want) and len(got) == 12
    for path, arrays in want.items():
        for a, b in zip(arrays, got[path], strict=True):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=path)
    for name, split in again.items():  # labels follow the new split
        np.testing.assert_array_equal(split.labels, again_ds.split(name).labels)
    assert features.images_key(tiny_source, first_ds) == features.images_key(tiny_source, again_ds)
    assert [p.name for p in tmp_path.iterdir()] == [features.images_key(tiny_source, first_ds)]


@pytest.mark.slow
def test_another_seed_or_fold_count_in_the_main_job_never_runs_the_backbone(
        images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_backbone) -> None:
    """What `jaxheads sweep --seed S --folds K` does before the sweep (job.sweep_job -> job.features_for_sweep),
    for a backbone whose weights do not depend on the seed."""
    from jaxheads import job
    from jaxheads.sweep import SweepSpec

    spec = SweepSpec(pooling=("avg",), widths=(8,), depth=(0,), epochs=1, folds=2)
    first = job.features_for_sweep(features.backbone_source(tiny_backbone, "default", seed=0),
                                   data.load_dataset(images, seed=0), spec,
                                   features.ExtractOptions(cache_dir=tmp_path, batch_size=4))
    monkeypatch.setattr(backbones, "load", lambda *a, **k: _never())
    for seed, folds in ((1, 2), (0, 3), (2, 4)):
        events: list[features.PassProgress] = []
        ds = data.load_dataset(images, seed=seed)
        out = job.features_for_sweep(features.backbone_source(tiny_backbone, "default", seed=seed), ds,
                                     dataclasses.replace(spec, folds=folds),
                                     features.ExtractOptions(cache_dir=tmp_path, batch_size=4), progress=events.append)
        assert events and all(e.cached for e in events)
        assert sum(len(s) for s in out.values()) == sum(len(s) for s in first.values()) == 12


def test_shards_are_fixed_size_float16_npy_files_read_memory_mapped(
        images: Path, tmp_path: Path, tiny_source, extract_options) -> None:
    ds = data.load_dataset(images)
    features.extract_all(tiny_source, ds, features.ExtractOptions(cache_dir=tmp_path, **extract_options))
    (entry,) = tmp_path.iterdir()
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["shard_size"] == 4 and meta["shards"] == [[0, 4], [4, 8], [8, 12]] and meta["has_maps"]
    for start, stop in meta["shards"]:
        stem = entry / "shards" / f"{start:010d}-{stop:010d}"
        pooled = np.load(f"{stem}.pooled.npy", mmap_mode="r")
        maps = np.load(f"{stem}.maps.npy", mmap_mode="r")
        assert isinstance(maps, np.memmap) and maps.dtype == pooled.dtype == np.float16
        assert pooled.shape == (4, 16) and maps.shape == (4, 8, 8, 16)
        assert np.load(f"{stem}.kept.npy").tolist() == [True] * 4


@pytest.mark.parametrize("deleted", ["pooled", "maps", "kept"])
def test_a_shard_deleted_between_runs_is_computed_again(
        images: Path, tmp_path: Path, deleted: str, tiny_source, extract_options, tiny_source_counted) -> None:
    ds = data.load_dataset(images)
    want = features.extract_all(tiny_source, ds, features.ExtractOptions(cache_dir=tmp_path, **extract_options))
    (entry,) = tmp_path.iterdir()
    (entry / "shards" / f"{4:010d}-{8:010d}.{deleted}.npy").unlink()
    calls: list[int] = []
    events: list[features.PassProgress] = []
    got = features.extract_all(tiny_source_counted(calls), ds,
                               features.ExtractOptions(cache_dir=tmp_path, **extract_options), progress=events.append)
    assert calls == [1]
    assert not all(e.cached for e in events)
    for name in want:
        for a, b in zip(want[name], got[name], strict=True):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    assert len(list((entry / "shards").glob("*.npy"))) == 9


def test_the_first_plan_wins_over_a_run_with_other_splits_started_at_once(tmp_path: Path) -> None:
    """Two runs (seeds 0 and 1) find no plan and each lays out its own row order: the second must read the
    first's plan, not replace it under shards already written in the first's order."""
    from jaxheads.features import store as feature_store

    rows = np.asarray([b"%032d" % i for i in range(6)], "S32")
    identity = {"format": features.CACHE_FORMAT, "images": image_set_fingerprint([rows])}
    feature_store.create_plan(tmp_path, identity, feature_store.Plan(rows, 4))
    feature_store.create_plan(tmp_path, identity, feature_store.Plan(rows[::-1].copy(), 2))
    plan = feature_store.read_plan(tmp_path, identity)
    assert plan.rows.tolist() == rows.tolist() and plan.shard_size == 4 and plan.shards == [(0, 4), (4, 6)]
    assert [p.name for p in tmp_path.iterdir()] == ["plan.npz"]  # no temporary file left
    assert feature_store.read_plan(tmp_path, {**identity, "format": -1}) is None
    assert plan.rows_of(rows[[5, 0, 5]]).tolist() == [5, 0, 5] and plan.rows_of(np.asarray([b"x" * 32])) is None


def _assert_one_line_naming(err: pytest.ExceptionInfo, path: Path) -> None:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message


def test_a_full_disk_stops_with_one_line_and_leaves_no_torn_shard(
        images: Path, tmp_path: Path, tiny_source, extract_options, tiny_source_counted) -> None:
    """A file-size limit makes writes fail mid-file (EFBIG) the way a full disk does (ENOSPC)."""
    ds = data.load_dataset(images)
    features.extract_all(tiny_source, ds,
                         features.ExtractOptions(cache_dir=tmp_path, **{**extract_options, "need_maps": False}))
    (entry,) = tmp_path.iterdir()
    before = sorted(p.name for p in (entry / "shards").iterdir())
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # a pooled shard fits, a maps shard (8 KiB) does not
    try:
        with pytest.raises(FeatureCacheError) as err:
            features.extract_all(tiny_source, ds, features.ExtractOptions(cache_dir=tmp_path, **extract_options))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    _assert_one_line_naming(err, entry / "shards")
    assert sorted(p.name for p in (entry / "shards").iterdir()) == before  # no maps, no temporary file
    calls: list[int] = []
    got = features.extract_all(tiny_source_counted(calls), ds,
                               features.ExtractOptions(cache_dir=tmp_path, **extract_options))
    want = features.extract_all(tiny_source, ds,
                                features.ExtractOptions(cache_dir=tmp_path / "fresh", **extract_options))
    assert calls == [1]
    for name in want:
        for a, b in zip(want[name], got[name], strict=True):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_a_read_only_cache_dir_stops_with_one_line_naming_it_and_a_complete_one_is_read(
        images: Path, tmp_path: Path, tiny_source, extract_options, tiny_source_cached) -> None:
    ds = data.load_dataset(images)
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.mkdir()
    want = features.extract_all(tiny_source, ds, features.ExtractOptions(cache_dir=full, **extract_options))
    folders = [empty, full, *full.iterdir(), *full.glob("*/shards")]
    for folder in folders:
        folder.chmod(0o555)
    try:
        if os.access(empty, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        with pytest.raises(FeatureCacheError) as err:
            features.extract_all(tiny_source, ds, features.ExtractOptions(cache_dir=empty, **extract_options))
        _assert_one_line_naming(err, empty)
        assert not any(empty.iterdir())
        got = features.extract_all(tiny_source_cached, ds, features.ExtractOptions(cache_dir=full, **extract_options))
        for name in want:
            np.testing.assert_array_equal(got[name].maps, want[name].maps)
    finally:
        for folder in folders:
            folder.chmod(0o755)
