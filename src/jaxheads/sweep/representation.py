"""The representation as a sweep axis: which pooled vector the heads read, from the backbone's taps.

A level (``--representation``, ``JobOptions.representation``) names the vector that replaces
``FeatureSplit.pooled`` for that level's sweep (:mod:`jaxheads.sweep.variants` runs one sweep per level and merges
them on a ``representation`` factor, so "Representation: last vs all" is a head question):

- ``last``: today's features, the last map's global average, untouched (the plain sweep bit for bit);
- a tap name (``block12``): that tap's mean+std vector (:mod:`jaxheads.features.taps`) alone; against ``last``
  it answers the backbone-depth question "cut at block k vs the full backbone";
- ``last-K``: the last K taps concatenated; ``all``: every tap concatenated;
- ``select:F``: Head2Toe-style (Evci et al. 2022), the fraction F of ``all``'s features that a ridge fit on the
  training rows ranks most relevant (the row norms of its weight matrix);
- ``stages``: shorthand for ``last`` and the end of every resolution stage (the last tap before each downsampling,
  :func:`jaxheads.backbones.cut.stage_ends`), each alone: the depth question in one flag.

Every tap level is standardised feature by feature (so each tap is too: zero mean, unit variance) with statistics
of the rows the heads train on: the train split, or with folds the train+val pool. Why that pool is honest enough
with folds: the engine trains every fold on one shared feature matrix, so per-fold statistics would need a matrix
per fold; a mean and a standard deviation read no label, and every pooled row is a training row of K-1 of the K
folds, so a fold's own statistics differ from the pool's by sampling noise only. Test rows never enter them.
Selection does read labels, so it needs the fixed split (``--folds none``): with folds it is refused in one line.

Heads that pool a feature map (``--pooling`` avg, max, flatten...) read the last map at every level, so they run
at the ``last`` level only. A sweep with no head reading pooled vectors (the default grid) gets one at every level,
``last`` included, so the levels are compared on the same head: a linear probe (:func:`probe_members`) trained as
the grid's first average-pooled config is (the classic layer-by-layer probe of the depth question).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from jaxheads.features.split import FeatureSplit
from jaxheads.sweep.spec import MemberSpec, SweepSpec

__all__ = ["ALL", "LAST", "STAGES", "LevelInput", "check_levels", "expand_stages", "level_input", "level_splits",
           "level_sweeps", "level_taps", "needs_taps", "parse_levels", "probe_members", "select_features",
           "standardisation", "standardise"]

LAST = "last"
ALL = "all"
SELECT = "select:"
STAGES = "stages"
LEVEL_FORMS = "last, a tap name, last-K, all, select:F or stages"


def expand_stages(levels: Sequence[str], ends: Sequence[str]) -> tuple[str, ...]:
    """``levels`` with ``stages`` replaced by ``last`` and the stage-end taps ``ends`` (duplicates dropped, the
    order kept)."""
    out: list[str] = []
    for level in levels:
        for name in ((LAST, *ends) if level == STAGES else (level,)):
            if name not in out:
                out.append(name)
    return tuple(out)


def parse_levels(text: str | Sequence[str]) -> tuple[str, ...]:
    """``--representation`` text (``"last,all"``) or names as distinct stripped levels, in the order given."""
    levels = tuple(n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip())
    if not levels or len(set(levels)) != len(levels):
        raise ValueError(f"--representation {text!r}: expected distinct comma-separated levels ({LEVEL_FORMS})")
    return levels


def needs_taps(levels: Sequence[str]) -> bool:
    """Whether some level reads the taps (then the feature pass must cache them)."""
    return any(level != LAST for level in levels)


def _fraction(level: str) -> float:
    """F of ``select:F``: a number in (0, 1]."""
    try:
        value = float(level[len(SELECT):])
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise ValueError(f"--representation {level}: select:F keeps a fraction F in (0, 1], e.g. select:0.1")
    return value


def level_taps(level: str, known: Sequence[str], backbone: str = "the backbone") -> tuple[str, ...]:
    """The taps (in the backbone's order) a level reads: () for ``last``; a one-line error listing ``known``
    for a level the backbone cannot give."""
    if level == LAST:
        return ()
    listing = f"its taps: {', '.join(known) or 'none'} (levels: {LEVEL_FORMS})"
    if not known:
        raise ValueError(f"--representation {level}: {backbone} names no taps; only 'last' works")
    if level.startswith(SELECT):
        _fraction(level)  # a bad F fails here, before any data is read
    if level == ALL or level.startswith(SELECT):
        return tuple(known)
    if level.startswith("last-"):
        k = level[len("last-"):]
        if not k.isdigit() or not 1 <= int(k) <= len(known):
            raise ValueError(f"--representation {level}: last-K takes K from 1 to {len(known)}; {listing}")
        return tuple(known[-int(k):])
    if level not in known:
        raise ValueError(f"--representation {level}: {backbone} has no tap {level!r}; {listing}")
    return (level,)


def check_levels(levels: Sequence[str], known: Sequence[str], backbone: str) -> None:
    """Every level against the backbone's taps (before any data is read): one line for the first bad one."""
    for level in levels:
        if level == STAGES and not known:
            raise ValueError(f"--representation {level}: {backbone} names no taps; only 'last' works")
        if level != STAGES:
            level_taps(level, known, backbone)


def standardisation(fit_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) float64 (D,) of ``fit_rows`` (M, D): per feature; a constant feature keeps scale 1 (like
    StandardScaler). Apart from :func:`standardise` so a saved head can record what its input was scaled by."""
    fit = np.asarray(fit_rows, np.float64)
    mean, scale = fit.mean(axis=0), fit.std(axis=0)
    return mean, np.where(scale > 1e-6 * max(float(scale.max(initial=0.0)), 1e-30), scale, 1.0)


def standardise(x: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    """``x`` (N, D) centred and scaled per feature by the mean and standard deviation of ``fit_rows`` (M, D) alone
    (:func:`standardisation`)."""
    mean, scale = standardisation(fit_rows)
    return ((np.asarray(x, np.float64) - mean) / scale).astype(np.float32)


def select_features(x: np.ndarray, labels: np.ndarray, fraction: float, num_classes: int) -> np.ndarray:
    """The columns of standardised training rows ``x`` (N, D) to keep: the ceil(fraction * D) whose rows of a ridge
    solution W (D, C) onto the labels (one-hot, or the multilabel matrix) have the largest norms, ascending.
    λ = N: with standardised features Xᵀ X has trace N·D, so λ shrinks the directions of below-average variance."""
    from jaxheads import probe

    labels = np.asarray(labels)
    y = labels.astype(np.float32) if labels.ndim == 2 else np.eye(num_classes, dtype=np.float32)[labels]
    cache = probe.fit_ridge_eig(np.asarray(x, np.float32), y, standardize=False)
    w, _ = probe.ridge_weights(cache, float(len(x)))
    relevance = np.linalg.norm(np.asarray(w), axis=1)
    keep = max(1, math.ceil(fraction * x.shape[1]))
    return np.sort(np.argsort(-relevance, kind="stable")[:keep])


def _tap_matrix(split: FeatureSplit, names: Sequence[str], split_name: str) -> np.ndarray:
    taps = split.taps or {}
    missing = [n for n in names if n not in taps]
    if missing:
        raise ValueError(f"representation: split {split_name!r} has no cached tap {missing[0]!r} (extract with "
                         "ExtractOptions(taps='all'))")
    return np.concatenate([np.asarray(taps[n], np.float32) for n in names], axis=-1)


@dataclasses.dataclass(frozen=True)
class LevelInput:
    """How a tap level's vector is made from the pooled taps (what a saved head records to rebuild it): the
    ``taps`` concatenated in this order, each row centred by ``mean`` and divided by ``scale`` (float64, (D,)),
    then the columns ``keep`` (``select:F``; None: all)."""

    taps: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    keep: np.ndarray | None = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, D) concatenated pooled taps -> (N, D') float32: the vector the level's heads read."""
        out = ((np.asarray(x, np.float64) - self.mean) / self.scale).astype(np.float32)
        return out if self.keep is None else out[:, self.keep]


def level_input(splits: Mapping[str, FeatureSplit], level: str, known: Sequence[str], *, folds: bool,
                num_classes: int) -> LevelInput:
    """The :class:`LevelInput` of a tap level, fitted on the rows heads train on (train; with folds train+val)."""
    if level.startswith(SELECT) and folds:
        raise ValueError(f"--representation {level}: a selection reads the training labels, and the folds share "
                         "one feature matrix, so each fold's val rows would choose it; use --folds none")
    names = level_taps(level, known)
    fit = np.concatenate([_tap_matrix(splits[n], names, n) for n in (("train", "val") if folds else ("train",))
                          if n in splits])
    mean, scale = standardisation(fit)
    made = LevelInput(names, mean, scale)
    if level.startswith(SELECT):
        train = made.apply(_tap_matrix(splits["train"], names, "train"))
        made = dataclasses.replace(made, keep=select_features(train, splits["train"].labels, _fraction(level),
                                                              num_classes))
    return made


def level_splits(splits: Mapping[str, FeatureSplit], level: str, known: Sequence[str], *, folds: bool,
                 num_classes: int) -> dict[str, FeatureSplit]:
    """The splits one level's sweep trains on: ``last`` returns them as they are; a tap level replaces every
    split's ``pooled`` with its standardised tap vector (:func:`level_input`; no maps, no views: pooled heads
    only)."""
    if level == LAST:
        return dict(splits)
    made = level_input(splits, level, known, folds=folds, num_classes=num_classes)
    return {name: FeatureSplit(split.labels, made.apply(_tap_matrix(split, made.taps, name)))
            for name, split in splits.items()}


def probe_members(members: Sequence[MemberSpec]) -> tuple[MemberSpec, ...]:
    """A linear probe on pooled vectors for every seed and fold of the first config that average-pools the map
    with no conv stage (else the first config): its training settings, its seeds and folds, no hidden layer."""
    def config(m: MemberSpec) -> MemberSpec:
        return dataclasses.replace(m, seed=0, fold=None)

    plain = [m for m in members if m.head.pooling == "avg" and not m.head.conv] or list(members)
    first = config(plain[0])
    linear = dataclasses.replace(first.head, pooling="none", conv=(), hidden=(), dropout=0.0, norm="none")
    return tuple(dataclasses.replace(m, head=linear) for m in members if config(m) == first)


def level_sweeps(sweep: SweepSpec, levels: Sequence[str], num_classes: int, task: str) -> dict[str, SweepSpec]:
    """The sweep each level runs: ``last`` the whole sweep; a tap level its heads that read pooled vectors (every
    head, when none reads maps: the same spec). When no head reads pooled vectors, every level gets
    :func:`probe_members` (at ``last`` beside the whole grid), so the levels still answer the same question."""
    members = sweep.expand(num_classes, task)
    pooled = tuple(m for m in members if m.head.feature_kind == "pooled")
    probes = () if pooled or not needs_taps(levels) else probe_members(members)
    out = {}
    for level in levels:
        if level == LAST:
            out[level] = dataclasses.replace(sweep, members=(*members, *probes)) if probes else sweep
        elif probes:
            out[level] = dataclasses.replace(sweep, members=probes)
        else:
            out[level] = sweep if len(pooled) == len(members) else dataclasses.replace(sweep, members=pooled)
    return out
