"""Benchmark: is the vmapped sweep faster than training the same heads one after another, and how close does it get
to the device's matmul rate?

Measured in one process (prints a table, writes JSON):
  (a) wall time of a 64-member sweep vs the same 64 members run one after another with the same code
      (``run_sweep`` on one member at a time; compiled programs are cached, so the loop compiles once), for small
      heads (1280→64→10, batch 64) and wide heads (1280→512→10, batch 256): training time (the jitted epochs) and
      the whole call (init, compile, probe, per-epoch validation);
  (b) the sweep's useful FLOP/s (FLOPs of the unpadded heads' training steps: 2·B·(2·C·W + 3·W·K), the first
      layer needing no input gradient) as a
      fraction of a large float32 matmul's FLOP/s measured in the same process;
  (c) the lax.map batch size the timing probe chose for each, with its per-step timings;
  (d) the state memory of a sweep of wide Flatten heads (8x8x1792 → 512 → 10), to say how many fit in 24 GiB.

    python experiments/bench_sweep.py --out experiments/results/bench_sweep.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads.heads import HeadSpec, param_count
from jaxheads.splits import FeatureSplit
from jaxheads.sweep import MemberSpec, SweepSpec, run_sweep


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n×n float32 matmul (best of ``repeats``)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def train_flops(width: int, batch: int, dim: int = 1280, classes: int = 10) -> int:
    """FLOPs of one training step of one unpadded dim→width→classes head: forward and weight gradient of the first
    layer (its input needs no gradient), forward, weight and input gradients of the output layer."""
    return 2 * batch * (2 * dim * width + 3 * width * classes)


def make_splits(n_train: int, dim: int = 1280, classes: int = 10, seed: int = 0) -> dict[str, FeatureSplit]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)

    def one(n: int) -> FeatureSplit:
        y = rng.integers(0, classes, n)
        return FeatureSplit(labels=y, pooled=(centres[y] * 0.3 + rng.normal(size=(n, dim))).astype(np.float32))

    return {"train": one(n_train), "val": one(512)}


def members(width: int, batch: int, n: int = 64) -> tuple[MemberSpec, ...]:
    """64 heads of one width: 8 learning rates × 8 seeds (what a real sweep of one width looks like)."""
    head = HeadSpec(num_classes=10, pooling="none", hidden=(width,))
    lrs = np.geomspace(1e-4, 3e-3, 8)
    return tuple(MemberSpec(head, float(lrs[i % 8]), batch_size=batch, seed=i // 8) for i in range(n))


def case(name: str, width: int, batch: int, n_train: int, epochs: int, peak: float, map_batch: str | int) -> dict:
    splits = make_splits(n_train)
    ms = members(width, batch)
    spec = SweepSpec(members=ms, epochs=epochs, patience=None, ridge_l2=(), map_batch=map_batch)
    t = time.perf_counter()
    swept = run_sweep(spec, splits, num_classes=10)
    sweep_wall = time.perf_counter() - t
    g = swept.groups[0]
    sweep_train = g["timings"]["train_s"]
    epochs_timed = epochs - 1  # the first epoch's time includes compilation and is booked as compile_s

    seq_train, seq_wall = 0.0, 0.0
    for m in ms:
        t = time.perf_counter()
        one = run_sweep(SweepSpec(members=(m,), epochs=epochs, patience=None, ridge_l2=(), map_batch="vmap"),
                        splits, num_classes=10)
        seq_wall += time.perf_counter() - t
        seq_train += one.groups[0]["timings"]["train_s"]

    head = ms[0].head
    steps = g["steps_per_epoch"] * epochs_timed
    useful = train_flops(width, batch) * steps * len(ms)
    rate = useful / sweep_train
    return {
        "case": name, "hidden": width, "batch": batch, "members": len(ms), "epochs": epochs,
        "steps_per_epoch": g["steps_per_epoch"], "params_per_head": param_count(head, (1280,)),
        "map_batch": g["map_batch"], "map_batch_probe_s_per_step": g["map_batch_probe"],
        "sweep_train_s": sweep_train, "sequential_train_s": seq_train,
        "speedup_train": seq_train / sweep_train,
        "sweep_wall_s": sweep_wall, "sequential_wall_s": seq_wall, "speedup_wall": seq_wall / sweep_wall,
        "sweep_compile_s": g["timings"]["compile_s"], "sweep_probe_s": g["timings"]["probe_s"],
        "useful_gflops": rate / 1e9, "fraction_of_matmul": rate / peak,
        "sequential_useful_gflops": useful / seq_train / 1e9,
    }


def flatten_memory(budget_gib: float = 24.0) -> dict:
    """State bytes per member of an 8x8x1792 Flatten → 512 → 10 head trained with AdamW (params, Adam's two
    moments, the kept best weights, and the gradient/update transients of one step), and how many fit in the
    budget beside the resident features (10k train examples, float32)."""
    head = HeadSpec(num_classes=10, pooling="flatten", hidden=(512,))
    shape = (8, 8, 1792)
    p = param_count(head, shape)
    per_member = 4 * p * (1 + 2 + 1 + 2)
    features = 4 * 10_000 * math.prod(shape)
    fit = int((budget_gib * 2**30 - features) // per_member)
    return {"head": "flatten 8x8x1792 -> 512 -> 10", "params": p, "state_bytes_per_member": per_member,
            "features_bytes_10k_examples": features, "budget_gib": budget_gib, "members_that_fit": fit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="experiments/results/bench_sweep.json")
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run, not a measurement)")
    parser.add_argument("--map-batch", default="auto", help="'auto' (probe), 'vmap' or an int")
    args = parser.parse_args()
    map_batch = args.map_batch if args.map_batch in ("auto", "vmap") else int(args.map_batch)

    peak = matmul_flops()
    scale = 1 if args.quick else 2
    rows = [
        case("small 1280-64-10 b64", 64, 64, 1024 * scale, 3, peak, map_batch),
        case("wide 1280-512-10 b256", 512, 256, 1024 * scale, 3, peak, map_batch),
    ]
    peak_after = matmul_flops()
    result = {"device": str(jax.devices()[0].device_kind), "devices": jax.device_count(),
              "platform": platform.platform(), "jax": jax.__version__,
              "matmul_gflops": peak / 1e9, "matmul_gflops_after": peak_after / 1e9, "cases": rows,
              "memory": flatten_memory()}
    print(f"matmul 2048² f32: {peak / 1e9:.0f} GFLOP/s before, {peak_after / 1e9:.0f} after "
          f"({result['device']}, {result['devices']} device(s))")
    header = f"{'case':24} {'k':>5} {'sweep s':>8} {'seq s':>8} {'speedup':>8} {'wall x':>7} {'GFLOP/s':>8} {'of mm':>6}"
    print(header)
    for r in rows:
        print(f"{r['case']:24} {str(r['map_batch']):>5} {r['sweep_train_s']:8.2f} {r['sequential_train_s']:8.2f} "
              f"{r['speedup_train']:7.2f}x {r['speedup_wall']:6.2f}x {r['useful_gflops']:8.1f} "
              f"{r['fraction_of_matmul']:6.0%}")
    mem = result["memory"]
    print(f"memory: {mem['head']}: {mem['params'] / 1e6:.1f}M params, "
          f"{mem['state_bytes_per_member'] / 2**30:.2f} GiB/member -> {mem['members_that_fit']} members in "
          f"{mem['budget_gib']:.0f} GiB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
