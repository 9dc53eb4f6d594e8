"""K-fold cross-validation as data: train and val pooled, and a fold id per pooled example.

A fold member trains on the rows of the other folds and is scored on its own, so every pooled example is
validated once per config and seed. Folds are stratified by class (multilabel: by the rarest positive label of a
row) and drawn from ``data_seed``, so they repeat exactly.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from jaxheads.features.split import FeatureSplit


def _strata(labels: np.ndarray) -> np.ndarray:
    """One stratum per row: its class, or (multilabel) its rarest positive label (-1 for none)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels.astype(np.int64)
    counts = labels.sum(axis=0)
    rarity = np.where(labels > 0, counts[None, :], np.inf)
    return np.where(labels.any(axis=1), np.argmin(rarity, axis=1), -1)


def check_folds(labels: np.ndarray, folds: int, label_names: Sequence[str] | None = None) -> None:
    """``folds`` must not exceed the smallest class (every fold then holds each class); a one-line error naming
    the flag otherwise."""
    strata, counts = np.unique(_strata(labels), return_counts=True)
    smallest = int(np.argmin(counts))
    if folds > counts[smallest]:
        name = strata[smallest]
        if label_names is not None and 0 <= name < len(label_names):
            name = label_names[name]
        raise ValueError(f"--folds {folds}: larger than the smallest class ({name!r} has {counts[smallest]} "
                         f"examples in train+val)")


def assign_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N,) fold id of every row: each stratum shuffled with ``seed`` and dealt round-robin over the folds."""
    strata = _strata(labels)
    rng = np.random.default_rng([seed, folds])
    fold_of = np.empty(len(strata), np.int64)
    offset = 0
    for stratum in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == stratum))
        fold_of[rows] = (offset + np.arange(len(rows))) % folds
        offset += len(rows)  # continue the deal so small strata do not all start at fold 0
    return fold_of


def _join(a: FeatureSplit, b: FeatureSplit) -> FeatureSplit:
    join = lambda x, y: None if x is None else np.concatenate([np.asarray(x), np.asarray(y)])  # noqa: E731
    return FeatureSplit(labels=join(a.labels, b.labels), pooled=join(a.pooled, b.pooled), maps=join(a.maps, b.maps))


def pooled_splits(splits: Mapping[str, FeatureSplit]) -> dict[str, FeatureSplit]:
    """train and val concatenated as one pool that is both "train" and "val"; "test" kept as it is. Augmented
    views (``FeatureSplit.views``) are pooled view by view; train and val must then have as many."""
    train, val = splits["train"], splits["val"]
    if len(train.views or ()) != len(val.views or ()):
        raise ValueError(f"folds pool train and val: train has {len(train.views or ())} augmented views, val "
                         f"{len(val.views or ())} (extract both with view_splits=('train', 'val'))")
    pool = _join(train, val)
    if train.views:
        pool = FeatureSplit(pool.labels, pool.pooled, pool.maps, tuple(map(_join, train.views, val.views)))
    out = {"train": pool, "val": pool}
    if "test" in splits:
        out["test"] = splits["test"]
    return out
