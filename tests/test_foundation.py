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


def test_public_api_names_resolve():
    import jaxheads

    for name in jaxheads.__all__:
        assert callable(getattr(jaxheads, name)), name
    import jaxheads.finetuning  # noqa: F401  (importing the module must not shadow the function)

    assert callable(jaxheads.finetune) and jaxheads.finetune is jaxheads.finetuning.finetune
    with pytest.raises(AttributeError):
        jaxheads.no_such_name  # noqa: B018



def test_a_kill_between_the_renames_leaves_the_old_checkpoint_readable(tmp_path):
    checkpoint.save(tmp_path / "ck", {"w": np.ones(3, np.float32)}, {"v": 1})
    (tmp_path / "ck").rename(tmp_path / ".ck.previous")  # the state save() is in right after its first rename
    assert checkpoint.exists(tmp_path / "ck")
    tree, meta = checkpoint.load(tmp_path / "ck")
    assert meta == {"v": 1} and tree["w"].tolist() == [1, 1, 1]
    checkpoint.save(tmp_path / "ck", {"w": np.zeros(3, np.float32)}, {"v": 2})
    assert checkpoint.load(tmp_path / "ck")[1] == {"v": 2} and not (tmp_path / ".ck.previous").exists()
