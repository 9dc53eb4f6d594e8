"""Benchmark: should members that differ only in depth share one depth-gated group, or train as one group per depth?

``SweepSpec.depth_grouping="gated"`` pads every member to the group's maximum depth and width and gates a shallower
member's extra layers to an identity: one program instead of one per depth (fewer compiles, fewer per-group
overheads, a bigger vmapped member axis), at the price of computing the gated layers anyway. ``"separate"`` (one
group per depth) computes only the real layers. Measured here on pooled 1280-d features: depths (1, 2, 3) × widths
(64, 256) × ``--seeds`` seeds (24 members by default), batch 64, alternating the two settings over ``--rounds``
rounds (the CPU is shared: compare best rounds and read the adjacent matmul rates for load). Reported per setting:
training time (the jitted epochs 2..E summed over groups; epoch 1 is booked as compile), compile, init, eval, and
the whole ``run_sweep`` call. Compiled programs are cached in the process, so only round 0 pays real compilation
(its wall time is the cold first call); later rounds' "compile" is the first epoch.

    python experiments/sweep/bench_depth.py --out experiments/results/bench_depth.json [--rounds 3] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/ is not an installed package
from experiments.sweep.bench_sweep import make_splits, matmul_flops  # noqa: E402  (the same Gaussian problem)
from jaxheads import checkpoint  # noqa: E402
from jaxheads.sweep import DEPTH_GROUPING_DEFAULT, SweepSpec, run_sweep  # noqa: E402

SETTINGS = ("separate", "gated")


def one_run(setting: str, splits: dict, args: argparse.Namespace) -> dict:
    """One ``run_sweep`` of the grid under ``setting``; its timings summed over groups."""
    sweep = SweepSpec(pooling=("none",), widths=(64, 256), depth=(1, 2, 3), seeds=args.seeds, epochs=args.epochs,
                      batch_size=(args.batch,), learning_rate=(1e-3,), patience=None, ridge_l2=(),
                      map_batch=args.map_batch, depth_grouping=setting)
    t = time.perf_counter()
    result = run_sweep(sweep, splits, num_classes=10)
    wall = time.perf_counter() - t
    sums = {k: sum(g["timings"][k] for g in result.groups) for k in ("init_s", "compile_s", "probe_s", "train_s",
                                                                       "eval_s")}
    return {"setting": setting, "wall_s": wall, **sums, "groups": len(result.groups),
            "members": len(result.members),
            "map_batch": [g["map_batch"] for g in result.groups],
            "padded_hidden": [g["padded_hidden"] for g in result.groups],
            "val_accuracy_mean": float(np.mean([m["val"]["accuracy"] for m in result.members]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="experiments/results/bench_depth.json")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--map-batch", default="vmap", help="'vmap', 'auto' or an int (same for both settings)")
    args = parser.parse_args()
    args.map_batch = args.map_batch if args.map_batch in ("auto", "vmap") else int(args.map_batch)
    splits = make_splits(args.n_train)
    rows: list[dict] = []
    for r in range(args.rounds):
        order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]  # alternate who goes first
        for setting in order:
            mm = matmul_flops(1024, 5) / 1e9
            row = one_run(setting, splits, args)
            row.update(round=r, matmul_gflops_before=mm, loadavg=os.getloadavg())
            rows.append(row)
            print(f"round {r} {setting:8} train {row['train_s']:7.2f}s compile {row['compile_s']:6.2f}s "
                  f"init {row['init_s']:5.2f}s eval {row['eval_s']:5.2f}s wall {row['wall_s']:7.2f}s "
                  f"groups {row['groups']} matmul {mm:5.0f} GF/s load {row['loadavg'][0]:.1f}", flush=True)
    summary = {}
    for s in SETTINGS:
        mine = [x for x in rows if x["setting"] == s]
        summary[s] = {k: {"best": min(x[k] for x in mine), "median": float(np.median([x[k] for x in mine]))}
                      for k in ("train_s", "compile_s", "wall_s")}
    for k in ("train_s", "wall_s"):
        summary[f"gated_speedup_{k}_best"] = summary["separate"][k]["best"] / summary["gated"][k]["best"]
        summary[f"gated_speedup_{k}_median"] = summary["separate"][k]["median"] / summary["gated"][k]["median"]
    out = {"device": str(jax.devices()[0].device_kind), "devices": jax.device_count(),
           "platform": platform.platform(), "jax": jax.__version__, "cpus": os.cpu_count(),
           "config": {"depths": [1, 2, 3], "widths": [64, 256], "seeds": args.seeds, "epochs": args.epochs,
                      "batch": args.batch, "n_train": args.n_train, "dim": 1280, "classes": 10,
                      "map_batch": args.map_batch, "rounds": args.rounds},
           "default": DEPTH_GROUPING_DEFAULT, "rows": rows, "summary": summary}
    for s in SETTINGS:
        v = summary[s]
        print(f"{s:8} train best {v['train_s']['best']:.2f}s median {v['train_s']['median']:.2f}s | "
              f"compile best {v['compile_s']['best']:.2f}s | wall best {v['wall_s']['best']:.2f}s "
              f"median {v['wall_s']['median']:.2f}s")
    print(f"gated vs separate: train {summary['gated_speedup_train_s_best']:.2f}x (best) "
          f"{summary['gated_speedup_train_s_median']:.2f}x (median); wall {summary['gated_speedup_wall_s_best']:.2f}x "
          f"(best) {summary['gated_speedup_wall_s_median']:.2f}x (median)  (>1: gated faster)")
    path = Path(args.out)
    checkpoint.write_json_atomic(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
