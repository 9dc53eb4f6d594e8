"""Part 2: how much of the machine the sweep uses.

Useful FLOP/s of a sweep of wide heads (the training FLOPs of the unpadded heads, ``bench_sweep.train_flops``:
forward and gradients, no input gradient for the first layer, over the timed epochs) divided by the FLOP/s of a
large float32 matmul measured in the same process, before and after (the larger is used). The workload, the
FLOP count and the matmul probe are the sweep engineer's (``experiments/sweep/bench_sweep.py``: ``matmul_flops``,
``train_flops``, ``make_splits``, ``members``); this part runs only the sweep side of it.
"""

from __future__ import annotations

import time
from typing import Any

from jaxheads.sweep import SweepSpec, run_sweep
from experiments.sweep import bench_sweep
from experiments.alternatives.config import BenchSize

FEATURES = 1280  # bench_sweep.make_splits' default feature width (MobileNetV2/EfficientNet pooled features)
CLASSES = 10


def run(size: BenchSize) -> dict[str, Any]:
    """One wide-head sweep between two matmul probes."""
    peak = bench_sweep.matmul_flops(size.matmul_n)
    splits = bench_sweep.make_splits(size.eff_train, FEATURES, CLASSES)
    members = bench_sweep.members(size.eff_width, size.eff_batch, size.eff_members)
    spec = SweepSpec(members=members, epochs=size.eff_epochs, patience=None, ridge_l2=())
    t = time.perf_counter()
    result = run_sweep(spec, splits, num_classes=CLASSES)
    wall = time.perf_counter() - t
    peak_after = bench_sweep.matmul_flops(size.matmul_n)
    g = result.groups[0]
    steps = g["steps_per_epoch"] * (size.eff_epochs - 1)  # epoch 1 carries compilation (booked as compile_s)
    useful = bench_sweep.train_flops(size.eff_width, size.eff_batch, FEATURES, CLASSES) * steps * len(members)
    rate = useful / g["timings"]["train_s"]
    return {
        "heads": f"{len(members)} x {FEATURES}->{size.eff_width}->{CLASSES}, batch {size.eff_batch}",
        "train_examples": size.eff_train, "epochs_timed": size.eff_epochs - 1, "map_batch": g["map_batch"],
        "map_batch_probe_s_per_step": g["map_batch_probe"], "sweep_wall_s": wall, "train_s": g["timings"]["train_s"],
        "useful_gflops": rate / 1e9, "matmul_n": size.matmul_n, "matmul_gflops": peak / 1e9,
        "matmul_gflops_after": peak_after / 1e9, "fraction_of_matmul": rate / max(peak, peak_after),
    }
