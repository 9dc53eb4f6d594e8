"""A group's inputs: the cached features each program reads, pooled once on the host and placed on the mesh.

Every split's array is stacked over the group's poolings (sources) to (sources, N, ...). Evaluation splits are
padded to one length with masked rows, so one evaluation program serves val and test. Given abstract splits
(``jax.ShapeDtypeStruct`` arrays, see :func:`abstract_splits`) the same functions return shapes only.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxheads import heads, parallel
from jaxheads.heads import HeadSpec
from jaxheads.features.split import FeatureSplit

from . import folds
from .plan import GroupPlan
from .spec import MemberSpec


class GroupInputs(NamedTuple):
    """A group's device-resident data (or its shapes).

    Without folds, evaluation splits are padded to one length and every member scores every row (``mask``: the
    real rows). With folds, nothing is padded: each member scores only its own rows of a split, gathered by
    ``eval_rows`` (its fold of the pool for "val"; every row for "test"), padded to one length R."""

    x: dict[str, Any]  # split -> (sources, N, ...) float32
    y: dict[str, Any]  # split -> labels
    mask: dict[str, np.ndarray]  # eval split -> (rows,) bool; with folds "val" -> (folds, R), "test" -> (R,)
    n_eval: dict[str, int]  # eval split -> its real number of rows
    idx_sharding: NamedSharding  # of an epoch's index array: the batch over "data" (and members, with folds)
    eval_rows: dict[str, np.ndarray] | None = None  # folds: "val" -> (folds, R), "test" -> (R,) row indices
    train_rows: tuple[np.ndarray, ...] | None = None  # folds: the "train" rows each fold trains on
    views: int = 1  # K: "train" holds K views of its N examples, view-major (view v of row i at v * N + i)
    view_rows: int = 0  # N: the examples of one view of "train"


def feature_shapes(split: FeatureSplit) -> dict[str, tuple[int, ...] | None]:
    """Per-example shapes of a split's cached features: {"pooled": (C,) or None, "maps": (H, W, C) or None}."""
    return {k: None if a is None else tuple(a.shape[1:]) for k, a in (("pooled", split.pooled), ("maps", split.maps))}


def split_features(split: FeatureSplit, spec: HeadSpec, name: str) -> Any:
    """The cached features ``spec`` reads from ``split``: pooled vectors for pooling "none", else the maps."""
    x = getattr(split, spec.feature_kind)
    if x is None:
        raise ValueError(f"HeadSpec.pooling: {spec.pooling!r} needs split {name!r} to carry `{spec.feature_kind}` "
                         f"features")
    return x


def check_inputs(members: Sequence[MemberSpec], splits: Mapping[str, FeatureSplit]) -> None:
    """Every member's head fits the features of every split (an error naming the field otherwise)."""
    for m in members:
        for name, split in splits.items():
            heads.check_input(m.head, split_features(split, m.head, name).shape[1:])


def _program_input(split: FeatureSplit, head: HeadSpec, name: str) -> np.ndarray | jax.ShapeDtypeStruct:
    """float32 input of ``head``'s group program on ``split``: the cached features, pooled here once on the host
    (conv-free heads) instead of at every training step."""
    x = split_features(split, head, name)
    if isinstance(x, jax.ShapeDtypeStruct):
        pooled = x if head.conv else jax.eval_shape(functools.partial(heads.pool, head), x)
        return jax.ShapeDtypeStruct(pooled.shape, np.float32)
    x = np.asarray(x, np.float32)
    return x if head.conv else np.asarray(heads.pool(head, x, xp=np), np.float32)


def _train_input(split: FeatureSplit, head: HeadSpec, name: str) -> Any:
    """The program input of a training split: view 0 (the plain images) in rows 0..N-1, then each augmented view
    (``FeatureSplit.views``) in the next N rows, so evaluation rows (< N) index the plain images."""
    parts = [_program_input(s, head, name) for s in (split, *(split.views or ()))]
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(parts) * parts[0].shape[0], *parts[0].shape[1:]), parts[0].dtype)
    return np.concatenate(parts)


