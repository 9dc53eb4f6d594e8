"""The feature cache with a tiny registered backbone: hits skip the backbone, keys separate, resume, sharding."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxheads import backbones, data, features
from jaxheads.backbones.base import feature_maps

def complete_shards(entry: Path) -> list[Path]:
    """The shards of a cache directory that a pass finished (their ``kept`` file is written last)."""
    return sorted((entry / "shards").glob("*.kept.npy"))


def _never() -> backbones.Backbone:
    raise AssertionError("the backbone was built on what should have been a cache hit")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, make_folder) -> data.Dataset:
    root = make_folder(tmp_path_factory.mktemp("feat") / "imgs", per_class=12)
    return data.load_dataset(root, val_fraction=0.25, test_fraction=0.0)


@pytest.mark.slow
def test_second_run_reads_the_cache_without_building_the_backbone(folder: data.Dataset, tmp_path: Path,
                                                                  tiny_source: features.BackboneSource) -> None:
    source = tiny_source
    events: list[features.Progress] = []
    first = features.extract_features(source, folder, "train",
                                      features.ExtractOptions(cache_dir=tmp_path, batch_size=4),
                                      progress=events.append)
    assert first.pooled.shape == (18, 16) and first.pooled.dtype == np.float16 and first.maps is None
    np.testing.assert_array_equal(first.labels, folder.split("train").labels)
    assert events[-1].done == events[-1].total == 18 and not events[-1].cached
    cached_source = dataclasses.replace(source, load=_never)
    second = features.extract_features(cached_source, folder, "train", features.ExtractOptions(cache_dir=tmp_path),
                                       progress=events.append)
    assert events[-1].cached
    np.testing.assert_array_equal(second.pooled, first.pooled)
    everything = features.extract_all(cached_source, folder, features.ExtractOptions(cache_dir=tmp_path),
                                      splits=["train"])
    np.testing.assert_array_equal(everything["train"].pooled, first.pooled)
    # Maps asked later: recomputed (with both), then both are served from the cache.
    with_maps = features.extract_features(source, folder, "train",
                                          features.ExtractOptions(cache_dir=tmp_path, need_maps=True, batch_size=4))
    assert with_maps.maps.shape == (18, 8, 8, 16) and with_maps.maps.dtype == np.float16
    mean = with_maps.maps.astype(np.float32).mean(axis=(1, 2))
    np.testing.assert_allclose(mean, with_maps.pooled.astype(np.float32), atol=2e-3, rtol=2e-3)
    again = features.extract_features(cached_source, folder, "train",
                                      features.ExtractOptions(cache_dir=tmp_path, need_maps=True))
    np.testing.assert_array_equal(np.asarray(again.maps), np.asarray(with_maps.maps))


def test_key_changes_with_preprocessing_weights_dataset_and_split(folder: data.Dataset, tiny_backbone: str) -> None:
    source = features.backbone_source(tiny_backbone, None, seed=0)
    key = features.cache_key(source, folder, "train")
    other_std = dataclasses.replace(source, preprocessing=dataclasses.replace(source.preprocessing, std=(64.0,) * 3))
    other_size = dataclasses.replace(source, preprocessing=dataclasses.replace(source.preprocessing, input_size=48))
    reseeded = data.load_dataset(folder.root, seed=5, val_fraction=0.25, test_fraction=0.0)
    keys = {
        key,
        features.cache_key(other_std, folder, "train"),
        features.cache_key(other_size, folder, "train"),
        features.cache_key(features.backbone_source(tiny_backbone, None, seed=1), folder, "train"),
        features.cache_key(source, folder, "val"),
        features.cache_key(source, reseeded, "train"),
    }
    assert len(keys) == 6
    assert features.cache_key(features.backbone_source(tiny_backbone, None, seed=0), folder, "train") == key
    built = backbones.load(tiny_backbone, None, seed=0)
    assert features.cache_key(built, folder, "train") == key  # a built backbone keys like its lazy source


def test_interrupted_pass_resumes_to_identical_features(folder: data.Dataset, tmp_path: Path,
                                                         tiny_source: features.BackboneSource) -> None:
    source = tiny_source
    reference = features.extract_features(source, folder, "train",
                                          features.ExtractOptions(cache_dir=tmp_path / "ref", batch_size=4, chunk_size=8))

    class Interrupt(Exception):
        pass

    def stop_after_first_chunk(event: features.Progress) -> None:
        if event.done >= 8:
            raise Interrupt

    with pytest.raises(Interrupt):
        features.extract_features(source, folder, "train",
                                  features.ExtractOptions(cache_dir=tmp_path / "run", batch_size=4, chunk_size=8),
                                  progress=stop_after_first_chunk)  # fmt: skip
    (entry,) = (tmp_path / "run").iterdir()
    assert not (entry / "meta.json").exists() and len(complete_shards(entry)) == 1
    events: list[features.Progress] = []
    resumed = features.extract_features(source, folder, "train",
                                        features.ExtractOptions(cache_dir=tmp_path / "run", batch_size=4, chunk_size=8),
                                        progress=events.append)
    assert events[0].done == 8  # started after the finished chunk
    np.testing.assert_array_equal(resumed.pooled, reference.pooled)
    np.testing.assert_array_equal(resumed.labels, reference.labels)
    assert len(complete_shards(entry)) == 3 and (entry / "meta.json").exists()  # 24 images (train first) in 8s


def test_eight_devices_give_the_one_device_features(folder: data.Dataset, tmp_path: Path,
                                                    tiny_source: features.BackboneSource) -> None:
    assert len(jax.devices()) == 8
    source = tiny_source
    many = features.extract_features(source, folder, "train",
                                     features.ExtractOptions(cache_dir=tmp_path / "8", batch_size=5, need_maps=True))
    one = features.extract_features(source, folder, "train",
                                    features.ExtractOptions(cache_dir=tmp_path / "1", batch_size=5, need_maps=True, devices=jax.devices()[:1]))
    for a, b in ((many.pooled, one.pooled), (many.maps, one.maps)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=1e-5, rtol=0)


def test_unreadable_images_are_left_out_and_recorded(tmp_path: Path, make_folder, tiny_backbone: str) -> None:
    root = make_folder(tmp_path / "imgs", per_class=4)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    ds = data.from_folder(root, fractions={"val": 0.0, "test": 0.0})
    source = features.backbone_source(tiny_backbone, None)
    with pytest.warns(data.BadImageWarning) as record:
        out = features.extract_features(source, ds, "train",
                                        features.ExtractOptions(cache_dir=tmp_path / "c", batch_size=3))
    assert any("broken.png" in str(w.message) for w in record)
    assert len(out) == 8 and out.pooled.shape == (8, 16)
    assert out.labels.tolist() == [0] * 4 + [1] * 4
    (meta_path,) = (tmp_path / "c").glob("*/meta.json")
    meta = json.loads(meta_path.read_text())
    assert meta["skipped"] == 1 and meta["skipped_names"][0].endswith("broken.png")
    with pytest.warns(data.BadImageWarning, match="left out"):
        features.extract_features(dataclasses.replace(source, load=_never), ds, "train",
                                  features.ExtractOptions(cache_dir=tmp_path / "c"))
    with pytest.raises(data.BadImageError, match="broken.png"):
        features.extract_features(source, ds, "train",
                                  features.ExtractOptions(cache_dir=tmp_path / "strict", strict=True))


_CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
import tiny  # registers the tiny backbone
from jaxheads import data, features
ds = data.load_dataset(sys.argv[2], val_fraction=0.25, test_fraction=0.0)
def report(event):
    print(event.done, flush=True)
    time.sleep(0.3)
features.extract_features(features.backbone_source(tiny.NAME, None), ds, "train",
                          features.ExtractOptions(cache_dir=sys.argv[3], batch_size=2, chunk_size=4), progress=report)
"""


