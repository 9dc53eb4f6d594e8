"""The sweep's host-side pieces on plain data: the group plan (no device work), the stopping rules on arrays, and
the progress events the CLI's bar reads."""

import numpy as np
import pytest

from jaxheads.heads import ConvStage, HeadSpec
from jaxheads.parallel import make_mesh
from jaxheads.sweep import MemberSpec, SweepSpec, run_sweep
from jaxheads.sweep.loop import compaction, halving_victims, patience_exhausted
from jaxheads.sweep.plan import fixed_map_batch, group_members, make_plan

SHAPES = {"pooled": (8,), "maps": (4, 4, 8)}


def _member(pooling="avg", hidden=(16,), conv=(), seed=0, batch=32):
    return MemberSpec(HeadSpec(num_classes=3, pooling=pooling, hidden=hidden, conv=conv), batch_size=batch, seed=seed)


def test_groups_share_a_program_only_when_structure_batch_and_width_agree():
    members = [_member("avg"), _member("max"), _member("avg", hidden=(4,)), _member("avg", hidden=(16, 16)),
               _member("avg", conv=(ConvStage(4),)), _member("avg", batch=16), _member("catavgmax")]
    # avg, max and a narrower width share one pre-pooled program; depth 2, conv, batch and a 2C pooling do not.
    assert group_members(members, SHAPES) == [[0, 1, 2], [3], [4], [5], [6]]
    gated = group_members([_member(hidden=(16,)), _member(hidden=(8, 8)), _member(hidden=())], SHAPES, "gated")
    assert gated == [[0, 1], [2]]


def test_plan_pads_widths_and_slots_to_the_mesh():
    members = [_member(hidden=(4,), seed=0), _member(hidden=(16,), seed=1), _member("max", hidden=(4,), seed=2)]
    mesh = make_mesh(num_members=2)
    plan = make_plan(0, [0, 1, 2], members, SHAPES, n_train=100, sweep=SweepSpec(), mesh=mesh)
    assert plan.slots == 4 and plan.local_slots == 2  # 3 members padded to a multiple of 2 devices
    assert plan.padded == (16,) and plan.true_hidden[:, 0].tolist() == [4, 16, 4, 4]
    assert plan.sources == ("avg", "max") and plan.input_shape == (8,)
    consts = plan.host_consts(keys=None)
    assert consts.masks[0].sum(axis=1).tolist() == [4, 16, 4, 4] and consts.source.tolist() == [0, 0, 1, 0]
    assert plan.steps_per_epoch == 100 // 32 and fixed_map_batch(plan, "vmap") == "vmap"
    assert fixed_map_batch(plan, 7) == min(7, plan.memory_cap)


def test_patience_and_halving_on_arrays():
    active = np.array([True, True, False, True])
    since = np.array([3, 1, 9, 2])
    assert patience_exhausted(active, since, 2).tolist() == [0, 3]
    assert patience_exhausted(active, since, None).tolist() == []
    best = np.array([0.5, 0.9, 0.0, 0.5])
    # The weakest half of the active members; ties keep member order (stable).
    assert halving_victims(active, best, 0.5).tolist() == [0]
    assert halving_victims(active, best, 0.7).tolist() == [0, 3]


def test_compaction_keeps_live_slots_first_and_pads_to_the_mesh():
    mesh = make_mesh(num_members=2)
    slots = np.array([0, 1, 2, 3, 4, -1])
    active = np.array([False, True, False, True, False])
    keep, n_live = compaction(slots, active, mesh)
    assert keep.tolist() == [1, 3] and n_live == 2
    assert compaction(slots, np.ones(5, bool), mesh) is None  # nothing to shrink


@pytest.mark.slow
def test_progress_events_name_the_group_size():
    rng = np.random.default_rng(0)
    from jaxheads.features.split import FeatureSplit

    split = lambda n: FeatureSplit(labels=rng.integers(0, 3, n), pooled=rng.normal(size=(n, 8)).astype(np.float32))  # noqa: E731
    events = []
    sweep = SweepSpec(pooling=("none",), widths=(4, 8), epochs=2, batch_size=(16,), ridge_l2=(), patience=None)
    run_sweep(sweep, {"train": split(32), "val": split(16)}, num_classes=3, progress=events.append)
    assert {e["members"] for e in events} == {2} and events[-1]["epoch"] == 2 and events[-1]["active"] == 2


@pytest.mark.slow
def test_a_linear_head_in_a_norm_grid_is_one_config_and_trains():
    rng = np.random.default_rng(1)
    from jaxheads.features.split import FeatureSplit

    split = lambda n: FeatureSplit(labels=rng.integers(0, 3, n), pooled=rng.normal(size=(n, 8)).astype(np.float32))  # noqa: E731
    sweep = SweepSpec(pooling=("none",), widths=(4,), depth=(0, 1), norm=("none", "batch"), epochs=2,
                      batch_size=(16,), ridge_l2=(), patience=None)
    result = run_sweep(sweep, {"train": split(32), "val": split(16)}, num_classes=3)
    heads = sorted((len(m["spec"]["head"]["hidden"]), m["spec"]["head"]["norm"]) for m in result.members)
    assert heads == [(0, "none"), (1, "batch"), (1, "none")]