def _train_labels(split: FeatureSplit) -> Any:
    """The labels of every row of :func:`_train_input`: the split's labels once per view."""
    views, labels = 1 + len(split.views or ()), split.labels
    if isinstance(labels, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((views * labels.shape[0], *labels.shape[1:]), labels.dtype)
    return np.concatenate([np.asarray(labels)] * views)


def _stack(arrays: Sequence[Any]) -> Any:
    if isinstance(arrays[0], jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(arrays),) + arrays[0].shape, arrays[0].dtype)
    return np.stack(arrays)


def _pad_rows(x: Any, rows: int, axis: int) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape[:axis] + (rows,) + x.shape[axis + 1:], x.dtype)
    return parallel.pad_to(np.asarray(x), rows, axis=axis)[0]


def _put(x: Any, sharding: NamedSharding) -> Any:
    """``jax.device_put``, or for a shape the abstract array the program will be given (same dtype rules)."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, jax.dtypes.canonicalize_dtype(x.dtype), sharding=sharding)
    return jax.device_put(np.asarray(x), sharding)


def host_inputs(plan: GroupPlan, members: Sequence[MemberSpec],
                splits: Mapping[str, FeatureSplit]) -> dict[str, Any]:
    """split -> the group's stacked program input on the host (one array per source)."""
    by_source = {members[i].head.pooling: members[i].head for i in plan.ids}
    stacked = lambda k: _stack([_program_input(splits[k], by_source[p], k) for p in plan.sources])  # noqa: E731
    out = {"train": _stack([_train_input(splits["train"], by_source[p], "train") for p in plan.sources])}
    for k, s in splits.items():  # folds: "val" is the same pool as "train", pooled once
        if k != "train":
            out[k] = out["train"] if s is splits["train"] else stacked(k)
    return out


def place_inputs(plan: GroupPlan, x: Mapping[str, Any], splits: Mapping[str, FeatureSplit],
                 fold_of: np.ndarray | None = None) -> GroupInputs:
    """The group's inputs replicated on its mesh. ``fold_of`` (folds): the fold of every row of the pool that is
    both "train" and "val"."""
    rep = parallel.replicated(plan.mesh)
    n_eval = {k: len(s) for k, s in splits.items() if k != "train"}
    per_member = P(parallel.MEMBERS, None, parallel.DATA) if plan.per_member_batches else P(None, parallel.DATA)
    views = {"views": 1 + len(splits["train"].views or ()), "view_rows": len(splits["train"])}
    if fold_of is None:
        rows = max(n_eval.values())
        return GroupInputs(
            x={k: _put(v if k == "train" else _pad_rows(v, rows, axis=1), rep) for k, v in x.items()},
            y={k: _put(_train_labels(s) if k == "train" else _pad_rows(s.labels, rows, axis=0), rep)
               for k, s in splits.items()},
            mask={k: np.arange(rows) < n for k, n in n_eval.items()}, n_eval=n_eval,
            idx_sharding=NamedSharding(plan.mesh, per_member), **views)
    placed = {"train": _put(x["train"], rep)}
    placed.update({k: placed["train"] if splits[k] is splits["train"] else _put(v, rep)
                   for k, v in x.items() if k != "train"})
    labels = {"train": _put(_train_labels(splits["train"]), rep)}  # "val" rows (< N) read view 0's labels
    labels.update({k: labels["train"] if s is splits["train"] else _put(s.labels, rep)
                   for k, s in splits.items() if k != "train"})
    eval_rows, mask, train_rows = _fold_rows(fold_of, n_eval)
    return GroupInputs(x=placed, y=labels, mask=mask, n_eval=n_eval, idx_sharding=NamedSharding(plan.mesh, per_member),
                       eval_rows=eval_rows, train_rows=train_rows, **views)


