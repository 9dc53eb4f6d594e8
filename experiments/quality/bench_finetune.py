"""A measured fine-tune of EfficientNet-Lite0 from a swept head: the top block against the whole network, on a
stratified Fashion-MNIST subsample or on ELPV's default split.

    python experiments/quality/bench_finetune.py --memory-size 300    # 1,000 / 500 / 1,000 images at 64 px, 4 epochs
    python experiments/quality/bench_finetune.py --lr 1e-4 --out experiments/results/bench_finetune_lr1e-4.json
    python experiments/quality/bench_finetune.py --optimizer sgd --lr 3e-3 --backbone-lr 3e-3 \
        --out experiments/results/bench_finetune_sgd.json
    python experiments/quality/bench_finetune.py --lr 1e-4 --augment none --out experiments/results/bench_finetune_noaug.json
    python experiments/quality/bench_finetune.py --no-rows --memory-size 300 --memory-variants 2,4 \
        --out experiments/results/bench_finetune_memory.json
    python experiments/quality/bench_finetune.py --train 64 --val 32 --test 64 --epochs 1 --out /tmp/smoke.json
    python experiments/quality/bench_finetune.py --dataset elpv --size 300 --rows whole --epochs 4 \
        --batch-size 16 --backbone-lr 1e-4 --layer-decay 0.9 --augment dihedral,affine --ema 0.99 \
        --work runs/bench_finetune_elpv --out experiments/results/bench_finetune_elpv.json   # hours on 2 cores

With ``--work DIR`` the swept head and every epoch checkpoint stay in DIR, so the same command after a kill resumes
where it stopped (``finetune(resume=True)``). On ELPV the figures add the binary defective-vs-functional accuracy.

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
import sys
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/ is not an installed package
from experiments.quality.bench_quality_parts import figures, setup_dataset

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
    """A linear head swept on the frozen pooled features (fixed val split), saved as `jaxheads sweep` saves it
    (kept when ``work`` already holds one, so a resumed run starts from the same head)."""
    if (work / "head" / "meta.json").exists():
        return work / "head"
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


def run_row(name: str, head_dir: Path, ds: data.Dataset, config: finetuning.FinetuneConfig,
            work: Path, defective: np.ndarray | None) -> dict[str, Any]:
    """One fine-tune, timed per epoch (a resumed run times only the epochs it ran), scored once on test with 95%
    percentile intervals over the test examples."""
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
            "test": figures(probs[None], labels, defective),
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
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "elpv"),
                        help="elpv: the default split (the subsample sizes are ignored)")
    parser.add_argument("--rows", default="top,whole", help="comma-separated: top (the top block), whole")
    parser.add_argument("--work", type=Path, default=None, help="keep the head and checkpoints here (resumable); "
                        "default: a temporary directory")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layer-decay", type=float, default=0.9)
    parser.add_argument("--ema", type=float, default=0.95, help="per-step EMA decay of the weights")
    parser.add_argument("--class-weights", default="none", help="none or balanced")
    parser.add_argument("--sampling", default="shuffle", help="shuffle or balanced (FinetuneConfig.sampling)")
    parser.add_argument("--train-bn", action="store_true", help="batch norm in train mode (FinetuneConfig.freeze_bn "
                        "False); default frozen")
    parser.add_argument("--metric", default=None, help="val metric that keeps the epoch (default: accuracy)")
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
    if args.dataset == "elpv":
        setup = setup_dataset("elpv", None, (0, 0, 0))
        ds, defective = setup.ds, setup.defective
    else:
        ds, defective = subsample(args.train, args.val, args.test), None
    common = {"image_size": args.size, "epochs": args.epochs, "batch_size": args.batch_size, "patience": None,
              "augment": () if args.augment == "none" else tuple(args.augment.split(",")), "ema_decay": args.ema,
              "layer_decay": args.layer_decay, "learning_rate": args.lr, "backbone_learning_rate": args.backbone_lr,
              "optimizer": args.optimizer, "class_weights": args.class_weights,
              "sampling": args.sampling, "metric": args.metric, "freeze_bn": not args.train_bn}
    out: dict[str, Any] = {"dataset": ds.name, "backbone": BACKBONE, "size": args.size,
                           "host": {"cpus": os.cpu_count(), "load_average_start": os.getloadavg()}, "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every part: a kill keeps what was measured
        out["host"]["load_average_end"] = os.getloadavg()
        args.out.write_text(json.dumps(out, indent=1) + "\n")

    rows = {"top": ("top block", 1), "whole": ("whole network", "all")}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        head_dir = None if args.no_rows else sweep_head(ds, args.size, work)
        out["sweep_s"] = time.perf_counter() - t
        for name, unfreeze in () if args.no_rows else (rows[r] for r in args.rows.split(",")):
            config = finetuning.FinetuneConfig(unfreeze=unfreeze, **common)
            out["rows"].append(run_row(name, head_dir, ds, config, work, defective))
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
