"""Benchmark: how good is the model jaxheads hands out on ELPV, step by step, with intervals?

Not a test: one run on the real data, a printed table and ``experiments/results/bench_quality.json``.

Data: ELPV with the default split (``data.load_dataset("elpv", seed=0)``: 60 / 20 / 20 stratified by defect
level and cell type), EfficientNet-Lite0 features from the cache (``./checkpoints/features``), as ``job.py`` gets
them. Each row is one model, chosen on val only and scored once on the test split:

1. ridge probe — closed-form ridge regression on the pooled features, λ chosen on val (``jaxheads.probe``);
2. best frozen head — a small grid (pooling avg|max × width 128|512 × dropout 0|0.5, one hidden layer; lr 1e-3,
   batch 64, 30 epochs, patience 8; ``--seeds`` replicas, ``--folds`` for cross-validation), the sweep's
   recommended config; its figure is that of one member (the mean over seeds of a member's metric, seeds and
   examples resampled), i.e. the head ``jaxheads sweep`` saves;
3. top config, seeds averaged — the best config by val with its replicas' probabilities averaged (the baseline of
   the ensembles' paired comparison);
4. top-k ensemble and 5. greedy ensemble selection (Caruana et al. 2004) over the grid's configs
   (``jaxheads.ensembles``);
6. head soup — the recommended config's replicas averaged in weight space;
7. fine-tune — the recommended head with the top backbone block, ``FinetuneConfig`` defaults (warm-up + cosine,
   EMA, label smoothing, frozen BN, crop + flip), ``--ft-epochs`` epochs. It runs only if one epoch fits
   ``--ft-epoch-budget-s``: one epoch on a subset is timed first and projected to the full train + val split;
   otherwise the row records that and why.

Columns: 4-class test accuracy and macro-F1, and the binary defective-vs-functional accuracy (a cell is defective
when its defect probability is >= 0.5, i.e. ``likely_defective`` or ``defective``; a model calls it defective when
its probabilities of those two classes sum to more than those of the other two — for the ridge probe, its scores),
each with a 95 % percentile bootstrap interval over the test examples (and over the seeds for a per-member row).
Published reference points printed beside (different splits and protocols, so indicative only): 4-class accuracy
83.5 % (lightweight CNN, Hindawi Computational Intelligence and Neuroscience 2023), binary 88.4 % (Deitsch et al.
2019, fine-tuned VGG19).

Not measured here (they need the feature cache another engineer is rewriting): an augmented-views feature cache,
the input size as a sweep axis, and concatenated backbones.

    python experiments/bench_quality.py [--seeds 3] [--folds K] [--top-k 3] [--ft-epochs 10]
        [--ft-epoch-budget-s 240] [--skip-finetune] [--work-dir runs/bench_quality]
        [--out experiments/results/bench_quality.json]

JSON fields: ``rows`` (one per model: ``name``, ``what``, ``test`` {accuracy, macro_f1, binary_accuracy: {estimate,
low, high, level}}, ``val_accuracy`` (optimistic where chosen on val), ``models`` (predictors averaged),
``seconds``), ``comparisons`` (paired test differences: ensembles vs the top config, soup vs its members'
probability average, fine-tune vs frozen), ``finetune`` (timing probe, config, history, gain, or why skipped),
``sweep`` (spec, leaderboard summary, recommended config, seconds), ``references``, ``not_done``, ``machine``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/ is not an installed package
from experiments.bench_sweep import matmul_flops  # noqa: E402
import jaxheads  # noqa: E402
from jaxheads import data, ensembles, features, finetuning, heads_io, probe, stats  # noqa: E402
from jaxheads.sweep import SweepSpec, run_sweep  # noqa: E402

DATASET, BACKBONE = "elpv", "efficientnet_lite0"
N_BOOT = 2000
LEVEL = 0.95
DEFECTIVE = ("likely_defective", "defective")  # defect probability 2/3 and 1: >= 0.5
REFERENCES = {
    "accuracy": {"value": 0.835, "source": "lightweight CNN, Hindawi Computational Intelligence and Neuroscience "
                                           "2023 (4 classes)"},
    "binary_accuracy": {"value": 0.884, "source": "Deitsch et al. 2019, fine-tuned VGG19 (defective vs functional)"},
}
NOT_DONE = [
    "augmented-views feature cache (needs the feature cache being rewritten by another engineer)",
    "input size as a sweep axis (needs the same feature cache work)",
    "concatenated backbones (needs the same feature cache work)",
]
GRID = {"pooling": ("avg", "max"), "widths": (128, 512), "depth": (1,), "dropout": (0.0, 0.5),
        "learning_rate": (1e-3,), "batch_size": (64,), "epochs": 30, "patience": 8, "ridge_l2": ()}


def binary(scores: np.ndarray, defective: np.ndarray) -> np.ndarray:
    """(..., 2) scores of (functional, defective): the class scores summed over each side."""
    return np.stack([scores[..., ~defective].sum(-1), scores[..., defective].sum(-1)], axis=-1)


def figures(scores: np.ndarray, labels: np.ndarray, defective: np.ndarray, seed: int = 0) -> dict[str, dict]:
    """Test accuracy, macro-F1 and binary accuracy of (seeds, rows, classes) scores, with percentile intervals
    over the examples (and the seeds, when there are several). The same example draws for every row (same seed)."""
    draws = stats.make_draws(np.zeros(len(labels), np.int64), scores.shape[0], n_boot=N_BOOT, seed=seed)
    out = {}
    for name, s, y, metric in (("accuracy", scores, labels, "accuracy"), ("macro_f1", scores, labels, "macro_f1"),
                               ("binary_accuracy", binary(scores, defective), defective[labels].astype(np.int64),
                                "accuracy")):
        i = stats.interval(s, y, metric, "multiclass", draws, LEVEL)
        out[name] = {"estimate": i.estimate, "low": i.low, "high": i.high, "level": i.level}
    return out


def ridge_row(splits: dict, num_classes: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """The ridge probe at the λ it chooses on val: its report and its (1, rows, classes) val and test scores."""
    t = time.perf_counter()
    report = probe.ridge_probe(splits["train"], splits["val"], splits["test"], num_classes=num_classes)
    y = np.eye(num_classes, dtype=np.float32)[np.asarray(splits["train"].labels, np.int64)]
    cache = probe.fit_ridge_eig(np.asarray(splits["train"].pooled, np.float32), y)
    l2 = [report["best"]["l2"]]
    val = np.asarray(probe.ridge_predict(cache, np.asarray(splits["val"].pooled, np.float32), l2))
    test = np.asarray(probe.ridge_predict(cache, np.asarray(splits["test"].pooled, np.float32), l2))
    report["seconds"] = time.perf_counter() - t
    return report, val.reshape(1, *val.shape[-2:]), test.reshape(1, *test.shape[-2:])


def finetune_probe(ds: data.Dataset, head_dir: Path, n_train: int, n_val: int) -> dict[str, Any]:
    """Two fine-tune epochs on a subset; the second (compiled) epoch's seconds per image, projected to a full
    epoch of train + val (val images counted as train images: an over-estimate)."""
    rng = np.random.default_rng(0)
    sub = {name: ds.split(name).subset(np.sort(rng.choice(len(ds.split(name)), n, replace=False)))
           for name, n in (("train", n_train), ("val", n_val))}
    small = data.Dataset(f"{ds.name}-timing", ds.classes, ds.task, sub, root=ds.root)
    marks: dict[int, float] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        finetuning.finetune(head_dir, small, finetuning.FinetuneConfig(epochs=2, patience=None), out_dir=tmp,
                            progress=lambda e: marks.__setitem__(e["epoch"], time.perf_counter()))
    epoch2 = marks[2] - marks[1]
    per_image = epoch2 / (n_train + n_val)
    full = len(ds.split("train")) + len(ds.split("val"))
    return {"subset_train": n_train, "subset_val": n_val, "start_and_epoch0_s": marks[0] - t0,
            "epoch1_s_with_compile": marks[1] - marks[0], "epoch2_s": epoch2, "s_per_image": per_image,
            "projected_full_epoch_s": per_image * full, "full_images_per_epoch": full}


def cell(f: dict | None) -> str:
    if f is None:
        return f"{'-':>22}"
    return f"{f['estimate']:>7.1%} [{f['low']:.1%}, {f['high']:.1%}]".rjust(22)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'model':<34}{'test accuracy':>22}{'test macro-F1':>22}{'binary accuracy':>22}{'val acc':>9}")
    for r in rows:
        t = r.get("test") or {}
        val = r.get("val_accuracy")
        print(f"{r['name']:<34}{cell(t.get('accuracy'))}{cell(t.get('macro_f1'))}{cell(t.get('binary_accuracy'))}"
              f"{'' if val is None else f'{val:>9.1%}'}")
        if r.get("note"):
            print(f"{'':<4}{r['note']}")
    ref = {k: f"{REFERENCES[k]['value']:>7.1%}".ljust(22) for k in REFERENCES}
    print(f"{'published reference':<34}{ref['accuracy']:>22}{'':>22}{ref['binary_accuracy']:>22}".rstrip())
    for k, ref in REFERENCES.items():
        print(f"    {k}: {ref['value']:.1%} — {ref['source']}")


def comparison_dict(c: stats.Comparison | dict) -> dict:
    return dataclasses.asdict(c) if isinstance(c, stats.Comparison) else dict(c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="replicas of every config (the soup needs >= 2)")
    parser.add_argument("--folds", type=int, default=None, help="cross-validation folds (default: the val split)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--greedy-steps", type=int, default=25)
    parser.add_argument("--ft-epochs", type=int, default=10, help="fine-tune epochs (FinetuneConfig.epochs)")
    parser.add_argument("--ft-epoch-budget-s", type=float, default=240.0,
                        help="fine-tune only if one projected full epoch takes at most this many seconds")
    parser.add_argument("--ft-probe-images", type=int, nargs=2, default=(96, 64), metavar=("TRAIN", "VAL"))
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--work-dir", default="runs/bench_quality", help="the saved head and the fine-tune "
                        "(a re-run resumes or reuses a finished fine-tune)")
    parser.add_argument("--out", default="experiments/results/bench_quality.json")
    args = parser.parse_args()
    work = Path(args.work_dir)
    timings: dict[str, float] = {}

    mm_before = matmul_flops(1024, 5) / 1e9
    t = time.perf_counter()
    ds = data.load_dataset(DATASET, seed=0)
    source = features.backbone_source(BACKBONE)
    splits = features.extract_all(source, ds, need_maps=True)
    timings["features_s"] = time.perf_counter() - t
    labels = np.asarray(splits["test"].labels)
    defective = np.isin(np.asarray(ds.classes), DEFECTIVE)
    print(f"features: {timings['features_s']:.1f} s; " + ", ".join(f"{k} {len(v)}" for k, v in splits.items())
          + f"; classes {list(ds.classes)} (defective: {[c for c in ds.classes if c in DEFECTIVE]})", flush=True)
    rows: list[dict] = []
    comparisons: dict[str, dict] = {}

    # 1. ridge probe
    ridge, ridge_val, ridge_test = ridge_row(splits, ds.num_classes)
    rows.append({"name": "ridge probe", "what": f"closed-form ridge on pooled features, l2={ridge['best']['l2']:g} "
                 "chosen on val", "test": figures(ridge_test, labels, defective),
                 "val_accuracy": float(np.mean(ridge_val[0].argmax(-1) == splits["val"].labels)), "models": 1,
                 "seconds": ridge["seconds"]})
    print(f"ridge: {ridge['seconds']:.1f} s", flush=True)

    # 2. the sweep and its recommended head
    spec = SweepSpec(**GRID, seeds=args.seeds, folds=args.folds)
    t = time.perf_counter()
    result = run_sweep(spec, splits, num_classes=ds.num_classes, task=ds.task, label_names=list(ds.classes))
    timings["sweep_s"] = time.perf_counter() - t
    print(f"sweep: {timings['sweep_s']:.1f} s, {len(result.members)} members, recommended {result.recommended}",
          flush=True)
    scores = ensembles.config_scores(result)
    rec = scores[result.recommended]
    rec_spec = result.members[rec.members[0]]["spec"]["head"]
    rows.append({"name": "best frozen head (recommended)", "what": f"the sweep's recommended config "
                 f"{result.recommended} (pooling {rec_spec['pooling']}, hidden {rec_spec['hidden']}, dropout "
                 f"{rec_spec['dropout']}); one member, mean over {rec.test.shape[0]} seeds",
                 "test": figures(rec.test, labels, defective), "val_accuracy": stats.point_estimate(
                     rec.val, result.predictions["val_labels"], "accuracy", "multiclass"),
                 "models": 1 if not args.folds else args.folds, "seconds": timings["sweep_s"]})

    # 3-5. the top config, top-k and greedy ensembles
    t = time.perf_counter()
    top_k = ensembles.top_k_ensemble(result, args.top_k, metrics=("accuracy", "macro_f1"))
    greedy = ensembles.greedy_ensemble(result, steps=args.greedy_steps, metrics=("accuracy", "macro_f1"))
    timings["ensembles_s"] = time.perf_counter() - t
    single = scores[greedy.single]
    val_labels = result.predictions["val_labels"]
    rows.append({"name": "top config, seeds averaged", "what": f"config {greedy.single} (best by val), its "
                 f"{single.val.shape[0]} replicas' probabilities averaged", "test": figures(
                     single.test_mean[None], labels, defective),
                 "val_accuracy": float(np.mean(single.val_mean.argmax(-1) == val_labels)),
                 "models": len(single.members)})
    for name, report in ((f"top-{args.top_k} ensemble", top_k), ("greedy ensemble", greedy)):
        rows.append({"name": name, "what": f"{report.method}: configs {list(report.configs)} weights "
                     f"{[round(w, 3) for w in report.weights]}", "test": figures(report.test_probs[None], labels,
                                                                                 defective),
                     "val_accuracy": report.val, "models": sum(len(scores[c].members) for c in report.configs),
                     "note": f"vs top config on test: accuracy {report.vs_single['accuracy'].diff:+.4f} "
                             f"[{report.vs_single['accuracy'].low:+.4f}, {report.vs_single['accuracy'].high:+.4f}]"
                             f" ({report.vs_single['accuracy'].verdict})"})
        comparisons[name] = {"vs": "top config, seeds averaged", **{
            m: comparison_dict(c) for m, c in report.vs_single.items()}, "report": report.to_dict()}

    # 6. the head soup of the recommended config
    if rec.val.shape[0] > 1:
        t = time.perf_counter()
        soup = ensembles.head_soup(result, splits, result.recommended, metrics=("accuracy", "macro_f1"))
        rows.append({"name": "head soup (recommended config)", "what": f"weights of the {rec.val.shape[0]} "
                     "replicas averaged" + (" per fold" if args.folds else ""),
                     "test": figures(soup.test_probs[None], labels, defective), "val_accuracy": soup.val,
                     "models": 1 if not args.folds else args.folds, "seconds": time.perf_counter() - t,
                     "note": f"vs its replicas' probability average on test: accuracy "
                             f"{soup.vs_ensemble['accuracy'].diff:+.4f} [{soup.vs_ensemble['accuracy'].low:+.4f}, "
                             f"{soup.vs_ensemble['accuracy'].high:+.4f}] ({soup.vs_ensemble['accuracy'].verdict})"})
        comparisons["head soup"] = {"vs": "the same replicas' probabilities averaged", **{
            m: comparison_dict(c) for m, c in soup.vs_ensemble.items()}, "report": soup.to_dict()}

    # 7. fine-tune the recommended head with the top block
    ft: dict[str, Any] = {"config": dataclasses.asdict(finetuning.FinetuneConfig(epochs=args.ft_epochs))}
    member = result.recommended_member()
    head_spec, head_vars = result.head(member)
    shape = result.feature_shapes["pooled" if head_spec.pooling == "none" else "maps"]
    head_dir = heads_io.save_head(work / "head", head_spec, head_vars, shape, label_names=list(ds.classes), extra={
        "backbone": BACKBONE, "weights": "default", "weights_id": source.weights_id,
        "config": result.recommended, "member": member})
    if args.skip_finetune:
        ft["skipped"] = "--skip-finetune"
    else:
        ft["timing_probe"] = finetune_probe(ds, head_dir, *args.ft_probe_images)
        projected = ft["timing_probe"]["projected_full_epoch_s"]
        print(f"fine-tune timing probe: {ft['timing_probe']}", flush=True)
        if projected > args.ft_epoch_budget_s:
            ft["skipped"] = (f"one full epoch is projected at {projected:.0f} s (from "
                             f"{ft['timing_probe']['epoch2_s']:.0f} s for {sum(args.ft_probe_images)} images) > "
                             f"--ft-epoch-budget-s {args.ft_epoch_budget_s:.0f}")
    if "skipped" in ft:
        rows.append({"name": "fine-tune (top block)", "what": "not run", "test": None, "val_accuracy": None,
                     "models": 1, "note": f"not run: {ft['skipped']}"})
    else:
        t = time.perf_counter()
        config = finetuning.FinetuneConfig(epochs=args.ft_epochs)
        run = finetuning.finetune(head_dir, ds, config, out_dir=work / "finetune", progress=lambda e: print(
            f"  fine-tune epoch {e['epoch']}/{e['epochs']} train loss "
            f"{'-' if e['train_loss'] is None else round(e['train_loss'], 4)} val accuracy "
            f"{e['val']['accuracy']:.4f} val loss {e['val']['loss']:.4f}", flush=True))
        timings["finetune_s"] = time.perf_counter() - t
        model = finetuning.load_model(run.model_dir)
        test_split = ds.split("test")
        probs = []
        for batch in data.iter_batches(test_split, image_size=model.image_size, batch_size=64):
            probs.append(model.predict(batch.images))
        test_probs = np.concatenate(probs)
        member_val = result.members[member]["val"]["accuracy"]
        ft.update({"result": run.to_dict(), "seconds": timings["finetune_s"],
                   "epoch0_val_accuracy_on_images": run.before["accuracy"],
                   "member_val_accuracy_on_cached_features": member_val})
        rows.append({"name": "fine-tune (top block)", "what": f"recommended member {member} + backbone block(s) "
                     f"{list(run.trainable_blocks)}, best epoch {run.best_epoch} of {run.epochs_run}",
                     "test": figures(test_probs[None], labels, defective), "val_accuracy": run.best["accuracy"],
                     "models": 1, "seconds": timings["finetune_s"],
                     "note": "; ".join(run.gain_lines()) + f"; epoch 0 val accuracy {run.before['accuracy']:.4f} "
                             f"(on images) vs the member's {member_val:.4f} (on cached float16 features)"})
        comparisons["fine-tune"] = {"vs": "the frozen recommended member (epoch 0)", **(run.gain.get("test") or {})}

    print_table(rows)
    out = {
        "benchmark": "bench_quality", "dataset": DATASET, "backbone": BACKBONE, "split_seed": 0,
        "splits": {k: len(v) for k, v in splits.items()}, "classes": list(ds.classes),
        "defective_classes": list(DEFECTIVE), "n_boot": N_BOOT, "level": LEVEL, "rows": rows,
        "comparisons": comparisons, "finetune": ft, "references": REFERENCES, "not_done": NOT_DONE,
        "sweep": {"spec": spec.to_dict(), "recommended": result.recommended, "members": len(result.members),
                  "leaderboard": [{"config": r["config"], "spec": r["spec"]["head"], "val": r["val_interval"]}
                                  for r in result.leaderboard],
                  "selection_test": result.selection.get("test")},
        "ridge": {k: ridge[k] for k in ("best", "l2_grid", "seconds")},
        "timings": timings,
        "machine": {"processor": platform.processor(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
                    "jaxheads": getattr(jaxheads, "__version__", None), "matmul_gflops_before": mm_before,
                    "loadavg_end": list(os.getloadavg())},
        "command": "python experiments/bench_quality.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False)
            and k not in ("out", "work_dir", "ft_probe_images")),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
