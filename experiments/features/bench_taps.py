"""Benchmark: what ``--taps all`` costs over ``--taps last`` in the feature pass (EfficientNet-Lite0 at 224 px, its
shipped ImageNet weights, the first ELPV training images): seconds per pass and cache bytes per image.

    python experiments/features/bench_taps.py [--images 32] [--rounds 3] [--backbone efficientnet_lite0]
        [--out experiments/results/bench_taps.json]

Each round runs ``features.extract_all`` once per mode into a fresh cache directory, the modes alternating (so load
from other users of the machine hits both alike); round 0 compiles each mode's forward and is reported apart, the
later rounds reuse the compiled programs. The host is split into one JAX device per core as the CLI does. Bytes are
the cache directory's files after a pass, by kind (``pooled``, ``taps``, ``kept``, plan and meta), per image.

JSON fields: ``modes`` (per mode: ``first_s`` (round 0, compile included), ``seconds`` (the later rounds),
``best_s``, ``images_per_s`` (of the best), ``bytes_per_image`` by kind and ``total``), ``taps`` (the names cached
by ``all``), ``tap_floats_per_image``, ``ratio`` (all / last: best seconds, total bytes), platform and versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jaxheads import distributed

distributed.split_cpu_host()  # before any JAX computation: the CLI's layout

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxheads import data, features  # noqa: E402
from jaxheads.data import sources as loaders  # noqa: E402

MODES = ("last", "all")


def elpv_head(count: int) -> data.Dataset:
    """The first ``count`` ELPV training images as a one-split dataset."""
    elpv = loaders.elpv()
    train = elpv.split("train").subset(np.arange(count))
    return data.Dataset(f"elpv-first{count}", elpv.classes, elpv.task, {"train": train})


def bytes_by_kind(cache: Path, images: int) -> dict[str, float]:
    """The cache's files after a pass, per image, by kind (a shard file's kind is its second suffix)."""
    out: dict[str, float] = {}
    for path in cache.rglob("*"):
        if path.is_file():
            kind = path.suffixes[-2].lstrip(".") if path.parent.name == "shards" else "plan+meta"
            out[kind] = out.get(kind, 0.0) + path.stat().st_size / images
    out["total"] = sum(out.values())
    return out


def one_pass(source: features.BackboneSource, ds: data.Dataset, mode: str) -> tuple[float, dict[str, float], Any]:
    """(seconds, bytes per image by kind, the train split) of one pass into a fresh cache."""
    with tempfile.TemporaryDirectory(prefix=f"bench-taps-{mode}-") as cache:
        options = features.ExtractOptions(cache_dir=cache, batch_size=32, taps=mode)
        start = time.perf_counter()
        split = features.extract_all(source, ds, options)["train"]
        seconds = time.perf_counter() - start
        return seconds, bytes_by_kind(Path(cache), len(ds.split("train"))), split


def run(args: argparse.Namespace) -> dict[str, Any]:
    ds = elpv_head(args.images)
    source = features.backbone_source(args.backbone)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    sizes: dict[str, dict[str, float]] = {}
    splits: dict[str, Any] = {}
    for r in range(args.rounds + 1):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            seconds, sizes[mode], splits[mode] = one_pass(source, ds, mode)
            times[mode].append(seconds)
            print(f"round {r} {mode}: {seconds:.2f} s", flush=True)
    assert np.array_equal(splits["last"].pooled, splits["all"].pooled), "the tapped pass changed the last features"
    modes = {m: {"first_s": t[0], "seconds": t[1:], "best_s": min(t[1:]), "images_per_s": args.images / min(t[1:]),
                 "bytes_per_image": sizes[m]} for m, t in times.items()}
    taps = splits["all"].taps
    return {"backbone": args.backbone, "images": args.images, "rounds": args.rounds, "modes": modes,
            "taps": list(taps), "tap_floats_per_image": int(sum(v.shape[1] for v in taps.values())),
            "ratio": {"best_s": modes["all"]["best_s"] / modes["last"]["best_s"],
                      "bytes": sizes["all"]["total"] / sizes["last"]["total"]},
            "platform": platform.platform(), "processor": platform.processor(), "devices": jax.device_count(),
            "python": sys.version.split()[0], "jax": jax.__version__}


def print_table(record: dict[str, Any]) -> None:
    print(f"\n{record['backbone']}, {record['images']} ELPV images, {record['devices']} devices; "
          f"{len(record['taps'])} taps, {record['tap_floats_per_image']} tap floats per image")
    print(f"{'--taps':<8} {'first s':>8} {'best s':>8} {'img/s':>8} {'pooled B':>9} {'taps B':>9} {'total B/img':>12}")
    for mode, m in record["modes"].items():
        b = m["bytes_per_image"]
        print(f"{mode:<8} {m['first_s']:>8.2f} {m['best_s']:>8.2f} {m['images_per_s']:>8.1f} "
              f"{b.get('pooled', 0):>9.0f} {b.get('taps', 0):>9.0f} {b['total']:>12.0f}")
    print(f"all / last: time x{record['ratio']['best_s']:.2f}, bytes x{record['ratio']['bytes']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the compiling one")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "bench_taps.json")
    args = parser.parse_args()
    record = run(args)
    print_table(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
