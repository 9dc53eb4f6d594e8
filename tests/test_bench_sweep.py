"""experiments/sweep/bench_sweep.py compares the sweep with the sequential loop at the loop's fastest layout measured in
the same run. The timings are faked here (the benchmark itself is slow); what is checked is which layout becomes
the baseline and that the ratios are computed against it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/ is not an installed package

from experiments.sweep import bench_sweep  # noqa: E402


def test_the_loop_runs_on_the_fastest_layout_and_the_ratios_use_it(monkeypatch):
    layouts = bench_sweep.loop_layouts(64)
    assert set(layouts) == {"one_device", "data_split"}  # the tests' 8 CPU devices divide a batch of 64
    assert set(bench_sweep.loop_layouts(63)) == {"one_device"}  # a batch the devices do not divide
    loop_s = {"one_device": 0.3, "data_split": 0.1}  # one member's training seconds on each layout

    def fake_sweep(ms, splits, epochs, map_batch, mesh=None):
        group = {"mesh": {"members": 8, "data": 1}, "map_batch": "vmap", "steps_per_epoch": 2,
                 "map_batch_probe": None, "timings": {"compile_s": 0.0, "probe_s": 0.0}}
        if len(ms) > 1:  # the sweep of every member
            return 1.0, 0.4, group
        layout = next(name for name, m in layouts.items() if m == mesh)
        return loop_s[layout] + 0.5, loop_s[layout], group

    monkeypatch.setattr(bench_sweep, "_sweep", fake_sweep)
    monkeypatch.setattr(bench_sweep, "matmul_flops", lambda n=2048, repeats=10: 1e11)
    row = bench_sweep.case("fake", 64, 64, 64, 3, 1e11, "vmap", rounds=2, n_members=8)
    assert row["sequential_layout"] == "data_split" and row["sequential_mesh"] == {"members": 1, "data": 8}
    assert row["sequential_layout_check_8_members"] == {"one_device_train_s": pytest.approx(2.4),
                                                        "data_split_train_s": pytest.approx(0.8)}
    assert row["sequential_train_s"] == pytest.approx(8 * 0.1) and row["sweep_train_s"] == pytest.approx(0.4)
    assert row["speedup_train"] == pytest.approx(2.0) and row["speedup_train_rounds"] == pytest.approx([2.0, 2.0])
