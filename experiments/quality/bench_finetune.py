"""A short measured fine-tune: EfficientNet-Lite0 on a stratified Fashion-MNIST subsample, the top block against
the whole network, from the same swept head.

    python experiments/quality/bench_finetune.py --memory-size 300    # 1,000 / 500 / 1,000 images at 64 px, 4 epochs
    python experiments/quality/bench_finetune.py --lr 1e-4 --out experiments/results/bench_finetune_lr1e-4.json
    python experiments/quality/bench_finetune.py --optimizer sgd --lr 3e-3 --backbone-lr 3e-3 \
        --out experiments/results/bench_finetune_sgd.json
    python experiments/quality/bench_finetune.py --lr 1e-4 --augment none --out experiments/results/bench_finetune_noaug.json
    python experiments/quality/bench_finetune.py --no-rows --memory-size 300 --memory-variants 2,4 \
        --out experiments/results/bench_finetune_memory.json
    python experiments/quality/bench_finetune.py --train 64 --val 32 --test 64 --epochs 1 --out /tmp/smoke.json

It sweeps a linear head on the frozen backbone's pooled features (the starting point of both rows), then fine-tunes
it twice with the same recipe (by default AdamW, warm-up + cosine, flip + affine jitter on device, EMA 0.95) and
reports for each row: test accuracy and macro-F1 with 95% percentile intervals (2,000 bootstrap draws of the test
examples), the paired gain over the frozen head on test, the epochs, and the wall time of every epoch (epoch 1
includes compiling the step). With ``--memory-size`` it also compiles (never runs) the whole-network step at that
size (default variants: plain and ``--remat``; N: ``--accumulate N``) and records XLA's memory analysis of each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads import backbones, data, features, finetuning, heads
from jaxheads.backbones.base import feature_maps
from jaxheads.features.split import FeatureSplit
from jaxheads.finetuning.step import FinetuneSetup, TrainState, finetune_optimizer, schedule_steps, train_step
from jaxheads.heads import io as heads_io
from jaxheads.sweep import SweepSpec, run_sweep

BACKBONE = "efficientnet_lite0"
N_BOOT = 2000


def subsample(n_train: int, n_val: int, n_test: int) -> data.Dataset:
    """A stratified subsample (seed 0) of Fashion-MNIST's train / val / test splits, each in its original order."""
    full = data.load_dataset("fashion_mnist", seed=0)
    rng = np.random.default_rng(0)
    splits = {}
    for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        split = full.split(name)
        labels = np.asarray(split.labels)
        picks = [rng.choice(np.flatnonzero(labels == k), max(1, round(n * np.mean(labels == k))), replace=False)
                 for k in np.unique(labels)]
        splits[name] = split.subset(np.sort(np.concatenate(picks)))
    return data.Dataset(f"fashion_mnist-{n_train}-{n_val}-{n_test}", full.classes, full.task, splits, root=full.root)


def pooled(backbone: backbones.Backbone, split: data.ImageSplit, size: int) -> FeatureSplit:
    """The frozen backbone's pooled features of ``split`` at ``size`` px (centre-resized, as the fine-tune's val)."""
    preprocessing = dataclasses.replace(backbone.config.preprocessing, input_size=size)
    fn = jax.jit(lambda images: feature_maps(backbone.module, backbone.variables, images, preprocessing)
                 .mean(axis=(1, 2)))
    rows, labels = [], []
    for batch in data.iter_batches(split, image_size=size, batch_size=64):
        rows.append(np.asarray(fn(batch.images)))
        labels.append(batch.labels)
    return FeatureSplit(np.concatenate(labels).astype(np.int32), np.concatenate(rows))


