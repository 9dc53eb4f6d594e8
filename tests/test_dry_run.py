"""jaxheads.cli.dry_run: the plan is the sweep's own (the groups a real run trains), its arithmetic is checkable by hand,
the estimate follows the calibration, and the calibration measures this machine."""

import io
import math

import numpy as np
import pytest
from rich.console import Console

from jaxheads import heads
from jaxheads.cli import dry_run
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import SweepSpec, run_sweep

SHAPES = {"pooled": (6,), "maps": (2, 2, 6)}
SIZES = {"train": 48, "val": 16, "test": 24}
SPEC = SweepSpec(pooling=("avg", "none"), widths=(4, 8), depth=(1,), epochs=2, batch_size=(16,), folds=2,
                 patience=None, ridge_l2=(), design="grid", map_batch="vmap")


@pytest.mark.slow
def test_plan_is_the_sweeps_own_and_its_arithmetic_checks_by_hand():
    plan = dry_run.plan_sweep(SPEC, SHAPES, SIZES, num_classes=3, task="multiclass")
    assert (plan.members, plan.configs, plan.epochs, plan.metric) == (8, 4, 2, "accuracy")  # 4 configs x 2 folds
    assert plan.n_train == 32 and plan.eval_rows == 32  # pool 64 in 2 folds; a member scores its fold (32 > 24)
    (group,) = plan.groups  # avg and none pool to the same 6 wide vector: one program
    assert group.padded == (8,) and group.members == 8 and group.slots % plan.devices in (0, group.slots)
    forward = heads.flops_per_example(heads.HeadSpec(num_classes=3, pooling="none", hidden=(8,)), (6,))
    assert forward == 2 * (6 * 8 + 8 * 3)
    assert group.steps_per_epoch == 2 and group.batch == 16
    assert group.train_flops == 3 * forward * 16 * 2 * group.slots
    assert group.eval_flops == forward * 32 * group.slots
    assert group.params == 6 * 8 + 8 + 8 * 3 + 3

    rng = np.random.default_rng(0)

    def split(n: int) -> FeatureSplit:
        return FeatureSplit(labels=rng.integers(0, 3, n).astype(np.int32),
                            pooled=rng.normal(size=(n, 6)).astype(np.float16),
                            maps=rng.normal(size=(n, 2, 2, 6)).astype(np.float16))

    result = run_sweep(SPEC, {name: split(n) for name, n in SIZES.items()}, num_classes=3)
    assert [(g["members"], g["padded_hidden"], g["padded_members"], g["steps_per_epoch"], g["batch_size"])
            for g in result.groups] == [(list(range(8)), [8], group.slots, 2, 16)]
    assert len(result.members) == plan.members


def test_estimate_follows_the_calibration():
    plan = dry_run.plan_sweep(SPEC, SHAPES, SIZES, num_classes=3, task="multiclass")
    calib = dry_run.Calibration(flops_per_s=1e6, step_s=1e-3, eval_s=1e-2, group_s=2.0, took_s=0.0)
    (g,) = plan.groups
    per_epoch = g.steps_per_epoch * g.chunks * 1e-3 + 1e-2 + (g.train_flops + g.eval_flops) / 1e6
    times = dry_run.estimate(plan, calib)
    assert times["train_s"] == pytest.approx(2 * per_epoch) and times["compile_s"] == 2.0
    assert times["total_s"] == pytest.approx(times["train_s"] + 2.0)
    out = io.StringIO()
    dry_run.print_plan(plan, calib, times, console=Console(file=out, width=140, color_system=None))
    text = out.getvalue()
    assert "8 members (4 configs) in 1 compiled groups" in text and f"about {times['total_s']:.0f} s" in text
    assert "avg/none · 8" in text and "1000 µs per step" in text and "2.0 s to compile a group" in text


def test_record_and_recall_a_plan(jaxheads_cache):
    plan = dry_run.plan_sweep(SPEC, SHAPES, SIZES, num_classes=3, task="multiclass")
    key = {"dataset": "x", "sweep": SPEC.to_dict()}
    assert dry_run.recorded(key) is None
    dry_run.record(key, dry_run.plan_json(plan, None, {"total_s": 3.0, "compile_s": 1.0, "train_s": 2.0}))
    again = dry_run.recorded(key)
    assert again["estimate"]["total_s"] == 3.0 and again["members"] == 8 and again["groups"][0]["padded"] == [8]
    assert dry_run.recorded({**key, "dataset": "y"}) is None


@pytest.mark.slow
def test_calibration_measures_this_machine():
    calib = dry_run.calibrate()
    assert calib.flops_per_s > 1e8 and 0 < calib.step_s < 1.0 and calib.group_s > 0
    assert all(math.isfinite(v) for v in calib)