def _fold_rows(fold_of: np.ndarray, n_eval: Mapping[str, int]) -> tuple[dict, dict, tuple]:
    """(eval rows, their masks, the training rows of each fold), eval rows padded to the longest fold or split.
    ``fold_of`` (N,) or, repeated, (R, N): one entry per global fold id (:func:`.folds.fold_rows`)."""
    members = [folds.fold_rows(fold_of, f) for f in range(folds.fold_count(fold_of))]
    sizes = [len(scored) for scored, _ in members]
    width = max(sizes + [n for name, n in n_eval.items() if name != "val"])
    pad = lambda idx: np.concatenate([idx, np.zeros(width - len(idx), idx.dtype)])  # noqa: E731
    rows = {name: pad(np.arange(n)) for name, n in n_eval.items() if name != "val"}
    mask = {name: np.arange(width) < n for name, n in n_eval.items() if name != "val"}
    rows["val"] = np.stack([pad(scored) for scored, _ in members])
    mask["val"] = np.stack([np.arange(width) < n for n in sizes])
    return rows, mask, tuple(trained for _, trained in members)


def fold_eval_rows(inputs: GroupInputs, fold: int) -> np.ndarray:
    """The pool rows a member of ``fold`` is scored on."""
    return inputs.eval_rows["val"][fold][inputs.mask["val"][fold]]


def eval_selection(plan: GroupPlan, inputs: GroupInputs, split: str, slots: np.ndarray,
                   abstract: bool = False) -> tuple[Any, Any]:
    """(rows, mask) per device slot for the evaluation program, on the members' sharding (``abstract``: their
    shapes): with folds each slot's own rows of ``split`` (R of them), else a placeholder and the real rows of
    the padded split."""
    sharding = parallel.member_sharding(plan.mesh)
    if inputs.eval_rows is None:
        rows = np.zeros((len(slots), 1), np.int32)
        mask = np.broadcast_to(inputs.mask[split], (len(slots), len(inputs.mask[split])))
    elif split == "val":
        folds = np.asarray([plan.specs[max(j, 0)].fold for j in slots])
        rows, mask = inputs.eval_rows["val"][folds], inputs.mask["val"][folds]
    else:
        rows = np.broadcast_to(inputs.eval_rows[split], (len(slots), len(inputs.eval_rows[split])))
        mask = np.broadcast_to(inputs.mask[split], rows.shape)
    if abstract:
        return (jax.ShapeDtypeStruct(rows.shape, np.dtype(np.int32), sharding=sharding),
                jax.ShapeDtypeStruct(mask.shape, np.dtype(bool), sharding=sharding))
    return (jax.device_put(np.ascontiguousarray(rows, np.int32), sharding),
            jax.device_put(np.ascontiguousarray(mask), sharding))


def abstract_splits(sizes: Mapping[str, int], *, pooled: Sequence[int] | None = None,
                    maps: Sequence[int] | None = None, label_shape: Sequence[int] = (),
                    label_dtype: Any = np.int32) -> dict[str, FeatureSplit]:
    """The shapes of the features a sweep will get, as :class:`FeatureSplit`s of ``jax.ShapeDtypeStruct``:
    ``sizes`` examples per split, pooled (C,) and/or map (H, W, C) feature shapes, and per-example label shape
    (``()`` multiclass, ``(K,)`` multilabel). What ``compile_sweep`` takes."""

    def one(n: int) -> FeatureSplit:
        sds = lambda shape, dtype: None if shape is None else jax.ShapeDtypeStruct((n, *shape), dtype)  # noqa: E731
        return FeatureSplit(labels=sds(tuple(label_shape), label_dtype), pooled=sds(pooled, np.float32),
                            maps=sds(maps, np.float32))

    return {name: one(n) for name, n in sizes.items()}
