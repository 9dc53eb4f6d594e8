"""Augmented feature views (issue 17, item 1): K views per image in the feature cache, keyed and resumable like the
plain cache; a sweep that samples a view per example per epoch; test-time augmentation; and the bad-input lines
for --views and --augment. Tiny images, the tiny backbone randomly initialised, synthetic features."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from jaxheads import cli, data, features
from jaxheads.data import augment
from jaxheads.features.split import FeatureSplit


def _assert_same(a: FeatureSplit, b: FeatureSplit) -> None:
    for field in ("labels", "pooled", "maps"):
        np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)), err_msg=field)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, make_folder) -> Path:
    return make_folder(tmp_path_factory.mktemp("views") / "imgs", per_class=5)


def test_view_zero_is_the_plain_image_and_views_repeat_from_the_image_id_alone() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (23, 31, 3), dtype=np.uint8))
    policy = augment.parse_policy("crop,dihedral")
    np.testing.assert_array_equal(augment.augmented_view(image, 16, b"a" * 32, 0, policy),
                                  data.resize_center_crop(image, 16))
    first = [augment.augmented_view(image, 16, b"a" * 32, v, policy) for v in range(1, 4)]
    again = [augment.augmented_view(image, 16, b"a" * 32, v, policy) for v in range(1, 4)]
    other = augment.augmented_view(image, 16, b"b" * 32, 1, policy)
    assert all(f.shape == (16, 16, 3) and f.dtype == np.uint8 for f in first)
    assert all(np.array_equal(f, g) for f, g in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0], other)
    flipped = augment.augmented_view(image, 16, b"a" * 32, 1, ("flip",))  # flip alone: view 1 is the mirror image
    np.testing.assert_array_equal(flipped, data.resize_center_crop(image, 16)[:, ::-1])


def test_k_views_are_keyed_and_view_zero_is_the_plain_cache_bit_for_bit(
        images: Path, tmp_path: Path, tiny_source, extract_options, tiny_source_counted) -> None:
    ds = data.load_dataset(images)
    plain = features.extract_all(tiny_source, ds, features.ExtractOptions(cache_dir=tmp_path, **extract_options))
    assert all(s.views is None for s in plain.values())
    calls: list[int] = []
    two = features.extract_all(tiny_source_counted(calls), ds,
                               features.ExtractOptions(cache_dir=tmp_path, views=2, augment="crop,flip", **extract_options))
    assert calls == [1] and len(list(tmp_path.iterdir())) == 2  # view 0 was read, view 1 computed
    for name in plain:
        _assert_same(two[name], plain[name])
    (view1,) = two["train"].views
    assert two["val"].views is None and two["test"].views is None  # only the split heads train on, by default
    np.testing.assert_array_equal(view1.labels, plain["train"].labels)
    assert not np.array_equal(np.asarray(view1.pooled), np.asarray(plain["train"].pooled))
    # Another policy: entries of its own for its views; K=3 adds view 2 and reuses view 1.
    other = features.extract_all(tiny_source, ds,
                                 features.ExtractOptions(cache_dir=tmp_path, views=2, augment="dihedral", **extract_options))
    assert len(list(tmp_path.iterdir())) == 3
    assert not np.array_equal(np.asarray(other["train"].views[0].pooled), np.asarray(view1.pooled))
    three = features.extract_all(tiny_source, ds,
                                 features.ExtractOptions(cache_dir=tmp_path, views=3, augment=["flip", "crop"], **extract_options))
    assert len(list(tmp_path.iterdir())) == 4
    _assert_same(three["train"].views[0], view1)
    assert not np.array_equal(np.asarray(three["train"].views[1].pooled), np.asarray(view1.pooled))


def test_a_deleted_view_shard_alone_is_computed_again_and_a_second_call_never_builds_the_backbone(
        images: Path, tmp_path: Path, tiny_source, extract_options, tiny_source_cached, tiny_source_counted) -> None:
    ds = data.load_dataset(images)
    kwargs = {"cache_dir": tmp_path, "views": 3, "augment": "crop", "view_splits": ("train", "test"), **extract_options}
    want = features.extract_all(tiny_source, ds, features.ExtractOptions(**kwargs))
    assert len(want["test"].views) == 2 and want["val"].views is None
    entry = next(p for p in tmp_path.iterdir() if "-view2-" in p.name)
    shard = sorted((entry / "shards").glob("*.pooled.npy"))[1]
    rows = shard.name.split(".")[0]  # the shard's pooled, maps and kept files
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npy") if not p.name.startswith(rows)
              or p.parent != shard.parent}
    shard.unlink()
    calls: list[int] = []
    events: list[features.Progress] = []
    got = features.extract_all(tiny_source_counted(calls), ds, features.ExtractOptions(**kwargs),
                               progress=events.append)
    assert calls == [1] and shard.exists()
    recomputed = {e.split for e in events if not e.cached}
    assert recomputed and recomputed <= {"train view 2", "test view 2"}
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing else was written again
    for name in ("train", "test"):
        for a, b in zip(want[name].views, got[name].views, strict=True):
            _assert_same(a, b)
    again = features.extract_all(tiny_source_cached, ds, features.ExtractOptions(**kwargs))
    _assert_same(again["train"].views[1], want["train"].views[1])


@pytest.mark.parametrize(("flags", "named"), [(["--views", "0"], "--views 0"),
                                              (["--augment", "flip,bogus"], "--augment 'flip,bogus'")])
def test_bad_views_or_augmentation_names_fail_with_one_line_naming_the_flag(
        flags: list[str], named: str, images: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        tiny_source) -> None:
    assert cli.main(["sweep", "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    if "augment" in named:
        assert all(name in err for name in augment.AUGMENTATIONS)
    with pytest.raises(ValueError, match="--views"):
        features.extract_all(tiny_source, data.load_dataset(images),
                             features.ExtractOptions(cache_dir=tmp_path, views=0))


def _map_splits(n: int = 96, seed: int = 0) -> dict[str, FeatureSplit]:
    """3 classes of (n, 2, 2, 4) maps, class c shifted up in channel c, with their pooled vectors."""
    rng = np.random.default_rng(seed)

    def one(rows: int) -> FeatureSplit:
        y = rng.integers(0, 3, rows)
        maps = rng.normal(size=(rows, 2, 2, 4)).astype(np.float32) + np.eye(3, 4, dtype=np.float32)[y][:, None, None]
        return FeatureSplit(labels=y, pooled=maps.mean(axis=(1, 2)), maps=maps)

    return {"train": one(n), "val": one(n // 2), "test": one(n // 2)}


def _with_views(split: FeatureSplit, views: list[FeatureSplit]) -> FeatureSplit:
    return FeatureSplit(split.labels, split.pooled, split.maps, tuple(views))


def _noisy(split: FeatureSplit, seed: int) -> FeatureSplit:
    """Another view of the same examples: the features plus noise."""
    rng = np.random.default_rng(seed)
    maps = split.maps + rng.normal(scale=0.5, size=split.maps.shape).astype(np.float32)
    return FeatureSplit(split.labels, maps.mean(axis=(1, 2)), maps)


def _run(splits: dict[str, FeatureSplit], folds: int | None) -> object:
    from jaxheads.sweep import SweepSpec, run_sweep

    spec = SweepSpec(pooling=("none", "flatten"), widths=(8,), epochs=3, batch_size=(16,), learning_rate=(3e-2,),
                     patience=None, ridge_l2=(), folds=folds, dropout=(0.3,))
    return run_sweep(spec, splits, num_classes=3)


def _assert_same_members(a: object, b: object) -> None:
    assert [m["curves"] for m in a.members] == [m["curves"] for m in b.members]
    for key in ("val", "test"):
        np.testing.assert_array_equal(a.predictions[key], b.predictions[key], err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("folds", [None, 2])
def test_view_sampling_changes_nothing_with_one_view_or_with_views_equal_to_the_plain_features(
        folds: int | None) -> None:
    splits = _map_splits()
    today = _run(splits, folds)
    pooled_views = ("train", "val") if folds else ("train",)
    one = {k: _with_views(s, []) if k in pooled_views else s for k, s in splits.items()}
    if folds is None:
        _assert_same_members(_run(one, folds), today)  # K=1: no view drawn
    # K=2 with view 1 == view 0: every drawn row v*N + i holds row i's features and label, so nothing changes; a
    # wrong offset, N or label row would train on other examples.
    same = {k: _with_views(s, [s]) if k in pooled_views else s for k, s in splits.items()}
    _assert_same_members(_run(same, folds), today)
    if folds is not None:
        return
    other = {k: _with_views(s, [_noisy(s, 1)]) if k in pooled_views else s for k, s in splits.items()}
    changed = _run(other, folds)  # views that differ: sampled, so training changes
    assert [m["curves"]["train_loss"] for m in changed.members] != [m["curves"]["train_loss"] for m in today.members]
    np.testing.assert_array_equal(changed.predictions["val_labels"], today.predictions["val_labels"])


@pytest.mark.slow
def test_test_time_augmentation_averages_each_members_probabilities_over_the_test_views() -> None:
    from jaxheads.heads import apply_head

    splits = _map_splits(seed=3)
    test = splits["test"]
    noisy = _noisy(test, 2)
    result = _run({**splits, "test": _with_views(test, [test, noisy])}, None)
    assert result.selection["test_views"] == 3
    for i, member in enumerate(result.members):
        spec, variables = result.head(i)
        probs = [np.asarray(jax.nn.softmax(apply_head(variables, getattr(view, spec.feature_kind), spec), -1))
                 for view in (test, noisy)]
        want = (2 * probs[0] + probs[1]) / 3  # view 0 comes from the sweep's own program: equal to rounding
        np.testing.assert_allclose(result.predictions["test"][i], want, atol=1e-5, err_msg=str(member["spec"]))
