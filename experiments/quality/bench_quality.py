"""Benchmark: from the answer to the best model, step by step, on ELPV (and Fashion-MNIST), with intervals.

Not a test: one run on real data, a printed table and ``experiments/results/bench_quality.json``
(``bench_quality_fashion.json`` with ``--dataset fashion_mnist``). Issue 17's step table; each step adds one thing
to the one before, every choice is made on val only, and test is scored at the end, once per row:

1. ridge probe — closed-form ridge on the pooled features at the backbone's size, λ chosen on val;
2. best frozen head — a small grid (pooling avg|max × width 128|512 × dropout 0|0.5, one hidden layer; lr 1e-3,
   batch 64, 30 epochs, patience 8; ``--seeds`` replicas) on the same features, the sweep's recommended config,
   scored as one member (mean over seeds, seeds and examples resampled): the head ``jaxheads sweep`` saves;
3. + augmented views — the same grid where every training example reads one of K cached views per epoch
   (``features.ExtractOptions(views=K, augment=...)``; ``--views``, ``--augment``); kept for the next steps only if
   its recommended head beats step 2's on val;
4. + input size — the same grid (with the views if kept) also on features at the second size (ELPV: 300 px, its cells'
   own size; Fashion-MNIST: 96 vs 64 px), both sweeps merged (``jaxheads.sweep.sizes``): the recommended config
   over both sizes, and the "Input size" question's paired verdict;
5. + ensemble — greedy ensemble selection (Caruana et al. 2004) over the merged sweep's configs (top-k beside);
6. + fine-tune — the step-4 head with its top backbone block at its input size (``FinetuneConfig`` defaults:
   warm-up + cosine, EMA, label smoothing, frozen BN, flips), ``--ft-epochs`` epochs, run only if one epoch is
   projected within ``--ft-epoch-budget-s`` from a timed subset.

Columns: 4-class test accuracy and macro-F1 and (ELPV) the binary defective-vs-functional accuracy (a cell is
defective when its defect probability is >= 0.5: ``likely_defective`` or ``defective``; a model calls it defective
when its probabilities of those classes sum to more than the others'), each with a 95 % percentile bootstrap
interval over the test examples (and the seeds for a per-member row); val accuracy (optimistic: chosen there);
the step's own wall time on this machine (its feature pass and its sweep; about 0 s for features already
cached). Published ELPV reference points (other splits and protocols, indicative only): 4-class 83.5 %
(lightweight CNN, Hindawi CIN 2023), binary 88.4 % (Deitsch et al. 2019, fine-tuned VGG19).

    python experiments/quality/bench_quality.py [--dataset elpv|fashion_mnist] [--seeds 3] [--views 4] [--augment ...]
        [--ft-epochs 4] [--ft-epoch-budget-s 240] [--skip-finetune] [--subsample 3000 1000 2000]

JSON fields: ``rows`` (``step``, ``name``, ``what``, ``test`` {metric: {estimate, low, high, level}},
``val_accuracy``, ``models``, ``seconds``, ``note``), ``input_size_question``, ``comparisons``, ``finetune``,
``sweeps`` (per step: recommended config, input size, seconds), ``feature_passes`` (seconds, images, img/s),
``references``, ``not_run``, ``machine``, ``command``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/ is not an installed package
from experiments.quality.bench_quality_parts import (DatasetSetup, comparison_dict, figures, finetune_row,  # noqa: E402
                                             print_table, ridge_row, setup_dataset)
from experiments.sweep.bench_sweep import matmul_flops  # noqa: E402
import jaxheads  # noqa: E402
from jaxheads import ensembles, features, stats  # noqa: E402
from jaxheads.sweep import SweepResult, SweepSpec, run_sweep, variants  # noqa: E402

BACKBONE = "efficientnet_lite0"
GRID = {"pooling": ("avg", "max"), "widths": (128, 512), "depth": (1,), "dropout": (0.0, 0.5),
        "learning_rate": (1e-3,), "batch_size": (64,), "epochs": 30, "patience": 8, "ridge_l2": ()}
REFERENCES = {
    "accuracy": {"value": 0.835, "source": "lightweight CNN, Hindawi Computational Intelligence and Neuroscience "
                                           "2023 (ELPV, 4 classes)"},
    "binary_accuracy": {"value": 0.884, "source": "Deitsch et al. 2019, fine-tuned VGG19 (ELPV, defective vs "
                                                  "functional)"},
}


def views_available() -> bool:
    return "views" in {field.name for field in dataclasses.fields(features.ExtractOptions)}


def timed_features(setup: DatasetSetup, size: int, views: int, passes: list[dict]) -> tuple[dict, float]:
    """The splits' features at ``size`` px (with ``views`` K > 1: K views of train), and the pass's seconds."""
    source = features.backbone_source(BACKBONE, input_size=size)
    kwargs = {"views": views, "augment": setup.augment} if views > 1 else {}
    t = time.perf_counter()
    splits = features.extract_all(source, setup.ds, features.ExtractOptions(need_maps=True, **kwargs))
    seconds = time.perf_counter() - t
    images = sum(len(s) for s in splits.values()) + (views - 1) * len(splits["train"])
    passes.append({"size": size, "views": views, "seconds": seconds, "images_incl_views": images,
                   "note": "features already cached count as 0 s" if seconds < 5 else ""})
    print(f"features {size} px, {views} view(s): {seconds:.1f} s", flush=True)
    return splits, seconds


def timed_sweep(spec: SweepSpec, splits: dict, setup: DatasetSetup) -> tuple[SweepResult, float]:
    t = time.perf_counter()
    result = run_sweep(spec, splits, num_classes=setup.ds.num_classes, task=setup.ds.task,
                       label_names=list(setup.ds.classes))
    seconds = time.perf_counter() - t
    print(f"sweep: {seconds:.1f} s, {len(result.members)} members, recommended {result.recommended}", flush=True)
    return result, seconds


def head_row(step: str, name: str, result: SweepResult, setup: DatasetSetup, seconds: float, **extra: Any) -> dict:
    """A row for a sweep's recommended config, scored as one member (its seeds' mean metric)."""
    rec = ensembles.config_scores(result)[result.recommended]
    spec = result.members[rec.members[0]]["spec"]
    head = spec["head"]
    size = spec.get("input_size", extra.pop("input_size", None))
    return {"step": step, "name": name, "what": f"recommended config {result.recommended}: pooling "
            f"{head['pooling']}, hidden {head['hidden']}, dropout {head['dropout']}, {size} px; one member, mean "
            f"over {rec.test.shape[0]} seeds", "_test_scores": rec.test, "input_size": size,
            "val_accuracy": stats.point_estimate(rec.val, result.predictions["val_labels"], "accuracy",
                                                 result.task), "models": 1, "seconds": seconds, **extra}


def ensemble_rows(result: SweepResult, top_k: int, steps: int, seconds_before: float) -> tuple[list[dict], dict]:
    t = time.perf_counter()
    greedy = ensembles.greedy_ensemble(result, steps=steps, metrics=("accuracy", "macro_f1"))
    top = ensembles.top_k_ensemble(result, top_k, metrics=("accuracy", "macro_f1"))
    seconds = time.perf_counter() - t
    scores = ensembles.config_scores(result)
    rows, comparisons = [], {}
    for step, name, report in (("+ ensemble", "greedy ensemble", greedy), ("(beside)", f"top-{top_k} ensemble",
                                                                           top)):
        acc = report.vs_single["accuracy"]
        rows.append({"step": step, "name": name, "what": f"{report.method} over both sizes' configs: "
                     f"{list(report.configs)} weights {[round(w, 3) for w in report.weights]}",
                     "_test_scores": report.test_probs[None], "val_accuracy": report.val,
                     "models": sum(len(scores[c].members) for c in report.configs),
                     "seconds": seconds_before + seconds,
                     "note": f"vs the best single config (seeds averaged) on test: accuracy {acc.diff:+.4f} "
                             f"[{acc.low:+.4f}, {acc.high:+.4f}] ({acc.verdict})"})
        comparisons[name] = {"vs": "best single config by val, seeds averaged", **{
            m: comparison_dict(c) for m, c in report.vs_single.items()}, "report": report.to_dict()}
    return rows, comparisons


def size_question(merged: SweepResult) -> dict | None:
    found = [q for q in merged.questions if q["axis"] == "input_size"]
    return found[0] if found else None


def run_steps(args: argparse.Namespace, setup: DatasetSetup) -> dict[str, Any]:
    """Steps 1-5 (features, sweeps, ensembles); the fine-tune is :func:`finetune_row`."""
    passes: list[dict] = []
    spec = SweepSpec(**GRID, seeds=args.seeds, folds=None)
    base, other = setup.sizes
    plain, plain_s = timed_features(setup, base, 1, passes)
    rows = [ridge_row(plain, setup.ds.num_classes, plain_s)]
    frozen, frozen_s = timed_sweep(spec, plain, setup)
    rows.append(head_row("best frozen head", "best frozen head", frozen, setup, plain_s + frozen_s, input_size=base))
    views = args.views if views_available() else 1
    not_run = [] if views > 1 else ["+ augmented views: not run: views not available (features.ExtractOptions has "
                                    "no views field)"]
    at_base, viewed_s, sweep_s = frozen, 0.0, 0.0
    if views > 1:
        viewed, viewed_s = timed_features(setup, base, views, passes)
        with_views, sweep_s = timed_sweep(spec, viewed, setup)
        row = head_row("+ augmented views", f"+ {views} augmented views", with_views, setup, viewed_s + sweep_s,
                       input_size=base)
        # A step is kept for the next ones only if it beats the previous step on val (test is not looked at).
        kept = row["val_accuracy"] > rows[-1]["val_accuracy"]
        row["note"] = (f"augment {','.join(setup.augment)}; a random view per example per epoch; "
                       + ("kept (better on val)" if kept else "not kept for the next steps (not better on val)"))
        rows.append(row)
        at_base, views = (with_views, views) if kept else (frozen, 1)
    at_other_features, other_feat_s = timed_features(setup, other, views, passes)
    at_other, other_sweep_s = timed_sweep(spec, at_other_features, setup)
    merged = variants.merge_variants({base: at_base, other: at_other}, "input_size")
    question = size_question(merged)
    step_s = other_feat_s + other_sweep_s  # this step's own cost: the second size's features and sweep
    verdict = "" if question is None else (f"{question['title']}: {question['diff']:+.4f} [{question['low']:+.4f}, "
                                           f"{question['high']:+.4f}] on val, {question['verdict']}")
    rows.append(head_row("+ input size", f"+ input size ({base} or {other} px)", merged, setup, step_s,
                         note=verdict))
    ens_rows, comparisons = ensemble_rows(merged, args.top_k, args.greedy_steps, 0.0)
    rows += ens_rows
    sweeps = {name: {"recommended": r.recommended, "members": len(r.members), "seconds": r.timings.get("total_s")}
              for name, r in (("frozen", frozen), ("base_for_size_step", at_base), ("other_size", at_other))}
    sweeps["merged"] = {"recommended": merged.recommended, "input_size": merged.input_size(),
                        "leaderboard": [{"config": r["config"], "val": r["val_interval"]} for r in merged.leaderboard]}
    return {"rows": rows, "merged": merged, "splits": {base: at_base, other: at_other_features}, "passes": passes,
            "question": question, "comparisons": comparisons, "sweeps": sweeps, "not_run": not_run,
            "spec": spec.to_dict(), "views_in_size_step": views}


def score_rows(rows: list[dict], setup: DatasetSetup) -> None:
    """Test figures of every row, computed here at the end (each row's model was chosen on val only)."""
    for row in rows:
        scores = row.pop("_test_scores", None)
        row["test"] = None if scores is None else figures(scores, setup.test_labels, setup.defective)


def machine(mm_before: float) -> dict[str, Any]:
    dirty = subprocess.run(["git", "status", "--short", "--", "src"], capture_output=True, text=True).stdout.split()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"processor": platform.processor(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
            "jaxheads": getattr(jaxheads, "__version__", None), "matmul_gflops_before": mm_before,
            "loadavg_end": list(os.getloadavg()), "git_head": head, "src_files_uncommitted": dirty[1::2]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("elpv", "fashion_mnist"), default="elpv")
    parser.add_argument("--seeds", type=int, default=3, help="replicas of every config")
    parser.add_argument("--views", type=int, default=4, help="K cached views of every training image")
    parser.add_argument("--augment", default=None, help="view policy (default: dihedral,crop on ELPV, flip,crop "
                        "on Fashion-MNIST)")
    parser.add_argument("--subsample", type=int, nargs=3, default=(3000, 1000, 2000), metavar=("TRAIN", "VAL",
                        "TEST"), help="Fashion-MNIST: stratified examples per split")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--greedy-steps", type=int, default=25)
    parser.add_argument("--ft-epochs", type=int, default=4, help="fine-tune epochs (FinetuneConfig.epochs)")
    parser.add_argument("--ft-epoch-budget-s", type=float, default=240.0,
                        help="fine-tune only if one projected full epoch takes at most this many seconds")
    parser.add_argument("--ft-probe-images", type=int, nargs=2, default=(96, 64), metavar=("TRAIN", "VAL"))
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--work-dir", default=None, help="saved head and fine-tune (default runs/bench_quality"
                        "[_fashion])")
    parser.add_argument("--out", default=None, help="default experiments/results/bench_quality[_fashion].json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    suffix = "" if args.dataset == "elpv" else "_fashion"
    out_path = Path(args.out or f"experiments/results/bench_quality{suffix}.json")
    work = Path(args.work_dir or f"runs/bench_quality{suffix}")
    mm_before = matmul_flops(1024, 5) / 1e9
    setup = setup_dataset(args.dataset, args.augment, args.subsample)
    steps = run_steps(args, setup)
    rows = steps["rows"]
    ft_row, ft = finetune_row(args, setup, steps["merged"], work, BACKBONE)
    rows.append(ft_row)
    score_rows(rows, setup)
    print_table(rows, REFERENCES if setup.defective is not None else {})
    out = {
        "benchmark": "bench_quality", "dataset": setup.ds.name, "backbone": BACKBONE, "split": setup.split_note,
        "splits": {k: len(v) for k, v in setup.ds.splits.items()}, "classes": list(setup.ds.classes),
        "input_sizes": list(setup.sizes), "views": args.views,
        "views_in_size_step": steps["views_in_size_step"], "augment": list(setup.augment),
        "rows": rows, "input_size_question": steps["question"], "comparisons": steps["comparisons"],
        "finetune": ft, "sweeps": steps["sweeps"], "sweep_spec": steps["spec"], "feature_passes": steps["passes"],
        "references": REFERENCES if setup.defective is not None else None, "not_run": steps["not_run"],
        "machine": machine(mm_before),
        "command": "python experiments/quality/bench_quality.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
            for k, v in vars(args).items() if v not in (None, False) and k not in ("out", "work_dir")),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
