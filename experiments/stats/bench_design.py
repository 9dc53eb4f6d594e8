"""Benchmark: which sweep design gives the tightest head-question intervals per minute on the 2-core CPU box?

The main job (``jaxheads sweep``) has to answer its head questions in about 5 minutes on the 2-core dev box. The
issue lists four ways to spend that budget: one factor at a time around a base head, a fractional factorial,
successive halving, more seeds on fewer cells. This script times the candidates that the engine can run today
(``SweepSpec.design`` "grid" | "one_factor", ``folds``, ``seeds``) on the real data and measures how wide the
questions' 95% intervals come out.

Data: ELPV (``data.load_dataset("elpv", seed=0)``), EfficientNet-Lite0 features from the cache (as ``job.py``
gets them). Only the cheap pooled-input questions, on four axes of two levels each: pooling avg|max, width
128|512, depth 1|2, dropout 0|0.5 (no flatten / conv / BN: those cost far more on a CPU). Training: 30 epochs,
patience 8, batch 64, lr 1e-3, no ridge baseline. Designs (the first level of every axis is the base)::

    a  grid        no folds  seeds 2   16 configs x 2       = 32 members  (the old default)
    b  one_factor  folds 5   seeds 1    5 configs x 5       = 25 members  (the main job's design now)
    c  one_factor  no folds  seeds 3    5 configs x 3       = 15 members
    d  one_factor  folds 5   seeds 2    5 configs x 5 x 2   = 50 members
    e  grid        folds 5   seeds 1   16 configs x 5       = 80 members  (skipped when over --budget-s)

Per design: the wall seconds of ``run_sweep`` (compilation included: it is part of what a run costs), the
members trained, every question's interval width (high - low of the paired bootstrap's 95% interval of B - A)
and verdict, and two summaries: ``mean_width`` (mean over the four questions) and ``width_x_sqrt_min`` (mean
width x sqrt(wall minutes): the width the design would reach at equal time if width shrinks as 1/sqrt(effort);
lower is better). Also the mean width of the configs' own val intervals, and the matmul rate just before the
design ran (the box is shared; read the wall seconds next to it).

Not like for like:

- Without folds the interval is conditional on the one fixed training set: it covers seed and evaluation-example
  noise but not fold (training-set) noise, so a no-fold design's width is optimistic about what a new training
  set would give. With folds every pooled train+val row is validated once (about 4x the evaluation rows) and the
  fold-to-fold variation is inside the interval.
- The grid's questions pool every matched pair (8 per axis: the effect averaged over the other factors' levels);
  one_factor's answer one pair at the base (the effect at avg · 128 · depth 1 · drop 0). Different estimands.

Every design runs once (a single run on a shared, noisy machine: wall times vary by up to ~3x with load).

    python experiments/stats/bench_design.py [--designs abcde] [--budget-s 600] [--out experiments/results/bench_design.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/ is not an installed package
from experiments.sweep.bench_sweep import matmul_flops  # noqa: E402
import jaxheads  # noqa: E402
from jaxheads import data, features  # noqa: E402
from jaxheads.sweep import SweepSpec, run_sweep  # noqa: E402

DATASET, BACKBONE = "elpv", "efficientnet_lite0"
AXES = {"pooling": ("avg", "max"), "widths": (128, 512), "depth": (1, 2), "dropout": (0.0, 0.5)}
TRAINING = {"epochs": 30, "patience": 8, "batch_size": (64,), "learning_rate": (1e-3,), "ridge_l2": ()}
QUESTION_COLUMNS = ("pooling", "width", "depth", "dropout")  # the questions' axis names (jaxheads.factors)
DESIGNS = {
    "a": {"design": "grid", "folds": None, "seeds": 2, "note": "full grid, fixed val split, 2 seeds (the old default)"},
    "b": {"design": "one_factor", "folds": 5, "seeds": 1, "note": "one factor at a time, 5 folds, 1 seed (main job now)"},
    "c": {"design": "one_factor", "folds": None, "seeds": 3, "note": "one factor at a time, fixed val split, 3 seeds"},
    "d": {"design": "one_factor", "folds": 5, "seeds": 2, "note": "one factor at a time, 5 folds, 2 seeds"},
    "e": {"design": "grid", "folds": 5, "seeds": 1, "note": "full grid, 5 folds, 1 seed"},
}
COVERAGE_NOTE = ("Designs without folds (a, c) answer conditionally on the one fixed training set: their intervals "
                 "cover seed and evaluation-example noise but not fold (training-set) noise, so their widths are "
                 "optimistic and not like for like with the fold designs (b, d, e), whose intervals include the "
                 "fold-to-fold variation and validate on every train+val row (about 4x the evaluation rows). The "
                 "grid's questions (a, e) pool 8 matched pairs per axis (the effect averaged over the other "
                 "factors); one_factor's (b, c, d) compare one pair at the base avg · 128 · depth 1 · drop 0.")
NOISE_NOTE = ("Each design ran once, one after another, on a shared 2-core machine whose speed varies by up to ~3x "
              "with other users' load: wall seconds (and so width_x_sqrt_min) carry that noise; the matmul rate "
              "taken just before each design is recorded beside it.")


def sweep_spec(design: dict) -> SweepSpec:
    return SweepSpec(**AXES, **TRAINING, design=design["design"], folds=design["folds"], seeds=design["seeds"])


def one_design(key: str, splits: dict, ds: data.Dataset) -> dict:
    """One timed ``run_sweep`` of design ``key`` and the widths of its answers."""
    design = DESIGNS[key]
    spec = sweep_spec(design)
    mm = matmul_flops(1024, 5) / 1e9
    load = os.getloadavg()
    t = time.perf_counter()
    result = run_sweep(spec, splits, num_classes=ds.num_classes, task=ds.task, label_names=list(ds.classes))
    wall = time.perf_counter() - t
    questions = [{"axis": q["axis"], "title": q["title"], "diff": q["diff"], "low": q["low"], "high": q["high"],
                  "width": q["high"] - q["low"], "p_b_better": q["p_b_better"], "verdict": q["verdict"],
                  "n_pairs": q["n_pairs"]} for q in result.questions]
    widths = [q["width"] for q in questions]
    mean_width = float(np.mean(widths)) if widths else float("nan")
    config_widths = [r["val_interval"]["high"] - r["val_interval"]["low"] for r in result.leaderboard]
    return {
        "id": key, **design, "members": len(result.members), "configs": len(result.leaderboard),
        "groups": len(result.groups), "eval_rows": len(result.predictions["val_labels"]),
        "wall_s": wall, "matmul_gflops_before": mm, "loadavg_before": list(load),
        "questions": questions, "mean_width": mean_width,
        "width_x_sqrt_min": mean_width * math.sqrt(wall / 60.0),
        "mean_config_interval_width": float(np.mean(config_widths)),
        "metric": result.metric, "recommended": result.recommended,
        "epochs_run_mean": float(np.mean([m.get("epochs_run", np.nan) for m in result.members]))
        if result.members and "epochs_run" in result.members[0] else None,
    }


def print_table(rows: list[dict]) -> None:
    axes = QUESTION_COLUMNS
    head = (f"{'':2} {'design':<11}{'folds':>6}{'seeds':>6}{'members':>8}{'wall s':>8}{'GF/s':>6}"
            + "".join(f"{a[:7]:>9}" for a in axes) + f"{'mean w':>8}{'w*sqrt(min)':>12}{'cfg w':>7}")
    print(head)
    for r in rows:
        by_axis = {q["axis"]: q for q in r["questions"]}
        cells = "".join(f"{by_axis[a]['width']:>9.4f}" if a in by_axis else f"{'-':>9}" for a in axes)
        print(f"{r['id']:2} {r['design']:<11}"
              f"{r['folds'] or '-':>6}{r['seeds']:>6}{r['members']:>8}{r['wall_s']:>8.1f}"
              f"{r['matmul_gflops_before']:>6.0f}{cells}{r['mean_width']:>8.4f}{r['width_x_sqrt_min']:>12.4f}"
              f"{r['mean_config_interval_width']:>7.4f}")
    print("\nverdicts (B - A, 95% interval):")
    for r in rows:
        for q in r["questions"]:
            print(f"  {r['id']}  {q['title']:<34} {q['diff']:+.4f} [{q['low']:+.4f}, {q['high']:+.4f}]"
                  f"  {q['verdict']}  (pairs {q['n_pairs']})")


def recommend(rows: list[dict]) -> str:
    """The fold design with the lowest width x sqrt(minutes), with the figures that justify it. Only fold designs
    compete: a no-fold design's narrower interval leaves out the training-set noise (COVERAGE_NOTE)."""
    fold_rows = [r for r in rows if r["folds"]]
    if not fold_rows:
        return "no fold design ran: nothing like for like to recommend"
    best = min(fold_rows, key=lambda r: r["width_x_sqrt_min"])
    others = "; ".join(f"{r['id']} {r['width_x_sqrt_min']:.4f} (mean width {r['mean_width']:.4f}, {r['wall_s']:.0f} s"
                       f"{', no folds: not like for like' if not r['folds'] else ''})" for r in rows if r is not best)
    return (f"design {best['id']} ({best['note']}): the lowest width x sqrt(min) among the designs whose intervals "
            f"cover fold (training-set) noise, {best['width_x_sqrt_min']:.4f} (mean question width "
            f"{best['mean_width']:.4f} in {best['wall_s']:.0f} s, {best['members']} members). Others: {others}. "
            f"No-fold designs are left out of the choice: their narrower intervals omit training-set noise. "
            f"One run per design on a shared machine: differences of less than ~1.5x in wall time are within its "
            f"load noise.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--designs", default="abcde", help="which designs to run, in order (letters a-e)")
    parser.add_argument("--budget-s", type=float, default=600.0,
                        help="skip design e when the designs before it took longer than this")
    parser.add_argument("--out", default="experiments/results/bench_design.json")
    args = parser.parse_args()

    t0 = time.perf_counter()
    ds = data.load_dataset(DATASET, seed=0)
    source = features.backbone_source(BACKBONE)
    splits = features.extract_all(source, ds, features.ExtractOptions(need_maps=True))
    features_s = time.perf_counter() - t0
    print(f"features: {features_s:.1f} s; splits " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
          flush=True)

    rows, skipped = [], []
    spent = 0.0
    for key in args.designs:
        if key == "e" and spent > args.budget_s:
            skipped.append({"id": key, "why": f"designs before it took {spent:.0f} s > --budget-s"})
            print(f"design e skipped: {spent:.0f} s spent", flush=True)
            continue
        row = one_design(key, splits, ds)
        spent += row["wall_s"]
        rows.append(row)
        print(f"design {key}: {row['wall_s']:.1f} s, {row['members']} members, mean width {row['mean_width']:.4f}, "
              f"w*sqrt(min) {row['width_x_sqrt_min']:.4f} (matmul {row['matmul_gflops_before']:.0f} GF/s)",
              flush=True)

    print()
    print_table(rows)
    recommendation = recommend(rows)
    print(f"\nnote: {COVERAGE_NOTE}\nnote: {NOISE_NOTE}\nrecommendation: {recommendation}")

    out = {
        "benchmark": "bench_design",
        "machine": {"processor": platform.processor(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
                    "jaxheads": getattr(jaxheads, "__version__", None)},
        "config": {"dataset": DATASET, "backbone": BACKBONE, "axes": AXES, "training": TRAINING,
                   "designs": DESIGNS, "order": args.designs, "budget_s": args.budget_s,
                   "splits": {k: len(v) for k, v in splits.items()}, "features_s": features_s},
        "fields": {"wall_s": "seconds of run_sweep (compilation included)",
                   "width": "high - low of the question's 95% paired-bootstrap interval of B - A",
                   "mean_width": "mean question width", "width_x_sqrt_min": "mean_width * sqrt(wall_s / 60); lower "
                   "is better (the width at equal time if width ~ 1/sqrt(effort))",
                   "mean_config_interval_width": "mean width of the leaderboard rows' val intervals",
                   "eval_rows": "rows the intervals are computed on (train+val pooled with folds, val without)"},
        "notes": {"coverage": COVERAGE_NOTE, "noise": NOISE_NOTE},
        "designs": rows, "skipped": skipped, "recommendation": recommendation,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
