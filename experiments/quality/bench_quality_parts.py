"""The pieces of ``experiments/quality/bench_quality.py``: the datasets, the figures with intervals, the ridge row, the
fine-tune row and the table."""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxheads import data, finetuning, probe, stats
from jaxheads.heads import io as heads_io
from jaxheads.sweep import SweepResult

N_BOOT = 2000
LEVEL = 0.95
DEFECTIVE = ("likely_defective", "defective")  # defect probability 2/3 and 1: >= 0.5


@dataclasses.dataclass
class DatasetSetup:
    """The dataset a run scores: its splits, test labels, the defective classes (ELPV; None elsewhere), the two
    input sizes (the base first) and the view policy."""

    ds: data.Dataset
    test_labels: np.ndarray
    defective: np.ndarray | None
    sizes: tuple[int, int]
    augment: tuple[str, ...]
    split_note: str


def _stratified(split: data.ImageSplit, n: int, rng: np.random.Generator) -> data.ImageSplit:
    """``n`` examples of ``split`` with its class shares (each class rounded), in their original order."""
    labels = np.asarray(split.labels)
    picks = []
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        picks.append(rng.choice(rows, max(1, round(n * len(rows) / len(labels))), replace=False))
    return split.subset(np.sort(np.concatenate(picks)))


def setup_dataset(name: str, augment: str | None, subsample: tuple[int, int, int]) -> DatasetSetup:
    if name == "elpv":
        ds = data.load_dataset("elpv", seed=0)
        defective = np.isin(np.asarray(ds.classes), DEFECTIVE)
        note = "default split: data.load_dataset('elpv', seed=0), 60/20/20 stratified"
        sizes, policy = (224, 300), augment or "dihedral,crop"
    else:
        full = data.load_dataset("fashion_mnist", seed=0)
        rng = np.random.default_rng(0)
        splits = {s: _stratified(full.split(s), n, rng) for s, n in zip(("train", "val", "test"), subsample)}
        ds = data.Dataset(f"{full.name}-{'-'.join(map(str, subsample))}", full.classes, full.task, splits,
                          root=full.root)
        defective = None
        note = (f"stratified subsample (seed 0) of Fashion-MNIST's train/val/test: {subsample[0]}/{subsample[1]}/"
                f"{subsample[2]}; 28 px images upscaled")
        sizes, policy = (64, 96), augment or "flip,crop"
    test_labels = np.asarray(ds.split("test").labels)
    return DatasetSetup(ds, test_labels, defective, sizes, tuple(p.strip() for p in policy.split(",")), note)


def binary(scores: np.ndarray, defective: np.ndarray) -> np.ndarray:
    """(..., 2) scores of (functional, defective): the class scores summed over each side."""
    return np.stack([scores[..., ~defective].sum(-1), scores[..., defective].sum(-1)], axis=-1)


def figures(scores: np.ndarray, labels: np.ndarray, defective: np.ndarray | None, seed: int = 0) -> dict[str, dict]:
    """Test accuracy, macro-F1 (and with ``defective`` the binary accuracy) of (seeds, rows, classes) scores, with
    percentile intervals over the examples (and the seeds); the same example draws for every row (same seed)."""
    draws = stats.make_draws(np.zeros(len(labels), np.int64), scores.shape[0], n_boot=N_BOOT, seed=seed)
    todo = [("accuracy", scores, labels, "accuracy"), ("macro_f1", scores, labels, "macro_f1")]
    if defective is not None:
        todo.append(("binary_accuracy", binary(scores, defective), defective[labels].astype(np.int64), "accuracy"))
    out = {}
    for name, s, y, metric in todo:
        i = stats.interval(s, y, metric, "multiclass", draws, LEVEL)
        out[name] = {"estimate": i.estimate, "low": i.low, "high": i.high, "level": i.level}
    return out


def ridge_row(splits: dict, num_classes: int, feature_s: float) -> dict:
    """The ridge probe at the λ it chooses on val, as a table row (its test scores kept for the end)."""
    t = time.perf_counter()
    report = probe.ridge_probe(splits["train"], splits["val"], splits["test"], num_classes=num_classes)
    y = np.eye(num_classes, dtype=np.float32)[np.asarray(splits["train"].labels, np.int64)]
    cache = probe.fit_ridge_eig(np.asarray(splits["train"].pooled, np.float32), y)
    l2 = [report["best"]["l2"]]
    val = np.asarray(probe.ridge_predict(cache, np.asarray(splits["val"].pooled, np.float32), l2))
    test = np.asarray(probe.ridge_predict(cache, np.asarray(splits["test"].pooled, np.float32), l2))
    seconds = time.perf_counter() - t
    print(f"ridge: {seconds:.1f} s", flush=True)
    return {"step": "ridge probe", "name": "ridge probe", "what": f"closed-form ridge on pooled features, "
            f"l2={report['best']['l2']:g} chosen on val", "_test_scores": test.reshape(1, *test.shape[-2:]),
            "val_accuracy": float(np.mean(val.reshape(val.shape[-2:]).argmax(-1) == splits["val"].labels)),
            "models": 1, "seconds": feature_s + seconds, "note": f"ridge alone {seconds:.1f} s"}


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
    per_image = (marks[2] - marks[1]) / (n_train + n_val)
    full = len(ds.split("train")) + len(ds.split("val"))
    return {"subset_train": n_train, "subset_val": n_val, "start_and_epoch0_s": marks[0] - t0,
            "epoch1_s_with_compile": marks[1] - marks[0], "epoch2_s": marks[2] - marks[1], "s_per_image": per_image,
            "projected_full_epoch_s": per_image * full, "full_images_per_epoch": full}


