"""Benchmark: what K augmented views cost outside the backbone (issue 17, item 1).

Measured in one process (prints a table, writes JSON):
  (a) rendering one view of an ELPV image (decode + geometry + resize to 224 px): the plain view 0
      (``resize_center_crop``) against an augmented view under ``dihedral,crop`` and ``flip,crop,scale``, per image,
      alternated image by image so load on a shared machine hits both alike;
  (b) the sweep's training time with K = 1 and K = 4 views of synthetic pooled features of ELPV's train split's
      size (1574 x 1280, 4 classes, the main job's base head avg · 128): the epochs run the same steps, only the
      rows a batch gathers differ, so the ratio should be about 1.

The backbone runs once per view and image, so a K-view feature pass costs K times the plain one plus (a)'s extra
rendering; what K buys in accuracy is measured by experiments/quality/bench_quality.py.

    python experiments/sweep/bench_views.py --out experiments/results/bench_views.json [--images 300] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from jaxheads import data, distributed
from jaxheads.data import augment
from jaxheads.features.split import FeatureSplit


def render_times(images: int, size: int = 224) -> dict[str, float]:
    """Median seconds per image of each rendering, alternated image by image."""
    split = data.load_dataset("elpv").split("train")
    ids = data.load_dataset("elpv").image_ids("train")
    policies = {"plain": None, "dihedral,crop": ("dihedral", "crop"), "flip,crop,scale": ("flip", "crop", "scale")}
    seconds: dict[str, list[float]] = {name: [] for name in policies}
    for i in range(images):
        for name, policy in policies.items():
            t = time.perf_counter()
            image = data.load_image(split.sources[i], name=split.name(i))
            if policy is None:
                data.resize_center_crop(image, size)
            else:
                augment.augmented_view(image, size, ids[i], 1 + i % 3, policy)
            seconds[name].append(time.perf_counter() - t)
    return {name: float(np.median(s)) for name, s in seconds.items()}


def sweep_train_seconds(views: int, epochs: int) -> float:
    """The sweep's training seconds (the jitted epochs after the first) with ``views`` views of the train split."""
    from jaxheads.sweep import SweepSpec, run_sweep

    rng = np.random.default_rng(0)

    def split(n: int) -> FeatureSplit:
        y = rng.integers(0, 4, n)
        return FeatureSplit(labels=y, pooled=(rng.normal(size=(n, 1280)) + np.eye(4, 1280)[y]).astype(np.float32))

    train = split(1574)
    extra = tuple(FeatureSplit(train.labels, train.pooled + rng.normal(scale=0.1, size=train.pooled.shape)
                               .astype(np.float32)) for _ in range(views - 1))
    splits = {"train": FeatureSplit(train.labels, train.pooled, None, extra or None), "val": split(525)}
    spec = SweepSpec(pooling=("none",), widths=(128,), epochs=epochs, patience=None, ridge_l2=(), seeds=4)
    result = run_sweep(spec, splits, num_classes=4)
    return float(sum(g["timings"]["train_s"] for g in result.groups))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_views.json"))
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    distributed.split_cpu_host()
    render = render_times(args.images)
    runs = [(f"K={k}", sweep_train_seconds(k, args.epochs)) for k in (1, 4) * 3]  # alternated, best of three
    sweep = {name: min(s for n, s in runs if n == name) for name, _ in runs}
    print(f"{'rendering (median per image)':32} {'ms':>8} {'x plain':>8}")
    for name, s in render.items():
        print(f"{name:32} {1e3 * s:8.2f} {s / render['plain']:8.2f}")
    print(f"{'sweep training, 4 members':32} {'s':>8} {'x K=1':>8}")
    for name, s in sweep.items():
        print(f"{name:32} {s:8.2f} {s / sweep['K=1']:8.2f}")
    machine = f"{os.cpu_count()}-core {platform.machine()} {platform.processor()}".strip()
    out = {"machine": machine, "images": args.images, "epochs": args.epochs,
           "render_s_per_image": render, "render_ratio": {k: v / render["plain"] for k, v in render.items()},
           "sweep_train_s": sweep, "sweep_ratio_k4_over_k1": sweep["K=4"] / sweep["K=1"],
           "command": "python experiments/sweep/bench_views.py --out experiments/results/bench_views.json"}
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
