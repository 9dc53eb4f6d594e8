"""Part 4: is the recommended head any good? Against the two probes a careful user would fit first.

The whole dataset is embedded once (the feature cache; a warm cache is reused, timings here are not the point).
For every seed the images are re-split (stratified 60/20/20 train/val/test) and, on the same cached features:

* **jaxheads**: the 32-member grid (``experiments.alternatives.config.GRID_SWEEP``; 12 epochs at the default size)
  -> the recommended head (smallest within one SE of the best on val); its best replica's test accuracy, as
  ``sweep_job`` would save it;
* **ridge**: the sweep's own closed-form ridge row (``jaxheads.probe``), L2 chosen on val;
* **logreg**: scikit-learn ``LogisticRegression`` on standardised pooled features, C chosen on val.

Reported: test accuracy per seed and mean ± std over seeds.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxheads import data, features
from jaxheads.features import BackboneSource
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import MemberSpec, SweepResult, run_sweep
from experiments.alternatives.backbone_pair import BackbonePair
from experiments.alternatives.config import BenchSize

FRACTIONS = {"val": 0.2, "test": 0.2}


def resplit(every: FeatureSplit, seed: int) -> dict[str, FeatureSplit]:
    """Stratified train/val/test FeatureSplits of the cached features for one seed."""
    idx = data.stratified_split(every.labels, FRACTIONS, seed=seed)
    return {name: FeatureSplit(every.labels[i], every.pooled[i], None if every.maps is None else every.maps[i])
            for name, i in idx.items()}


def logreg_probe(splits: Mapping[str, FeatureSplit], cs: Sequence[float]) -> dict[str, Any]:
    """scikit-learn LogisticRegression (lbfgs, multinomial) on standardised pooled features, C chosen on val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    t = time.perf_counter()
    scaler = StandardScaler().fit(np.asarray(splits["train"].pooled, np.float32))
    x = {k: scaler.transform(np.asarray(s.pooled, np.float32)) for k, s in splits.items()}
    best: dict[str, Any] = {"val": -1.0}
    for c in cs:
        model = LogisticRegression(C=c, max_iter=2000).fit(x["train"], splits["train"].labels)
        val = float(model.score(x["val"], splits["val"].labels))
        if val > best["val"]:
            best = {"C": c, "val": val, "test": float(model.score(x["test"], splits["test"].labels))}
    return best | {"time_s": time.perf_counter() - t}


def recommended(result: SweepResult) -> dict[str, Any]:
    """The recommended head's summary: spec, params, val/test accuracy of the replica jaxheads would save."""
    i = result.recommended_member()
    record = result.members[i]
    head = MemberSpec.from_dict(record["spec"]).head
    return {"config": result.recommended, "pooling": head.pooling, "hidden": list(head.hidden),
            "dropout": head.dropout, "params": record["params"], "val": record["val"]["accuracy"],
            "test": record["test"]["accuracy"]}


def best_ridge(result: SweepResult) -> dict[str, Any]:
    row = next(r for r in result.ridge if r["best"])
    return {"l2": row["l2"], "val": row["val"]["accuracy"], "test": row["test"]["accuracy"], "params": row["params"]}


def majority_accuracy(splits: Mapping[str, FeatureSplit]) -> float:
    """Test accuracy of always answering the training split's most frequent class."""
    return float(np.mean(splits["test"].labels == np.bincount(splits["train"].labels).argmax()))


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0}


def run(pair: BackbonePair, ds: data.Dataset, size: BenchSize, cache_dir: Path) -> dict[str, Any]:
    """Embed ``ds``'s one split ``all`` (cached under ``cache_dir``), then compare the three per seed."""
    t = time.perf_counter()
    hit: list[bool] = []
    options = features.ExtractOptions(cache_dir=cache_dir, need_maps=True, batch_size=size.feature_batch)
    every = features.extract_features(BackboneSource.of(pair.flax), ds, "all", options,
                                      progress=lambda p: hit.append(p.cached))
    feature_s = time.perf_counter() - t
    seeds = []
    for seed in range(size.q_seeds):
        splits = resplit(every, seed)
        t = time.perf_counter()
        result = run_sweep(dataclasses.replace(size.q_sweep, data_seed=seed), splits, num_classes=ds.num_classes)
        sweep_s = time.perf_counter() - t
        seeds.append({"seed": seed, "sizes": {k: len(s) for k, s in splits.items()},
                      "jaxheads": recommended(result) | {"sweep_s": sweep_s, "members": len(result.members)},
                      "ridge": best_ridge(result), "logreg": logreg_probe(splits, size.q_logreg_c),
                      "majority": majority_accuracy(splits)})
    summary = {k: _stats([s[k]["test"] for s in seeds]) for k in ("jaxheads", "ridge", "logreg")}
    summary["majority"] = _stats([s["majority"] for s in seeds])
    return {"dataset": ds.name, "images": len(every), "feature_s": feature_s, "feature_cache_hit": any(hit),
            "sweep": size.q_sweep.to_dict(),
            "split": {"train": 0.6, **FRACTIONS}, "seeds": seeds, "test_accuracy": summary}
