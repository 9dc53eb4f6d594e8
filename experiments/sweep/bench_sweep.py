"""Benchmark: is the vmapped sweep faster than training the same heads one after another, and how close does it get
to the device's matmul rate?

Measured in one process (prints a table, writes JSON):
  (a) wall time of a 64-member sweep vs the same 64 members run one after another with the same code
      (``run_sweep`` on one member at a time; compiled programs are cached, so the loop compiles once), for small
      heads (1280→64→10, batch 64) and wide heads (1280→512→10, batch 256): training time (the jitted epochs) and
      the whole call (init, compile, the timing probe when asked for, per-epoch validation);
  (b) the sweep's useful FLOP/s (FLOPs of the unpadded heads' training steps: 2·B·(2·C·W + 3·W·K), the first
      layer needing no input gradient) as a
      fraction of a large float32 matmul's FLOP/s measured in the same process;
  (c) the lax.map batch size ``map_batch`` chose for each (with the probe's per-step timings under
      ``--map-batch probe``);
  (d) the state memory per member of pooled and Flatten heads (up to 8x8x1792 → 512 → 10): how many fit in 24 GiB.

The sweep runs as ``jaxheads sweep`` runs it: a CPU-only host is split into one JAX device per core
(``distributed.split_cpu_host``; ``--cpu-devices N`` sets N instead, 1 = JAX's single device) and the sweep shards
its members over all of them (independent members run side by side). The sequential loop is the baseline at its
fastest layout measured in the same run: one device, or each member's batch split over all devices. Each case
first times its first 8 members on every layout (alternated member by member; ``sequential_layout_check_8_members``)
and runs the loop on the faster one (``sequential_layout``, ``sequential_mesh``); the table names it.

    python experiments/sweep/bench_sweep.py --out experiments/results/bench_sweep.json [--quick] [--cpu-devices 1]

``--quick`` is a smoke run (8 members, one round, fewer steps), not a measurement.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxheads import checkpoint, distributed, parallel
from jaxheads.heads import HeadSpec, param_count
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import MemberSpec, SweepSpec, run_sweep


def best_seconds(f: Callable[[jax.Array], jax.Array], x: jax.Array, repeats: int) -> float:
    """The least wall time of ``repeats`` calls of jitted ``f(x)``, after one warm-up (compile) call."""
    f(x).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n×n float32 matmul (best of ``repeats``)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    return 2 * n**3 / best_seconds(jax.jit(lambda x: x @ x), a, repeats)


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


def _sweep(ms: tuple[MemberSpec, ...], splits: dict, epochs: int, map_batch: str | int,
           mesh: Mesh | None = None) -> tuple[float, float, dict]:
    t = time.perf_counter()
    result = run_sweep(SweepSpec(members=ms, epochs=epochs, patience=None, ridge_l2=(), map_batch=map_batch),
                       splits, num_classes=10, mesh=mesh)
    return time.perf_counter() - t, result.groups[0]["timings"]["train_s"], result.groups[0]


def loop_layouts(batch: int) -> dict[str, Mesh]:
    """The layouts the sequential loop can take: one device, and (when the batch divides over them) one member's
    batch split over every device (its "data" axis)."""
    layouts = {"one_device": parallel.make_mesh(1, jax.devices()[:1])}
    if jax.device_count() > 1 and batch % jax.device_count() == 0:
        layouts["data_split"] = parallel.make_mesh(1)
    return layouts


def fastest_loop_layout(ms: tuple[MemberSpec, ...], splits: dict, epochs: int,
                        layouts: dict[str, Mesh]) -> tuple[str, dict[str, float] | None]:
    """The layout whose training time over the first 8 members is least, and those times (None when there is
    only one layout). Layouts alternate member by member, so a change in the shared CPU's load hits both."""
    if len(layouts) == 1:
        return next(iter(layouts)), None
    seconds = dict.fromkeys(layouts, 0.0)
    for m in ms[:8]:
        for layout, mesh in layouts.items():
            seconds[layout] += _sweep((m,), splits, epochs, "vmap", mesh)[1]
    return min(seconds, key=seconds.__getitem__), {f"{k}_train_s": v for k, v in seconds.items()}