@pytest.mark.slow
def test_sigkilled_pass_resumes_to_identical_features(folder: data.Dataset, tmp_path: Path, tiny_backbone: str,
                                                       tests_dir: Path) -> None:
    """A real kill (SIGKILL, no clean-up) in the middle of a pass; the next pass finishes it identically."""
    import os
    import signal
    import subprocess
    import sys

    source = features.backbone_source(tiny_backbone, None)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tests_dir), str(folder.root), str(tmp_path / "killed")],
        stdout=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        for line in child.stdout:  # first report is 0; kill once at least two chunks are on disk
            if int(line) >= 10:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    (entry,) = (tmp_path / "killed").iterdir()
    assert not (entry / "meta.json").exists() and len(complete_shards(entry)) >= 2
    events: list[features.Progress] = []
    resumed = features.extract_features(source, folder, "train",
                                        features.ExtractOptions(cache_dir=tmp_path / "killed", batch_size=2, chunk_size=4),
                                        progress=events.append)
    assert 8 <= events[0].done < 18
    reference = features.extract_features(source, folder, "train",
                                          features.ExtractOptions(cache_dir=tmp_path / "ref", batch_size=2))
    np.testing.assert_array_equal(resumed.pooled, reference.pooled)
    np.testing.assert_array_equal(resumed.labels, reference.labels)


