"""Benchmark: which representation the heads should read (issue 24's step-table rows), on ELPV's default split.

Not a test: one run on real data, a printed table and ``experiments/results/bench_representation.json``. The
features are EfficientNet-Lite0's at 224 px with every tap cached (``--taps all``: each tap's per-channel mean and
std), one feature pass shared by every row. Each row is one sweep of pooled heads (``--pooling none``) on one
representation level (:mod:`jaxheads.sweep.representation`), on the fixed val split (``--folds none``), and its
recommended head (chosen on val) is scored on test once:

1. last-layer head — level ``last``: today's pooled features;
2. best single tap — the tap whose standardised vector gives the best ridge-probe val accuracy (λ chosen on val;
   test never read), then the same sweep at that level;
3. all taps — level ``all``: every tap concatenated, each feature standardised on the training rows;
4. Head2Toe selection — level ``select:F``: the fraction F of ``all``'s features with the largest ridge-weight row
   norms (fitted on the training rows).

The rows' sweeps are then merged on the representation factor (no more training) for the paired questions on val
("Representation: last vs all", "last vs <tap>": the backbone-depth question). Columns: 4-class test accuracy,
macro-F1 and binary defective-vs-functional accuracy, each with a 95 % percentile bootstrap interval over the test
examples (``bench_quality_parts.figures``); val accuracy (optimistic: chosen there); the row's own seconds on this
machine (building the level's features and its sweep; the shared feature pass is reported apart).

    python experiments/quality/bench_representation.py [--select 0.1] [--epochs 30] [--seeds 1]

JSON fields: ``rows`` (``name``, ``level``, ``what``, ``test`` {metric: {estimate, low, high, level}},
``val_accuracy``, ``recommended``, ``members``, ``seconds``), ``tap_screen`` (ridge val accuracy per tap),
``questions`` (the merged sweep's representation questions), ``feature_pass`` (seconds, images), ``goal``,
``sweep``, ``machine``, ``command``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jaxheads import distributed

distributed.split_cpu_host()  # before any JAX computation: the CLI's layout

import jax  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/ is not an installed package
from experiments.quality.bench_quality_parts import figures, setup_dataset  # noqa: E402
from jaxheads import ensembles, features, probe, stats  # noqa: E402
from jaxheads.features.split import FeatureSplit  # noqa: E402
from jaxheads.sweep import SweepSpec, representation, run_sweep, variants  # noqa: E402

BACKBONE = "efficientnet_lite0"
OUT = Path(__file__).resolve().parents[1] / "results" / "bench_representation.json"
GOAL = {"elpv_4class_accuracy": 0.835, "elpv_binary_accuracy": 0.884}


def head_sweep(epochs: int, seeds: int) -> SweepSpec:
    """Pooled heads one factor at a time around none · 512 · drop 0 (width 128, linear, dropout 0.5)."""
    return SweepSpec(pooling=("none",), widths=(512, 128), depth=(1, 0), dropout=(0.0, 0.5), learning_rate=(1e-3,),
                     batch_size=(64,), epochs=epochs, seeds=seeds, patience=8, folds=None, design="one_factor",
                     ridge_l2=())


def screen_taps(splits: dict[str, FeatureSplit], taps: tuple[str, ...], num_classes: int) -> dict[str, float]:
    """Ridge-probe val accuracy of every single tap (standardised on train, λ chosen on val; test not passed)."""
    out = {}
    for tap in taps:
        level = representation.level_splits(splits, tap, taps, folds=False, num_classes=num_classes)
        report = probe.ridge_probe(level["train"], level["val"], None, num_classes=num_classes)
        out[tap] = float(report["best"]["val"]["accuracy"])
    return out


def level_row(name: str, level: str, splits: dict, taps: tuple[str, ...], spec: SweepSpec,
              setup: Any) -> tuple[dict[str, Any], Any]:
    """One level's features and sweep, its recommended config's test scores kept for the end (scored once)."""
    t = time.perf_counter()
    ds = setup.ds
    level_splits = representation.level_splits(splits, level, taps, folds=False, num_classes=ds.num_classes)
    result = run_sweep(spec, level_splits, num_classes=ds.num_classes, task=ds.task, label_names=list(ds.classes))
    seconds = time.perf_counter() - t
    rec = ensembles.config_scores(result)[result.recommended]
    print(f"{name} ({level}): {seconds:.1f} s, width {level_splits['train'].pooled.shape[1]}, recommended "
          f"{result.recommended}", flush=True)
    return {"name": name, "level": level, "width": int(level_splits["train"].pooled.shape[1]),
            "recommended": result.recommended, "members": len(result.members), "seconds": seconds,
            "val_accuracy": stats.point_estimate(rec.val, result.predictions["val_labels"], "accuracy", result.task),
            "_test_scores": rec.test}, result


def machine() -> dict[str, Any]:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"processor": platform.processor(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "git_head": head,
            "loadavg_end": list(os.getloadavg())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    setup = setup_dataset("elpv", None, (0, 0, 0))
    source = features.backbone_source(BACKBONE)
    t = time.perf_counter()
    splits = features.extract_all(source, setup.ds, features.ExtractOptions(taps="all", batch_size=64))
    feature_s = time.perf_counter() - t
    print(f"feature pass (taps all): {feature_s:.1f} s", flush=True)
    taps, nc = tuple(source.taps), setup.ds.num_classes
    screen = screen_taps(splits, taps, nc)
    best_tap = max(screen, key=lambda k: screen[k])
    spec = head_sweep(args.epochs, args.seeds)
    rows, results = [], {}
    selection = f"select:{args.select:g}"
    for name, level in (("last-layer head", "last"), (f"best single tap ({best_tap}, by ridge val)", best_tap),
                        ("all taps", "all"), (f"Head2Toe selection ({args.select:g} of all)", selection)):
        row, results[level] = level_row(name, level, splits, taps, spec, setup)
        rows.append(row)
    merged = variants.merge_variants(results, "representation")
    for row in rows:
        row["test"] = figures(row.pop("_test_scores"), setup.test_labels, setup.defective)
    return {"rows": rows, "tap_screen": screen, "best_tap": best_tap,
            "questions": [{k: q[k] for k in ("title", "mean_a", "mean_b", "diff", "low", "high", "verdict")
                           if k in q} for q in merged.questions if q["axis"] == "representation"],
            "feature_pass": {"seconds": feature_s, "images": sum(len(s) for s in splits.values()),
                             "note": "0 s when the features and taps were already cached"},
            "goal": GOAL, "split": setup.split_note, "sweep": spec.to_dict(), "machine": machine(),
            "command": " ".join(["python", *sys.argv])}


def print_table(out: dict[str, Any]) -> None:
    def cell(f: dict) -> str:
        return f"{f['estimate']:.3f} [{f['low']:.3f}, {f['high']:.3f}]"

    print(f"{'row':44s} {'test acc [95% CI]':22s} {'macro-F1':22s} {'binary acc':22s} {'val':>6s} {'s':>6s}")
    for r in out["rows"]:
        t = r["test"]
        print(f"{r['name']:44s} {cell(t['accuracy']):22s} {cell(t['macro_f1']):22s} {cell(t['binary_accuracy']):22s}"
              f" {r['val_accuracy']:6.3f} {r['seconds']:6.0f}")
    for q in out["questions"]:
        print(f"{q['title']:44s} {q['diff']:+.3f} [{q['low']:+.3f}, {q['high']:+.3f}] {q['verdict']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--select", type=float, default=0.1, help="the kept fraction F of the selection row")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    out = run(args)
    print_table(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