def case(name: str, width: int, batch: int, n_train: int, epochs: int, peak: float, map_batch: str | int,
         rounds: int, n_members: int = 64) -> dict:
    """The sweep and the sequential loop on its fastest layout, alternated ``rounds`` times (the CPU is shared: the
    best round of each is compared). Round 1 of the sweep chooses ``map_batch`` (timing candidates under "probe");
    later rounds reuse its choice."""
    splits = make_splits(n_train)
    ms = members(width, batch, n_members)
    layouts = loop_layouts(batch)
    loop_layout, layout_check = fastest_loop_layout(ms, splits, epochs, layouts)
    loop_mesh = layouts[loop_layout]
    jax.clear_caches()  # so round 1 of the loop pays its compilation, as round 1 of the sweep does
    sweep_train, sweep_wall, seq_train, seq_wall, mm = [], [], [], [], []
    first_group = None
    for r in range(rounds):
        mm.append(matmul_flops(repeats=5))  # the load from other users changes by 3x within minutes
        wall, train, g = _sweep(ms, splits, epochs, map_batch if r == 0 else first_group["map_batch"])
        first_group = first_group or g
        sweep_wall.append(wall)
        sweep_train.append(train)
        walls, trains = 0.0, 0.0
        for m in ms:
            wall, train, _ = _sweep((m,), splits, epochs, "vmap", loop_mesh)
            walls, trains = walls + wall, trains + train
        seq_wall.append(walls)
        seq_train.append(trains)

    g = first_group
    steps = g["steps_per_epoch"] * (epochs - 1)  # the first epoch includes compilation and is booked as compile_s
    useful = train_flops(width, batch) * steps * len(ms)
    best_sweep, best_seq = min(sweep_train), min(seq_train)
    fractions = [useful / t / m for t, m in zip(sweep_train, mm)]
    # per round (sweep and loop measured back to back): the spread the shared CPU puts on one comparison
    train_ratios = [q / w for q, w in zip(seq_train, sweep_train)]
    return {
        "case": name, "sweep_mesh": g["mesh"], "sequential_layout": loop_layout,
        "sequential_mesh": {k: int(v) for k, v in loop_mesh.shape.items()}, "hidden": width,
        "batch": batch, "members": len(ms), "epochs": epochs, "rounds": rounds,
        "steps_per_epoch": g["steps_per_epoch"], "timed_steps": steps,
        "params_per_head": param_count(ms[0].head, (1280,)),
        "map_batch": g["map_batch"], "map_batch_probe_s_per_step": g["map_batch_probe"],
        "sweep_train_s": best_sweep, "sequential_train_s": best_seq, "speedup_train": best_seq / best_sweep,
        "sweep_train_s_rounds": sweep_train, "sequential_train_s_rounds": seq_train,
        "sweep_wall_s_rounds": sweep_wall, "sequential_wall_s_rounds": seq_wall,
        "speedup_wall_first_round": seq_wall[0] / sweep_wall[0], "speedup_wall_best": min(seq_wall) / min(sweep_wall),
        "speedup_train_rounds": train_ratios, "speedup_train_median": float(np.median(train_ratios)),
        "speedup_train_worst_round": min(train_ratios),
        "speedup_wall_worst_round": min(q / w for q, w in zip(seq_wall, sweep_wall)),
        "sweep_compile_s": g["timings"]["compile_s"], "sweep_probe_s": g["timings"]["probe_s"],
        "useful_gflops": useful / best_sweep / 1e9, "fraction_of_matmul": useful / best_sweep / peak,
        "matmul_gflops_rounds": [m / 1e9 for m in mm],
        "fraction_of_adjacent_matmul_rounds": fractions,
        "fraction_of_adjacent_matmul_median": float(np.median(fractions)),
        "sequential_useful_gflops": useful / best_seq / 1e9,
        "sequential_layout_check_8_members": layout_check,
    }