def sweep_head(ds: data.Dataset, size: int, work: Path) -> Path:
    """A linear head swept on the frozen pooled features (fixed val split), saved as `jaxheads sweep` saves it."""
    backbone = backbones.load(BACKBONE)
    splits = {name: pooled(backbone, ds.split(name), size) for name in ("train", "val")}
    sweep = SweepSpec(pooling=("none",), depth=(0,), learning_rate=(3e-3,), batch_size=(64,), epochs=60,
                      patience=None, ridge_l2=(), folds=None, map_batch="vmap")
    swept = run_sweep(sweep, splits, num_classes=len(ds.classes), label_names=list(ds.classes))
    spec, variables = swept.head(0)
    source = features.backbone_source(BACKBONE)
    return heads_io.save_head(work / "head", spec, variables, (splits["train"].pooled.shape[-1],),
                              label_names=ds.classes, extra={"backbone": BACKBONE, "weights": "default",
                                                             "weights_id": source.weights_id, "input_size": size})


def interval(probs: np.ndarray, labels: np.ndarray, metric: str) -> dict[str, float]:
    """Point estimate and 95% percentile interval of ``metric`` over bootstrap draws of the examples."""
    def value(rows: np.ndarray) -> float:
        pred, y = probs[rows].argmax(-1), labels[rows]
        if metric == "accuracy":
            return float(np.mean(pred == y))
        f1 = [2 * np.sum((pred == k) & (y == k)) / max(np.sum(pred == k) + np.sum(y == k), 1)
              for k in range(probs.shape[1])]
        return float(np.mean(f1))

    rng = np.random.default_rng(0)
    draws = [value(rng.integers(0, len(labels), len(labels))) for _ in range(N_BOOT)]
    return {"estimate": value(np.arange(len(labels))), "low": float(np.percentile(draws, 2.5)),
            "high": float(np.percentile(draws, 97.5))}


def run_row(name: str, head_dir: Path, ds: data.Dataset, config: finetuning.FinetuneConfig,
            work: Path) -> dict[str, Any]:
    """One fine-tune, timed per epoch, scored on test with intervals."""
    marks = [time.perf_counter()]
    run = finetuning.finetune(head_dir, ds, config, out_dir=work / name.replace(" ", "_"), progress=lambda e: (
        marks.append(time.perf_counter()),
        print(f"  {name}: epoch {e['epoch']} val accuracy {e['val']['accuracy']:.4f}", flush=True)))
    model = finetuning.load_model(run.model_dir)
    test = ds.split("test")
    probs = np.concatenate([model.predict(b.images) for b in data.iter_batches(test, image_size=model.image_size,
                                                                               batch_size=64)])
    labels = np.asarray(test.labels)
    seconds = np.diff(marks).tolist()  # [start + epoch 0's val, epoch 1 (with compile), epoch 2, ...]
    return {"row": name, "trainable_blocks": len(run.trainable_blocks), "config": dataclasses.asdict(config),
            "best_epoch": run.best_epoch, "epochs_run": run.epochs_run,
            "val_before": run.before["accuracy"], "val_best": run.best["accuracy"],
            "val_accuracy_by_epoch": [h["val"]["accuracy"] for h in run.history],
            "train_loss_by_epoch": [h["train_loss"] for h in run.history[1:]],
            "test_accuracy": interval(probs, labels, "accuracy"), "test_macro_f1": interval(probs, labels, "macro_f1"),
            "gain_test": {m: {k: c[k] for k in ("a", "b", "diff", "low", "high", "verdict")}
                          for m, c in (run.gain.get("test") or {}).items()},
            "start_and_epoch0_s": seconds[0], "epoch_s": seconds[1:],
            "epoch_s_after_compile": float(np.median(seconds[2:])) if len(seconds) > 2 else None}


