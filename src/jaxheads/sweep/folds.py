"""K-fold cross-validation as data: train and val pooled, and a fold id per pooled example.

A fold member trains on the rows of the other folds and is scored on its own, so every pooled example is
validated once per config and seed. Folds are stratified by class (multilabel: by the rarest positive label of a
row) and drawn from ``data_seed``, so they repeat exactly.

Repeated cross-validation (``SweepSpec.repeats`` R > 1) draws R independent partitions; ``fold_of`` is then (R, N)
and a member's fold is a global id r * K + k (fold k of partition r). Partition 0 is the unrepeated one, so R = 1
is exactly plain K-fold, and (N,) ``fold_of`` stays the form of one partition.
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


def assign_folds(labels: np.ndarray, folds: int, seed: int, repeat: int = 0) -> np.ndarray:
    """(N,) fold id of every row: each stratum shuffled with ``seed`` (and ``repeat`` after the first partition)
    and dealt round-robin over the folds."""
    strata = _strata(labels)
    rng = np.random.default_rng([seed, folds] + ([repeat] if repeat else []))
    fold_of = np.empty(len(strata), np.int64)
    offset = 0
    for stratum in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == stratum))
        fold_of[rows] = (offset + np.arange(len(rows))) % folds
        offset += len(rows)  # continue the deal so small strata do not all start at fold 0
    return fold_of


def assign_repeats(labels: np.ndarray, folds: int, repeats: int, seed: int) -> np.ndarray:
    """(N,) fold ids for one partition (:func:`assign_folds`), else (R, N): partition 0 that one, each other its
    own deal."""
    first = assign_folds(labels, folds, seed)
    if repeats == 1:
        return first
    return np.stack([first] + [assign_folds(labels, folds, seed, r) for r in range(1, repeats)])


def partitions(fold_of: np.ndarray) -> np.ndarray:
    """(R, N): ``fold_of`` as a stack of partitions (one row for plain K-fold)."""
    return np.atleast_2d(np.asarray(fold_of))


def fold_count(fold_of: np.ndarray) -> int:
    """How many fold members one config and seed has: R * K."""
    parts = partitions(fold_of)
    return len(parts) * (int(parts.max()) + 1)


def fold_rows(fold_of: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows scored, rows trained on) by the member of global fold id ``fold`` (= r * K + k)."""
    parts = partitions(fold_of)
    r, k = divmod(int(fold), int(parts.max()) + 1)
    return np.flatnonzero(parts[r] == k), np.flatnonzero(parts[r] != k)


def min_train_rows(fold_of: np.ndarray) -> int:
    """The training rows of the fold member with the fewest (every member then runs the same steps)."""
    return min(len(fold_rows(fold_of, f)[1]) for f in range(fold_count(fold_of)))


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