def memory_fit(budget_gib: float = 24.0, n_train: int = 10_000) -> list[dict]:
    """How many members of a few head shapes fit in ``budget_gib``: state bytes per member of a head trained with
    AdamW (params, Adam's two moments, the kept best weights, and one step's gradient and update transients:
    6 × 4 bytes per parameter) beside the device-resident training features (``n_train`` examples, float32).
    Activations are bounded separately by ``member_memory_mb`` through the lax.map batch size."""
    rows = []
    for name, shape, head in [
        ("pooled 1280 -> 512 -> 10", (1280,), HeadSpec(num_classes=10, pooling="none", hidden=(512,))),
        ("flatten 7x7x512 -> 512 -> 10", (7, 7, 512), HeadSpec(num_classes=10, pooling="flatten", hidden=(512,))),
        ("flatten 8x8x1792 -> 512 -> 10", (8, 8, 1792), HeadSpec(num_classes=10, pooling="flatten", hidden=(512,))),
    ]:
        p = param_count(head, shape)
        per_member = 4 * p * 6
        features = 4 * n_train * math.prod(shape)
        rows.append({"head": name, "params": p, "state_bytes_per_member": per_member,
                     "features_bytes": features, "budget_gib": budget_gib,
                     "members_that_fit": int((budget_gib * 2**30 - features) // per_member)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="experiments/results/bench_sweep.json")
    parser.add_argument("--quick", action="store_true", help="8 members, one round, fewer steps (a smoke run, "
                                                             "not a measurement)")
    parser.add_argument("--map-batch", default="auto", help="'auto', 'probe', 'vmap' or an int")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of sweep and sequential loop")
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="split a CPU host into this many JAX devices (default: one per core, as jaxheads sweep "
                             "does; 1: JAX's single device)")
    args = parser.parse_args()
    if args.cpu_devices is None:
        distributed.split_cpu_host()
    else:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    map_batch = args.map_batch if args.map_batch in ("auto", "probe", "vmap") else int(args.map_batch)

    peak = peak_before = matmul_flops()
    scale, rounds, n_members = (1, 1, 8) if args.quick else (2, args.rounds, 64)
    rows = [
        case("small 1280-64-10 b64", 64, 64, 1024 * scale, 3, peak, map_batch, rounds, n_members),
        case("wide 1280-512-10 b256", 512, 256, 1024 * scale, 3, peak, map_batch, rounds, n_members),
    ]
    peak_after = matmul_flops()
    peak = max([peak, peak_after] + [m * 1e9 for r in rows for m in r["matmul_gflops_rounds"]])
    for r in rows:  # against the best matmul rate seen in the process (the quietest moment of the shared CPU)
        r["fraction_of_matmul"] = r["useful_gflops"] * 1e9 / peak
    result = {"device": str(jax.devices()[0].device_kind), "devices": jax.device_count(),
              "platform": platform.platform(), "jax": jax.__version__,
              "matmul_gflops_best": peak / 1e9, "matmul_gflops_before": peak_before / 1e9,
              "matmul_gflops_after": peak_after / 1e9, "cases": rows,
              "memory": memory_fit()}
    print_result(result)
    out = Path(args.out)
    checkpoint.write_json_atomic(out, result)
    print(f"wrote {out}")


def print_result(result: dict) -> None:
    """The table of cases, the loop's layout per case, and the memory fit."""
    print(f"matmul 2048² f32: best {result['matmul_gflops_best']:.0f} GFLOP/s, "
          f"{result['matmul_gflops_before']:.0f} before, {result['matmul_gflops_after']:.0f} after "
          f"({result['device']}, {result['devices']} device(s))")
    header = (f"{'case':24} {'k':>5} {'sweep s':>8} {'seq s':>8} {'speedup':>8} {'median':>7} {'worst':>6} "
              f"{'wall x1':>8} {'wall x':>7} {'wall wst':>8} {'GFLOP/s':>8} {'seq GF/s':>8} {'of mm':>6} "
              f"{'of adj mm':>9}")
    print(header)
    for r in result["cases"]:
        print(f"{r['case']:24} {str(r['map_batch']):>5} {r['sweep_train_s']:8.2f} {r['sequential_train_s']:8.2f} "
              f"{r['speedup_train']:7.2f}x {r['speedup_train_median']:6.2f}x {r['speedup_train_worst_round']:5.2f}x "
              f"{r['speedup_wall_first_round']:7.2f}x {r['speedup_wall_best']:6.2f}x "
              f"{r['speedup_wall_worst_round']:7.2f}x "
              f"{r['useful_gflops']:8.1f} {r['sequential_useful_gflops']:8.1f} {r['fraction_of_matmul']:6.0%} "
              f"{r['fraction_of_adjacent_matmul_median']:9.0%}")
    print("sweep s / seq s / speedup: best round's jitted-epoch time (epochs 2..E); median / worst: of the per-round"
          " training ratios; wall x1: whole calls incl. compile (and the map_batch probe, if asked for) (round 1);"
          " wall x: best rounds; wall wst: worst round; of mm: best round vs the best matmul rate seen; of adj mm:"
          " median over rounds of the sweep's rate vs the matmul measured just before it")
    for r in result["cases"]:
        mesh = r["sequential_mesh"]
        line = (f"loop layout, {r['case']}: {r['sequential_layout']} (members {mesh['members']} x data "
                f"{mesh['data']}), the baseline above")
        if r["sequential_layout_check_8_members"]:
            c = r["sequential_layout_check_8_members"]
            line += (f"; first 8 members: one device {c['one_device_train_s']:.2f} s, batch split over "
                     f"{result['devices']} devices {c['data_split_train_s']:.2f} s")
        print(line)
    for mem in result["memory"]:
        print(f"memory: {mem['head']:30} {mem['params'] / 1e6:6.1f}M params "
              f"{mem['state_bytes_per_member'] / 2**30:6.3f} GiB/member -> {mem['members_that_fit']} members in "
              f"{mem['budget_gib']:.0f} GiB (with 10k train examples resident)")

if __name__ == "__main__":
    main()
