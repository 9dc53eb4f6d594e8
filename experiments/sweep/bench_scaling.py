"""Benchmark: how the sweep's wall time grows with the number of members (1, 8, 64, 256), on whatever devices JAX
sees. Members are replicas (seeds) of one small head, 1280 -> 64 -> 10 at batch 64, on synthetic pooled features,
so every count is one group and one compiled program; the ideal on a parallel device is a flat line.

    python experiments/sweep/bench_scaling.py [--members 1,8,64,256] [--epochs 3] [--out experiments/results/bench_scaling.json]

Reports per count: the whole ``run_sweep`` call (init, compile, epochs, evaluation), the jitted training
time alone, and the ratios to the 1-member run (target on a GPU: 256 members ≤ 16x one member's wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import SweepSpec, run_sweep


def synthetic(n: int, dim: int = 1280, classes: int = 10, seed: int = 0) -> dict[str, FeatureSplit]:
    """Gaussian blobs in ``dim`` dimensions, split 80/20 into train/val."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, n).astype(np.int32)
    x = centers[labels] + rng.normal(0, 2, (n, dim)).astype(np.float32)
    cut = int(n * 0.8)
    return {"train": FeatureSplit(labels[:cut], pooled=x[:cut]), "val": FeatureSplit(labels[cut:], pooled=x[cut:])}


def time_sweep(members: int, splits: dict[str, FeatureSplit], epochs: int) -> dict[str, float]:
    spec = SweepSpec(pooling=("none",), widths=(64,), depth=(1,), seeds=members, epochs=epochs, patience=None,
                     batch_size=(64,), ridge_l2=())
    start = time.perf_counter()
    result = run_sweep(spec, splits, num_classes=10)
    wall = time.perf_counter() - start
    group = result.groups[0]
    return {"members": members, "wall_s": wall, "train_s": group["timings"]["train_s"],
            "compile_s": group["timings"]["compile_s"], "map_batch": group["map_batch"], "mesh": group["mesh"],
            "best_val_accuracy": max(m["val"]["accuracy"] for m in result.members)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,8,64,256")
    parser.add_argument("--epochs", type=int, default=3, help="the first epoch compiles; train_s is the rest")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_scaling.json"))
    args = parser.parse_args(argv)
    splits = synthetic(args.samples)
    time_sweep(3, splits, 1)  # warm-up (a count not measured): imports and shared helpers compile once
    rows = [time_sweep(int(m), splits, args.epochs) for m in args.members.split(",")]
    base = rows[0]
    for row in rows:
        row["wall_ratio_to_first"] = row["wall_s"] / base["wall_s"]
        row["train_ratio_to_first"] = row["train_s"] / max(base["train_s"], 1e-9)
    print(f"{'members':>8} {'wall s':>8} {'train s':>8} {'compile s':>9} {'wall/1':>7} {'train/1':>8}  map_batch  mesh")
    for r in rows:
        print(f"{r['members']:>8} {r['wall_s']:>8.2f} {r['train_s']:>8.2f} {r['compile_s']:>9.2f} "
              f"{r['wall_ratio_to_first']:>7.1f} {r['train_ratio_to_first']:>8.1f}  {r['map_batch']!s:>9}  {r['mesh']}")
    out = {"benchmark": "sweep_scaling", "device": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
           "platform": jax.default_backend(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "load_avg": os.getloadavg(), "samples": args.samples, "epochs": args.epochs,
           "head": "1280 -> 64 -> 10, batch 64", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