def _save_recommended(merged: SweepResult, ds: data.Dataset, work: Path, backbone: str) -> tuple[Path, int, int]:
    """The merged sweep's recommended member saved as ``jaxheads sweep`` saves it, with its input size."""
    from jaxheads import features

    member = merged.recommended_member()
    size = merged.input_size(member)
    spec, variables = merged.head(member)
    shape = merged.shapes_by_size[size][spec.feature_kind]
    head_dir = heads_io.save_head(work / "head", spec, variables, shape, label_names=list(ds.classes), extra={
        "backbone": backbone, "weights": "default", "weights_id": features.backbone_source(backbone).weights_id,
        "config": merged.recommended, "member": member, "input_size": size})
    return head_dir, member, size


def _test_probabilities(model_dir: Path, split: data.ImageSplit) -> np.ndarray:
    model = finetuning.load_model(model_dir)
    parts = [model.predict(b.images) for b in data.iter_batches(split, image_size=model.image_size, batch_size=64)]
    return np.concatenate(parts)


def finetune_row(args: argparse.Namespace, setup: DatasetSetup, merged: SweepResult, work: Path,
                 backbone: str) -> tuple[dict, dict]:
    """The step-4 head fine-tuned with its top block at its input size (if an epoch fits the budget)."""
    ds = setup.ds
    head_dir, member, size = _save_recommended(merged, ds, work, backbone)
    config = finetuning.FinetuneConfig(epochs=args.ft_epochs)
    ft: dict[str, Any] = {"config": dataclasses.asdict(config), "input_size": size, "member": member}
    row = {"step": "+ fine-tune", "name": "+ fine-tune (top block)", "what": "not run", "_test_scores": None,
           "val_accuracy": None, "models": 1, "input_size": size}
    if args.skip_finetune:
        ft["skipped"] = "--skip-finetune"
    else:
        ft["timing_probe"] = probe_ = finetune_probe(ds, head_dir, *args.ft_probe_images)
        print(f"fine-tune timing probe: {probe_}", flush=True)
        if probe_["projected_full_epoch_s"] > args.ft_epoch_budget_s:
            ft["skipped"] = (f"one full epoch is projected at {probe_['projected_full_epoch_s']:.0f} s > "
                             f"--ft-epoch-budget-s {args.ft_epoch_budget_s:.0f}")
    if "skipped" in ft:
        return {**row, "note": f"not run: {ft['skipped']}"}, ft
    t = time.perf_counter()
    run = finetuning.finetune(head_dir, ds, config, out_dir=work / "finetune", progress=lambda e: print(
        f"  fine-tune epoch {e['epoch']}/{e['epochs']} val accuracy {e['val']['accuracy']:.4f}", flush=True))
    seconds = time.perf_counter() - t
    test_probs = _test_probabilities(run.model_dir, ds.split("test"))
    ft.update({"result": run.to_dict(), "seconds": seconds, "gain": run.gain})
    return {**row, "what": f"recommended member {member} ({size} px) + backbone block(s) {list(run.trainable_blocks)}"
            f", best epoch {run.best_epoch} of {run.epochs_run}", "_test_scores": test_probs[None],
            "val_accuracy": run.best["accuracy"], "seconds": seconds, "note": "; ".join(run.gain_lines())}, ft


def comparison_dict(c: stats.Comparison | dict) -> dict:
    return dataclasses.asdict(c) if isinstance(c, stats.Comparison) else dict(c)


def _cell(f: dict | None) -> str:
    if f is None:
        return f"{'-':>22}"
    return f"{f['estimate']:>7.1%} [{f['low']:.1%}, {f['high']:.1%}]".rjust(22)


def print_table(rows: list[dict], references: dict) -> None:
    print(f"\n{'step':<36}{'test accuracy':>22}{'test macro-F1':>22}{'binary accuracy':>22}{'val acc':>9}"
          f"{'time s':>8}")
    for r in rows:
        t = r.get("test") or {}
        val, secs = r.get("val_accuracy"), r.get("seconds")
        print(f"{r['name']:<36}{_cell(t.get('accuracy'))}{_cell(t.get('macro_f1'))}"
              f"{_cell(t.get('binary_accuracy'))}{'' if val is None else f'{val:>9.1%}'}"
              f"{'' if secs is None else f'{secs:>8.0f}'}")
        if r.get("note"):
            print(f"{'':<4}{r['note']}")
    for k, ref in references.items():
        print(f"published {k}: {ref['value']:.1%} — {ref['source']}")