def step_memory(size: int, batch: int, remat: bool, accumulate: int = 1) -> dict[str, Any]:
    """XLA's memory analysis of the compiled whole-network training step of Lite0 at ``size`` px (not run), for
    ``batch`` images per update in ``accumulate`` micro-batches."""
    backbone = backbones.load(BACKBONE)
    spec = heads.HeadSpec(num_classes=4, pooling="none")
    head_vars = heads.init_head(0, spec, (backbone.config.feature_channels,))
    config = finetuning.FinetuneConfig(unfreeze="all", batch_size=batch // accumulate, remat=remat,
                                       freeze_bn=False, accumulate=accumulate)
    setup = FinetuneSetup(backbone.module, dataclasses.replace(backbone.config.preprocessing, input_size=size), spec,
                          backbone.config.blocks, config, size)
    params = {"backbone": backbone.variables["params"], "head": head_vars["params"]}
    stats = {"backbone": backbone.variables["batch_stats"], "head": head_vars.get("batch_stats", {})}
    state = TrainState(jnp.zeros((), jnp.int32), params, stats, finetune_optimizer(setup, params).init(params),
                       (params, stats))
    t = time.perf_counter()
    compiled = train_step(setup).lower(state, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
                                       jnp.zeros(batch, jnp.int32), jnp.ones(batch), jnp.ones(4),
                                       heads.seed_words(0), schedule_steps(config, 1)).compile()
    analysis = compiled.memory_analysis()
    return {"size": size, "batch": batch, "remat": remat, "accumulate": accumulate,
            "compile_s": time.perf_counter() - t,
            "temp_bytes": int(analysis.temp_size_in_bytes), "argument_bytes": int(analysis.argument_size_in_bytes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="the head's peak learning rate")
    parser.add_argument("--backbone-lr", type=float, default=1e-4, help="the top block's peak learning rate")
    parser.add_argument("--optimizer", default="adamw", help="adamw or sgd (momentum 0.9)")
    parser.add_argument("--augment", default="flip,affine", help="the on-device policy (none: no augmentation)")
    parser.add_argument("--memory-size", type=int, default=0, help="also compile the whole-network step at this "
                        "size with and without remat (0: skip)")
    parser.add_argument("--memory-batch", type=int, default=16)
    parser.add_argument("--memory-variants", default="1,remat", help="comma-separated: 1 (plain), remat, or an "
                        "accumulation count N (N micro-batches of batch/N)")
    parser.add_argument("--no-rows", action="store_true", help="only the memory analysis")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "bench_finetune.json")
    args = parser.parse_args()
    ds = subsample(args.train, args.val, args.test)
    common = {"image_size": args.size, "epochs": args.epochs, "batch_size": 32, "patience": None,
              "augment": () if args.augment == "none" else tuple(args.augment.split(",")), "ema_decay": 0.95,
              "layer_decay": 0.9, "learning_rate": args.lr, "backbone_learning_rate": args.backbone_lr,
              "optimizer": args.optimizer}
    out: dict[str, Any] = {"dataset": ds.name, "backbone": BACKBONE, "size": args.size,
                           "host": {"cpus": os.cpu_count(), "load_average_start": os.getloadavg()}, "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every part: a kill keeps what was measured
        out["host"]["load_average_end"] = os.getloadavg()
        args.out.write_text(json.dumps(out, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        head_dir = None if args.no_rows else sweep_head(ds, args.size, Path(tmp))
        out["sweep_s"] = time.perf_counter() - t
        for name, unfreeze in () if args.no_rows else (("top block", 1), ("whole network", "all")):
            config = finetuning.FinetuneConfig(unfreeze=unfreeze, **common)
            out["rows"].append(run_row(name, head_dir, ds, config, Path(tmp)))
            print(json.dumps({k: v for k, v in out["rows"][-1].items() if k != "config"}), flush=True)
            write()
    out["step_memory"] = []
    for variant in args.memory_variants.split(",") if args.memory_size else ():
        remat, accumulate = variant == "remat", 1 if variant == "remat" else int(variant)
        out["step_memory"].append(step_memory(args.memory_size, args.memory_batch, remat, accumulate))
        print(json.dumps(out["step_memory"][-1]), flush=True)
        write()
    write()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
