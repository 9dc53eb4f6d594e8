import numpy as np
import pytest

from jaxheads import checkpoint, parallel
import jax


def test_checkpoint_round_trip_and_replace(tmp_path):
    tree = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    checkpoint.save(tmp_path / "ck", tree, {"spec": {"width": 3}})
    restored, meta = checkpoint.load(tmp_path / "ck")
    np.testing.assert_array_equal(restored["params"]["w"], tree["params"]["w"])
    assert meta == {"spec": {"width": 3}}
    checkpoint.save(tmp_path / "ck", {"params": {"w": np.zeros(2, np.float32)}}, {"v": 2})
    restored, meta = checkpoint.load(tmp_path / "ck")
    assert restored["params"]["w"].shape == (2,) and meta == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no staging directories left behind


def test_incomplete_checkpoint_is_refused(tmp_path):
    (tmp_path / "ck" / "state").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        checkpoint.load(tmp_path / "ck")


def test_mesh_puts_members_first():
    assert len(jax.devices()) == 8
    assert dict(parallel.make_mesh(64).shape) == {"members": 8, "data": 1}
    assert dict(parallel.make_mesh(3).shape) == {"members": 2, "data": 4}
    assert dict(parallel.make_mesh(1).shape) == {"members": 1, "data": 8}
    padded, n = parallel.pad_to(np.ones((5, 2)), 4)
    assert padded.shape == (8, 2) and n == 5 and padded[5:].sum() == 0


def test_sweep_mesh_is_make_mesh_with_a_data_axis_that_divides_the_batch():
    assert parallel.sweep_mesh(3, 8) == parallel.make_mesh(3)  # 4 data shards divide 8
    assert parallel.sweep_mesh(64, 1) == parallel.make_mesh(64)
    assert dict(parallel.sweep_mesh(3, 6).shape) == {"members": 4, "data": 2}  # 4 does not divide 6: move devices
    assert dict(parallel.sweep_mesh(1, 3).shape) == {"members": 8, "data": 1}
    for mesh in (parallel.sweep_mesh(3, 6), parallel.sweep_mesh(1, 3, jax.devices()[:4])):
        assert list(mesh.devices.flat) == jax.devices()[: mesh.size]  # the devices keep their order


def test_public_api_names_resolve_to_their_home_modules():
    import importlib

    import jaxheads

    assert jaxheads.__all__ == sorted(jaxheads._EXPORTS)
    for name in jaxheads.__all__:
        obj = getattr(jaxheads, name)
        assert obj is getattr(importlib.import_module(jaxheads._EXPORTS[name]), name), name
        assert callable(obj) and obj.__module__.startswith("jaxheads."), name  # ours, not a third-party object
    import jaxheads.finetuning  # noqa: F401  (importing the module must not shadow the function)

    assert callable(jaxheads.finetune) and jaxheads.finetune is jaxheads.finetuning.finetune
    with pytest.raises(AttributeError):
        jaxheads.no_such_name  # noqa: B018


@pytest.mark.slow
def test_public_api_does_what_it_claims_on_a_tiny_input(tmp_path):
    """The exported names a user starts from, through ``jaxheads.X`` only: a dataset from a folder, a head built,
    applied, saved, loaded and exported, a ridge probe and a sweep's abstract shapes (no training)."""
    import jaxheads
    from PIL import Image

    for c, colour in enumerate([(250, 0, 0), (0, 0, 250)]):
        (tmp_path / "imgs" / f"class{c}").mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (8 + i, 8), colour).save(tmp_path / "imgs" / f"class{c}" / f"{i}.png")
    ds = jaxheads.load_dataset(tmp_path / "imgs", val_fraction=0.2, test_fraction=0.2)
    assert ds.classes == ("class0", "class1") and sum(len(s) for s in ds.splits.values()) == 10

    spec = jaxheads.HeadSpec(num_classes=2, pooling="avg", conv=(jaxheads.ConvStage(3),), hidden=(4,))
    variables = jaxheads.init_head(jax.random.key(0), spec, (2, 2, 5))
    x = np.random.default_rng(0).normal(size=(6, 2, 2, 5)).astype(np.float32)
    logits = np.asarray(jaxheads.apply_head(variables, x, spec))
    assert logits.shape == (6, 2) and np.isfinite(logits).all()
    jaxheads.save_head(tmp_path / "head", spec, variables, (2, 2, 5), label_names=["a", "b"])
    spec2, variables2, apply_fn = jaxheads.load_head(tmp_path / "head")
    assert spec2 == spec
    np.testing.assert_allclose(apply_fn(variables2, x), logits, atol=1e-6)
    exported = jaxheads.export_head(tmp_path / "head.jaxexport", spec, variables, (2, 2, 5))
    restored = jax.export.deserialize(bytearray(exported.read_bytes()))
    np.testing.assert_allclose(restored.call(x), logits, atol=1e-5)

    rng = np.random.default_rng(1)
    y = np.arange(40) % 2
    features = (y[:, None] * 3.0 + rng.normal(size=(40, 6))).astype(np.float32)
    train, val = (jaxheads.FeatureSplit(labels=y[s], pooled=features[s]) for s in (slice(0, 30), slice(30, 40)))
    assert len(train) == 30
    probe = jaxheads.ridge_probe(train, val, num_classes=2)
    assert probe["best"]["val"]["accuracy"] >= 0.9 and probe["params"] == 6 * 2 + 2

    shapes = jaxheads.abstract_splits({"train": 30, "val": 10}, pooled=(6,))
    assert shapes["train"].pooled.shape == (30, 6) and shapes["val"].labels.shape == (10,)
    sweep = jaxheads.SweepSpec(pooling=("none",), depth=(1,), widths=(4, 8), seeds=2)
    members = sweep.expand(2, "multiclass")
    assert len(members) == 4 and all(isinstance(m, jaxheads.MemberSpec) for m in members)
    assert sorted(m.head.hidden for m in members) == [(4,), (4,), (8,), (8,)]


def test_a_kill_between_the_renames_leaves_the_old_checkpoint_readable(tmp_path):
    checkpoint.save(tmp_path / "ck", {"w": np.ones(3, np.float32)}, {"v": 1})
    (tmp_path / "ck").rename(tmp_path / ".ck.previous")  # the state save() is in right after its first rename
    assert checkpoint.exists(tmp_path / "ck")
    tree, meta = checkpoint.load(tmp_path / "ck")
    assert meta == {"v": 1} and tree["w"].tolist() == [1, 1, 1]
    checkpoint.save(tmp_path / "ck", {"w": np.zeros(3, np.float32)}, {"v": 2})
    assert checkpoint.load(tmp_path / "ck")[1] == {"v": 2} and not (tmp_path / ".ck.previous").exists()
