"""Benchmark: a sweep group streamed from the memory-mapped feature cache vs the same group placed in memory.

A synthetic cache of (7, 7, C) float16 maps (Gaussian class blobs, written through ``feature_store.write_shard``)
is read lazily (``feature_lazy.lazy_gather``) and swept twice per round: with the default budget (every group
placed on the devices, the in-memory sweep) and with ``--budget`` (every group streams: the host reads each chunk of
steps from the shards, pools it and puts it on the devices while the previous chunk trains). Two groups: the avg
pooled head (the host pools every batch) and the flatten head (the host copies the raw maps). Reported per setting
and group: training seconds (the jitted epochs 2..E; epoch 1 is booked as compile), evaluation seconds, and the
whole ``run_sweep`` call; settings alternate over ``--rounds`` rounds (the CPU is shared: read the medians and the
per-round ratio). Also checks the two settings' metrics agree (max |difference|).

    python experiments/sweep/bench_stream.py --out experiments/results/bench_stream.json [--rounds 3] [--n 6000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/ is not an installed package
import jaxheads  # noqa: E402

SETTINGS = ("in_memory", "streamed")


def write_cache(folder: Path, n: int, channels: int, classes: int = 10, shard: int = 512, seed: int = 0):
    """A synthetic cache of ``n`` images' maps; returns (plan, labels)."""
    from jaxheads.features import store

    rng = np.random.default_rng(seed)
    plan = store.Plan(np.asarray([f"img{i:07d}".encode() for i in range(n)], "S32"), shard)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(0, 0.5, (classes, 7, 7, channels)).astype(np.float32)
    for a, b in plan.shards:
        maps = (centres[labels[a:b]] + rng.normal(0, 1, (b - a, 7, 7, channels))).astype(np.float16)
        pooled = maps.astype(np.float32).mean((1, 2)).astype(np.float16)
        store.write_shard(folder, a, b, pooled, maps, np.ones(b - a, bool))
    return plan, labels


def lazy_splits(folder: Path, plan, labels: np.ndarray) -> dict:
    from jaxheads.features.lazy import lazy_gather
    from jaxheads.features.split import FeatureSplit

    n = len(plan.rows)
    perm = np.random.default_rng(1).permutation(n)
    cut = [int(0.7 * n), int(0.85 * n)]
    out = {}
    for name, rows in zip(("train", "val", "test"), np.split(perm, cut)):
        kept, pooled, maps = lazy_gather(folder, plan, rows, True)
        out[name] = FeatureSplit(labels[rows][kept].astype(np.int32), pooled, maps)
    return out


def one_run(setting: str, splits: dict, spec, budget: str) -> tuple[dict, object]:
    from jaxheads.sweep import run_sweep

    t = time.perf_counter()
    result = run_sweep(spec, splits, num_classes=10, device_memory_budget=budget if setting == "streamed" else None)
    wall = time.perf_counter() - t
    groups = {g["poolings"][0]: {k: g["timings"][k] for k in ("train_s", "compile_s", "eval_s")} | {
        "streamed": g["streamed"]} for g in result.groups}
    return {"setting": setting, "wall_s": wall, "groups": groups}, result


def _max_difference(a, b) -> float:
    worst = 0.0
    for ra, rb in zip(a.members, b.members, strict=True):
        for split in ("val", "test"):
            worst = max(worst, *(abs(v - rb[split][k]) for k, v in ra[split].items()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="experiments/results/bench_stream.json")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n", type=int, default=6000, help="images in the cache (70/15/15 train/val/test)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--budget", default="16MB", help="the streamed setting's --device-memory-budget")
    args = parser.parse_args()
    jaxheads.split_cpu_host()
    import jax

    from jaxheads.sweep import SweepSpec

    spec = SweepSpec(pooling=("avg", "flatten"), widths=(64,), depth=(1,), dropout=(0.0, 0.5), epochs=args.epochs,
                     seeds=1, batch_size=(args.batch,), folds=None, patience=None, design="grid", ridge_l2=())
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        plan, labels = write_cache(Path(tmp), args.n, args.channels)
        splits = lazy_splits(Path(tmp), plan, labels)
        for r in range(args.rounds):
            for setting in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:  # alternate who goes first
                row, results[setting] = one_run(setting, splits, spec, args.budget)
                row.update(round=r, loadavg=os.getloadavg())
                rows.append(row)
                per_group = "  ".join(f"{p} train {g['train_s']:6.2f}s eval {g['eval_s']:5.2f}s"
                                      for p, g in row["groups"].items())
                print(f"round {r} {setting:9} wall {row['wall_s']:6.2f}s  {per_group}  load {row['loadavg'][0]:.1f}",
                      flush=True)
    summary = _summary(rows)
    summary["max_metric_difference"] = _max_difference(results["in_memory"], results["streamed"])
    print(f"\n{'group':8} {'in-memory train s':>18} {'streamed train s':>17} {'streamed/in-memory':>19}")
    for pooling, s in summary["groups"].items():
        print(f"{pooling:8} {s['in_memory']:18.2f} {s['streamed']:17.2f} {s['ratio']:19.2f}")
    print(f"max |metric difference| {summary['max_metric_difference']:.2e}")
    out = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "devices": jax.device_count()},
           "args": vars(args), "rows": rows, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))


def _summary(rows: list[dict]) -> dict:
    """Median training seconds per group and setting, and the median of the per-round streamed/in-memory ratios."""
    poolings = list(rows[0]["groups"])
    groups = {}
    for p in poolings:
        med = {s: float(np.median([r["groups"][p]["train_s"] for r in rows if r["setting"] == s])) for s in SETTINGS}
        ratios = [b["groups"][p]["train_s"] / a["groups"][p]["train_s"]
                  for a, b in zip(rows[::2], rows[1::2], strict=True)]
        ratios = [x if rows[2 * i]["setting"] == "in_memory" else 1 / x for i, x in enumerate(ratios)]
        groups[p] = {**med, "ratio": float(np.median(ratios)),
                     "chunk_steps": next(r["groups"][p]["streamed"] for r in rows if r["setting"] == "streamed")}
    wall = {s: float(np.median([r["wall_s"] for r in rows if r["setting"] == s])) for s in SETTINGS}
    return {"groups": groups, "wall_s": wall}


if __name__ == "__main__":
    main()
