"""Benchmark: how the main job's cost grows with the dataset (issue 18, item 4). Fashion-MNIST's train split (Debian's
``dataset-fashion-mnist``) subsampled, stratified, to N = 5k, 20k and 60k images, through EfficientNet-Lite0 at a
small input size, then a sweep with a head that reads the cached maps (max pooling) and one that reads the pooled
vectors. val and test stay fixed: 1,000 images each, stratified, from the official 10k test set.

    python experiments/features/bench_data_scaling.py [--sizes 5000,20000,60000] [--input-size 64] [--epochs 3]
        [--budget 64MiB] [--out experiments/results/bench_data_scaling.json]

Each stage runs in its own Python process, so the peak resident memory it reports is that stage's alone. Besides
the kernel's peak of the total (``VmHWM``, what ``ru_maxrss`` reports), a thread samples ``/proc/self/status`` every
20 ms and keeps the peaks of anonymous memory (``RssAnon``: what the process itself allocated) and of file-backed
pages (``RssFile``: mapped cache shards and libraries, which the kernel can drop and read again) apart:
- ``cold``: build the dataset, decode every image and run the backbone into a fresh feature cache;
- ``warm``: the same call on the filled cache (a cache hit: nothing decoded, the backbone never built);
- ``sweep``: the cache hit, then ``run_sweep`` and the job's outputs (``job.write_outputs``); with ``--budget``
  the sweep gets ``device_memory_budget`` when this checkout's ``run_sweep`` has it (``budget_applied`` says), and
  every stage reads the features lazily (``ExtractOptions(lazy=True)``, ``lazy_features``), as ``sweep_job`` does then.

JSON fields: ``rows[]`` one per (N, stage): ``n_train``, ``images`` (train+val+test), ``stage``, ``process_s`` (the
child's wall time, interpreter start included), ``stage_s`` (the measured call alone), ``peak_rss_mib`` (VmHWM), ``peak_anon_mib`` / ``peak_file_mib`` (sampled
peaks of RssAnon / RssFile; their peaks need not coincide), ``anon_by_phase_mib`` (peak RssAnon while the stage
read its features, ran the sweep, wrote the outputs),
``import_rss_mib`` (resident after imports and the dataset, before the stage), ``budget_applied``,
``lazy_features``; ``train_s`` and ``val_accuracy`` (per config) for the sweep stage; ``summary``
per stage: ``stage_s_per_1k_images`` (least-squares slope of stage_s on images), ``time_ratio``
(stage_s at the largest N / the smallest), ``images_ratio`` (the same for images: what linear growth gives),
``peak_ratio`` (peak RSS largest / smallest; the issue's goal is <= 1.5), ``anon_ratio`` and ``file_ratio`` (the
same for the sampled peaks); ``machine``, ``load_average`` (1/5/15 min, at the start and the end) and
``matmul_gflops``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/ is not an installed package

STAGES = ("cold", "warm", "sweep")
HELD_OUT = 1000
"""val and test images each, from the official test set: fixed, so only train grows with N."""
UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1, "": 1}


def parse_bytes(text: str) -> int:
    """``64MiB``, ``1.5GiB``, ``1000000``: a byte count; anything else is an error naming ``--budget``."""
    number = text.strip().rstrip("bBiIkKmMgG")
    unit = text.strip()[len(number):].lower()
    try:
        return int(float(number) * UNITS[unit])
    except (KeyError, ValueError) as err:
        raise SystemExit(f"--budget {text!r}: expected a byte count such as 64MiB, 1GiB or 1000000") from err


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    return _status_kib("VmHWM") / 1024


def _status_kib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


class MemorySampler:
    """Peaks of this process's resident memory by kind, from ``/proc/self/status`` every ``interval_s`` on a
    background thread (``VmHWM`` keeps only the total's peak). ``phase`` labels the samples that follow it."""

    FIELDS = ("RssAnon", "RssFile", "VmRSS")

    def __init__(self, interval_s: float = 0.02):
        self.interval_s, self.phase = interval_s, "start"
        self.peaks = dict.fromkeys(self.FIELDS, 0.0)  # KiB
        self.anon_by_phase: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def sample(self) -> None:
        values = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in self.FIELDS:
                values[name] = float(rest.split()[0])
        for name, kib in values.items():
            self.peaks[name] = max(self.peaks[name], kib)
        anon = values.get("RssAnon", 0.0)
        self.anon_by_phase[self.phase] = max(self.anon_by_phase.get(self.phase, 0.0), anon)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def mark(self, phase: str) -> None:
        self.sample()  # the last sample of the phase that ends
        self.phase = phase
        self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def row(self) -> dict[str, Any]:
        """The JSON fields, MiB."""
        return {"peak_anon_mib": self.peaks["RssAnon"] / 1024, "peak_file_mib": self.peaks["RssFile"] / 1024,
                "peak_rss_sampled_mib": self.peaks["VmRSS"] / 1024,
                "anon_by_phase_mib": {k: v / 1024 for k, v in self.anon_by_phase.items()}}


def scaled_dataset(n_train: int) -> Any:
    """Fashion-MNIST with ``n_train`` train images (stratified from the 60k) and fixed val/test from the 10k."""
    from jaxheads import data

    full = data.fashion_mnist(val_fraction=0.0)
    train, official_test = full.split("train"), full.split("test")
    if not 0 < n_train <= len(train):
        raise SystemExit(f"--sizes: {n_train} is not between 1 and {len(train)} (Fashion-MNIST's train split)")
    if n_train < len(train):
        train = train.subset(data.stratified_split(train.labels, {"rest": 1 - n_train / len(train)})["train"])
    held = data.stratified_split(official_test.labels, {"val": HELD_OUT / 10_000, "test": HELD_OUT / 10_000})
    splits = {"train": train, "val": official_test.subset(held["val"]), "test": official_test.subset(held["test"])}
    return data.Dataset(f"fashion_mnist_{n_train}", full.classes, "multiclass", splits, root=full.root,
                        source="fashion_mnist")


def bench_spec(epochs: int) -> Any:
    """One head on the maps (max pooling) and one on the pooled vectors; fixed val split, no early stop."""
    from jaxheads.sweep import SweepSpec

    return SweepSpec(pooling=("max", "none"), widths=(128,), depth=(1,), dropout=(0.0,), norm=("none",),
                     learning_rate=(1e-3,), batch_size=(128,), epochs=epochs, seeds=1, patience=None,
                     folds=None, design="grid")


def run_stage(args: argparse.Namespace) -> dict[str, Any]:
    """One stage in this process; returns its timings and memory."""
    with MemorySampler() as sampler:
        sampler.mark("setup")
        row = _stage(args, sampler)
    import resource

    return {**row, "peak_rss_mib": peak_rss_mib(), "ru_maxrss_mib": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, **sampler.row()}


def _stage(args: argparse.Namespace, sampler: MemorySampler) -> dict[str, Any]:
    """The stage's work, its phases marked on ``sampler``."""
    import jaxheads
    from jaxheads import features, job
    from jaxheads.sweep import run_sweep

    jaxheads.split_cpu_host()
    ds = scaled_dataset(args.n)
    source = features.backbone_source("efficientnet_lite0", input_size=args.input_size)
    spec = bench_spec(args.epochs)
    imported = _status_kib("VmRSS") / 1024
    extra: dict[str, Any] = {}
    budget_applied = args.budget is not None and "device_memory_budget" in inspect.signature(run_sweep).parameters
    # With a budget the features stay on disk (memory-mapped rows), as sweep_job reads them when a group may stream.
    options = features.ExtractOptions(cache_dir=args.cache_dir, batch_size=args.batch_size, lazy=budget_applied)
    sampler.mark("features")
    start = time.perf_counter()
    splits = job.features_for_sweep(source, ds, spec, options)
    if args.stage == "sweep":
        sampler.mark("sweep")
        sweep_start = time.perf_counter()
        budget = {"device_memory_budget": parse_bytes(args.budget)} if budget_applied else {}
        result = run_sweep(spec, splits, num_classes=ds.num_classes, task=ds.task, label_names=list(ds.classes),
                           **budget)
        sampler.mark("outputs")
        job.write_outputs(result, args.out_dir, backbone="efficientnet_lite0", dataset=ds.name)
        extra = {"train_s": time.perf_counter() - sweep_start,
                 "val_accuracy": {m["config"]: m["val"]["accuracy"] for m in result.members}}
    stage_s = time.perf_counter() - start
    images = sum(len(ds.split(s)) for s in ds.splits)
    return {"n_train": args.n, "images": images, "stage": args.stage, "stage_s": stage_s, "import_rss_mib": imported,
            "budget_applied": budget_applied, "lazy_features": options.lazy,
            "maps_shape": list(splits["train"].maps.shape[1:]), **extra}


def child(stage: str, n: int, args: argparse.Namespace, cache_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Run ``stage`` at ``n`` in a fresh interpreter; its last stdout line is its JSON row."""
    command = [sys.executable, __file__, "--stage", stage, "--n", str(n), "--input-size", str(args.input_size),
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--cache-dir", str(cache_dir),
               "--out-dir", str(out_dir)] + (["--budget", args.budget] if args.budget else [])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"stage {stage} at N={n} failed:\n{done.stderr[-4000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_s"] = time.perf_counter() - start
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage: the slope of its time on images, and the largest-to-smallest N ratios of time and peak RSS."""
    import numpy as np

    out = {}
    for stage in STAGES:
        mine = sorted((r for r in rows if r["stage"] == stage), key=lambda r: r["n_train"])
        if len(mine) < 2:
            continue
        images = np.asarray([r["images"] for r in mine], float)
        seconds = np.asarray([r["stage_s"] for r in mine], float)
        slope, intercept = np.polyfit(images, seconds, 1)
        out[stage] = {"stage_s_per_1k_images": 1000 * slope, "intercept_s": intercept,
                      "time_ratio": seconds[-1] / seconds[0], "images_ratio": images[-1] / images[0],
                      "peak_ratio": mine[-1]["peak_rss_mib"] / mine[0]["peak_rss_mib"],
                      **{f"{kind}_ratio": mine[-1][f"peak_{kind}_mib"] / mine[0][f"peak_{kind}_mib"]
                         for kind in ("anon", "file") if f"peak_{kind}_mib" in mine[0]}}
    return out


def print_table(result: dict[str, Any]) -> None:
    print(f"{'N train':>8} {'images':>7} {'stage':>6} {'stage s':>8} {'process s':>9} {'peak MiB':>9} "
          f"{'anon MiB':>9} {'file MiB':>9} {'import MiB':>10}")
    for r in result["rows"]:
        print(f"{r['n_train']:>8} {r['images']:>7} {r['stage']:>6} {r['stage_s']:>8.1f} {r['process_s']:>9.1f} "
              f"{r['peak_rss_mib']:>9.0f} {r.get('peak_anon_mib', float('nan')):>9.0f} "
              f"{r.get('peak_file_mib', float('nan')):>9.0f} {r['import_rss_mib']:>10.0f}")
    for stage, s in result["summary"].items():
        print(f"{stage:>6}: {s['stage_s_per_1k_images']:.2f} s per 1k images, time x{s['time_ratio']:.2f} "
              f"for images x{s['images_ratio']:.2f}, peak RSS x{s['peak_ratio']:.2f}, anon "
              f"x{s.get('anon_ratio', float('nan')):.2f}, file x{s.get('file_ratio', float('nan')):.2f}")
    print(f"load average (1/5/15 min) at the start {result['load_average']['start']}, "
          f"at the end {result['load_average']['end']}")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000,60000", help="train images per run, comma-separated")
    parser.add_argument("--input-size", type=int, default=64, help="pixels the backbone sees (Lite0: >= 32)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="images per backbone batch")
    parser.add_argument("--budget", default=None, help="the sweep's device_memory_budget, e.g. 64MiB")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_data_scaling.json"))
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget is not None:
        parse_bytes(args.budget)  # the one-line error before any child starts
    if args.stage:
        print(json.dumps(run_stage(args)))
        return None
    from experiments.sweep.bench_sweep import matmul_flops

    sizes = [int(s) for s in args.sizes.split(",")]
    load_start = list(os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="bench_data_scaling-"))
    rows = []
    try:
        for n in sizes:
            cache_dir = work / f"cache-{n}"
            for stage in STAGES:
                rows.append(child(stage, n, args, cache_dir, work / f"run-{n}"))
                print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(cache_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "matmul_gflops": matmul_flops() / 1e9, "input_size": args.input_size, "epochs": args.epochs,
              "held_out": HELD_OUT, "budget": args.budget,
              "load_average": {"start": load_start, "end": list(os.getloadavg())}, "rows": rows, "summary": summarise(rows)}
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