def test_a_cache_whose_meta_disagrees_with_its_key_is_rebuilt_not_read(folder: data.Dataset, tmp_path: Path,
                                                                         tiny_backbone: str) -> None:
    source = features.backbone_source(tiny_backbone, None)
    first = features.extract_features(source, folder, "val", features.ExtractOptions(cache_dir=tmp_path))
    (meta_path,) = tmp_path.glob("*/meta.json")
    meta = json.loads(meta_path.read_text())
    meta["preprocessing"] = "something-else"
    meta_path.write_text(json.dumps(meta))
    (meta_path.parent / "pooled.npy").write_bytes(b"garbage")
    calls: list[int] = []
    counted = dataclasses.replace(source, load=lambda: calls.append(1) or source.load())
    again = features.extract_features(counted, folder, "val", features.ExtractOptions(cache_dir=tmp_path))
    assert calls == [1]
    np.testing.assert_array_equal(again.pooled, first.pooled)


@pytest.mark.slow
def test_micro_batched_forward_equals_the_whole_batch(tiny_backbone: str) -> None:
    built = backbones.load(tiny_backbone, None, seed=0)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)), jnp.float32)
    whole = feature_maps(built.module, built.variables, images, built.config.preprocessing, micro_batch=6)
    chunked = feature_maps(built.module, built.variables, images, built.config.preprocessing, micro_batch=2)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), atol=1e-5)
    np.testing.assert_allclose(np.asarray(whole), np.asarray(built.apply(images)["features"]), atol=1e-5)


@pytest.mark.slow
def test_features_for_sweep_reports_shapes_before_the_backbone_runs_and_compiles_the_sweep(
        folder: data.Dataset, tmp_path: Path, tiny_source: features.BackboneSource) -> None:
    from jaxheads import job
    from jaxheads.sweep import SweepSpec, run_sweep

    source = tiny_source
    shapes: list[dict] = []
    computed = features.extract_all(source, folder,
                                    features.ExtractOptions(cache_dir=tmp_path / "a", need_maps=True, batch_size=4),
                                    on_shapes=shapes.append)
    assert shapes and all(s == {"pooled": (16,), "maps": (8, 8, 16)} for s in shapes)  # the features' own shapes
    assert computed["train"].maps.shape[1:] == shapes[0]["maps"]
    shapes.clear()
    features.extract_all(dataclasses.replace(source, load=_never), folder,
                         features.ExtractOptions(cache_dir=tmp_path / "a", need_maps=True), on_shapes=shapes.append)
    assert not shapes  # a cache hit runs nothing and reports nothing
    sweep = SweepSpec(pooling=("avg", "flatten"), widths=(8,), epochs=2, batch_size=(6,), patience=None)
    splits = job.features_for_sweep(source, folder, sweep,
                                    features.ExtractOptions(cache_dir=tmp_path / "b", batch_size=4))
    for name, split in computed.items():
        np.testing.assert_array_equal(splits[name].maps, split.maps)
    result = run_sweep(sweep, splits, num_classes=folder.num_classes)
    assert len(result.members) == 2 and all(np.isfinite(m["val"]["loss"]) for m in result.members)
