"""A chosen head on disk: an orbax checkpoint (through :mod:`jaxheads.checkpoint`) and a ``jax.export`` file.

* ``save_head(path, spec, variables, feature_shape, *, label_names=None, extra=None)`` writes the variables
  pytree with ``{"kind": "jaxheads.head", "spec", "feature_shape", "label_names", ...extra}`` as meta.
* ``load_head(path) -> (spec, variables, apply_fn)``: ``apply_fn(variables, x) -> logits`` is jitted and pure,
  so it composes with ``jax.jit``, ``jax.vmap`` and ``jax.grad`` (with respect to the variables or the input).
* ``export_head(path, spec, variables, feature_shape)`` serialises inference (weights baked in, symbolic batch
  size) with ``jax.export``; :func:`load_exported` needs only ``jax`` — the file runs without jaxheads::

      exp = jax.export.deserialize(open(path, "rb").read()); logits = exp.call(x)

* ``save_bag(path, spec, members, feature_shape, *, tap_input=None, ...)``: what ``jaxheads sweep`` saves, the
  models its test figure scored: a *bag* (the recommended config's fold models, as AutoGluon bags them) stacked
  along a leading member axis, predicting the mean of the members' probabilities (:func:`bag_logits`); a single
  model is a bag of 1. A head reading backbone taps (``--representation``) also records how its input vector is
  rebuilt (:class:`TapInput`). ``load_head`` of a bag of n > 1 gives the stacked variables and an ``apply_fn``
  whose logits are the bag's (their softmax / sigmoid is the members' mean probability). Head directories
  written before bags existed (no ``bag`` in meta) load as bags of 1.
* ``read_swept_head(path) -> SweptHead`` and ``load_backbone_of(head)``: a head written by ``jaxheads sweep``
  together with the backbone its meta records (name, weights, weights id); ``load_swept_head(path)`` does both.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads import backbones, checkpoint, metrics
from jaxheads.heads.head import Variables, apply_head
from jaxheads.heads.spec import HeadSpec, check_input

KIND = "jaxheads.head"
PROVENANCE_FIELDS = ("backbone", "weights", "weights_id")
"""The meta fields `jaxheads sweep` writes so that a head's backbone can be rebuilt."""
RANDOM_INIT_PREFIX = "random-seed"
"""``backbones.load(name, None, seed=N)`` names its weights ``random-seed{N}``."""
BAG = "bag"
"""Meta field: how many models a saved head stacks along its variables' leading axis (absent: one, unstacked)."""
INPUT = "input"
"""Tree key and meta field of a tap head's input transform (:class:`TapInput`)."""
TAP_POOL = "mean+std"
"""How each tap's map is pooled (:func:`jaxheads.features.taps.pool_tap`), as a tap head's meta records it."""


@dataclasses.dataclass(frozen=True)
class TapInput:
    """How a head that reads a tap representation gets its input vector from images, all a saved head needs to
    rebuild it (the sweep's :class:`jaxheads.sweep.representation.LevelInput` plus the level's name): run the
    backbone up to the deepest of ``taps``, pool each tap's map to its per-channel mean and std (rounded through
    float16, as the cache stores them), concatenate in this order, subtract ``mean``, divide by ``scale`` (both
    (D,), fitted on the rows the heads trained on), keep the columns ``keep`` (``select:F``; None: all)."""

    level: str
    taps: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    keep: np.ndarray | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The tree saved under :data:`INPUT`."""
        out = {"mean": np.asarray(self.mean, np.float64), "scale": np.asarray(self.scale, np.float64)}
        return out if self.keep is None else {**out, "keep": np.asarray(self.keep, np.int64)}

    def describe(self) -> dict[str, Any]:
        """The meta saved under :data:`INPUT` (the arrays' sizes; the arrays are in the checkpoint)."""
        return {"level": self.level, "taps": list(self.taps), "pool": TAP_POOL, "dims": len(self.mean),
                "selected": None if self.keep is None else len(self.keep)}

    @classmethod
    def read(cls, path: str | Path, meta: Mapping[str, Any], arrays: Mapping[str, Any]) -> TapInput:
        """The transform a head's meta and tree record; a field missing is a one-line error naming it."""
        for key in ("level", "taps", "pool"):
            if key not in meta:
                raise ValueError(f"{path}: head meta {INPUT!r} has no {key!r}")
        if meta["pool"] != TAP_POOL or "mean" not in arrays or "scale" not in arrays:
            raise ValueError(f"{path}: head meta {INPUT!r}: expected pool {TAP_POOL!r} with mean and scale arrays")
        keep = arrays.get("keep")
        return cls(str(meta["level"]), tuple(meta["taps"]), np.asarray(arrays["mean"]), np.asarray(arrays["scale"]),
                   None if keep is None else np.asarray(keep, np.int64))


def save_head(path: str | Path, spec: HeadSpec, variables: Variables, feature_shape: Sequence[int], *,
              label_names: Sequence[str] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a head as an orbax checkpoint whose meta holds everything needed to rebuild ``apply_fn``."""
    check_input(spec, feature_shape)
    if label_names is not None and len(label_names) != spec.num_classes:
        raise ValueError(f"label_names: {len(label_names)} names for {spec.num_classes} classes")
    meta = {"kind": KIND, "spec": spec.to_dict(), "feature_shape": [int(d) for d in feature_shape],
            "label_names": list(label_names) if label_names is not None else None, **(extra or {})}
    return checkpoint.save(path, variables, meta)


def load_head(path: str | Path) -> tuple[HeadSpec, Variables, Callable[[Variables, jax.Array], jax.Array]]:
    """(spec, variables, apply_fn) of a head written by :func:`save_head` or :func:`save_bag`; ``meta`` is in
    ``load_meta``. A bag of n > 1 gives its stacked variables and :func:`make_bag_apply_fn`'s ``apply_fn``."""
    spec, stacked, _, _ = _read(path)
    if _bag_size(stacked) == 1:
        return spec, jax.tree.map(lambda a: jnp.asarray(a[0]), stacked), make_apply_fn(spec)
    return spec, jax.tree.map(jnp.asarray, stacked), make_bag_apply_fn(spec)


def _read(path: str | Path) -> tuple[HeadSpec, Variables, dict[str, Any], dict[str, Any]]:
    """(spec, variables stacked along a member axis, meta, the input transform's arrays) of a saved head; a head
    saved unstacked (:func:`save_head`, or before bags existed) reads as a bag of 1."""
    tree, meta = checkpoint.load(path)
    if meta.get("kind") != KIND:
        raise ValueError(f"{path} is not a jaxheads head checkpoint (meta kind {meta.get('kind')!r})")
    spec = HeadSpec.from_dict(meta["spec"])
    arrays = tree.pop(INPUT, {})
    tree.setdefault("batch_stats", {})
    if BAG not in meta:
        tree = jax.tree.map(lambda a: np.asarray(a)[None], tree)
    elif _bag_size(tree) != int(meta[BAG]):
        raise ValueError(f"{path}: head meta says bag {meta[BAG]}, but its variables stack {_bag_size(tree)} models")
    return spec, tree, meta, arrays


def _bag_size(stacked: Variables) -> int:
    """The leading (member) axis of a stacked variables tree."""
    return int(jax.tree.leaves(stacked)[0].shape[0])


def save_bag(path: str | Path, spec: HeadSpec, members: Sequence[Variables], feature_shape: Sequence[int], *,
             label_names: Sequence[str] | None = None, extra: dict[str, Any] | None = None,
             tap_input: TapInput | None = None) -> Path:
    """Write the models a figure was scored on as one head: their variables stacked along a leading axis (meta
    ``bag``: how many), predicting the mean of their probabilities. ``members`` share ``spec`` (folds and seeds of
    one config); ``tap_input``: how a tap head's input is rebuilt (meta and tree ``input``)."""
    if not members:
        raise ValueError("save_bag: no members to save")
    stacked = jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *members)
    tree = {**stacked, **({INPUT: tap_input.arrays()} if tap_input is not None else {})}
    more = {BAG: len(members), **({INPUT: tap_input.describe()} if tap_input is not None else {})}
    check_input(spec, feature_shape)
    if label_names is not None and len(label_names) != spec.num_classes:
        raise ValueError(f"label_names: {len(label_names)} names for {spec.num_classes} classes")
    meta = {"kind": KIND, "spec": spec.to_dict(), "feature_shape": [int(d) for d in feature_shape],
            "label_names": list(label_names) if label_names is not None else None, **(extra or {}), **more}
    return checkpoint.save(path, tree, meta)


def bag_logits(logits: jax.Array, task: str) -> jax.Array:
    """(members, N, K) logits -> (N, K) logits whose probabilities (softmax / sigmoid) are the mean of the members'
    probabilities (log-sum-exp, so no probability underflows to log 0); one member's logits are returned as they
    are, so a bag of 1 predicts bit for bit what the single model does."""
    n = logits.shape[0]
    if n == 1:
        return logits[0]
    log_n = jnp.log(jnp.float32(n))
    if task == "multiclass":
        return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0) - log_n
    log_p = jax.nn.logsumexp(jax.nn.log_sigmoid(logits), axis=0)
    return log_p - jax.nn.logsumexp(jax.nn.log_sigmoid(-logits), axis=0)  # log(p / (1 - p)): the n's cancel


def apply_bag(stacked: Variables, x: jax.Array, spec: HeadSpec) -> jax.Array:
    """Inference logits of a bag (:func:`bag_logits` of every member's head on ``x``)."""
    return bag_logits(jax.vmap(lambda v: apply_head(v, x, spec, train=False))(stacked), spec.task)


def bag_probabilities(stacked: Variables, x: jax.Array, spec: HeadSpec) -> jax.Array:
    """The bag's probabilities on ``x``: the mean of its members' (softmax, or sigmoid per class)."""
    return metrics.probabilities(apply_bag(stacked, x, spec), spec.task)


def load_meta(path: str | Path) -> dict[str, Any]:
    """The meta dict of a saved head (spec, feature_shape, label_names, extras)."""
    return checkpoint.load_meta(path)


@functools.lru_cache(maxsize=32)
def make_apply_fn(spec: HeadSpec) -> Callable[[Variables, jax.Array], jax.Array]:
    """Jitted inference ``apply_fn(variables, x) -> logits`` for ``spec`` (eval mode: running BN stats, no
    dropout)."""
    return jax.jit(lambda variables, x: apply_head(variables, x, spec, train=False))


@functools.lru_cache(maxsize=32)
def make_bag_apply_fn(spec: HeadSpec) -> Callable[[Variables, jax.Array], jax.Array]:
    """Jitted ``apply_fn(stacked, x) -> logits`` of a bag (:func:`apply_bag`)."""
    return jax.jit(lambda stacked, x: apply_bag(stacked, x, spec))


def export_head(path: str | Path, spec: HeadSpec, variables: Variables, feature_shape: Sequence[int], *,
                bagged: bool = False) -> Path:
    """Serialise ``x -> logits`` with the weights as constants and a symbolic batch dimension; returns ``path``.
    ``bagged``: ``variables`` stack a bag's members (:func:`save_bag`), and the logits are the bag's.

    The file is StableHLO plus calling convention (``jax.export``): load it with ``jax.export.deserialize`` in
    any process with a compatible jax, no jaxheads import needed."""
    check_input(spec, feature_shape)
    consts = jax.tree.map(jnp.asarray, variables)
    (batch,) = jax.export.symbolic_shape("b")
    arg = jax.ShapeDtypeStruct((batch, *(int(d) for d in feature_shape)), jnp.float32)
    run = (lambda x: apply_bag(consts, x, spec)) if bagged else (lambda x: apply_head(consts, x, spec, train=False))
    exported = jax.export.export(jax.jit(run))(arg)
    path = Path(path)
    checkpoint.write_bytes_atomic(path, exported.serialize())
    return path


def load_exported(path: str | Path) -> Callable[[Any], jax.Array]:
    """``x -> logits`` from a file written by :func:`export_head` (what a jaxheads-free user does)."""
    exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
    return lambda x: exported.call(np.asarray(x, np.float32))


@dataclasses.dataclass(frozen=True)
class SweptHead:
    """A head written by ``jaxheads sweep``: its spec, meta and directory; ``bag``: every saved model's variables
    stacked (host arrays; what predict and the export run), ``variables``: one model's, the one a fine-tune starts
    from (the bag's member the sweep ranked best on its own val rows); ``tap_input``: how a tap head's input is
    rebuilt (None: the last layer's features)."""

    path: Path
    spec: HeadSpec
    variables: Variables
    meta: dict[str, Any]
    bag: Variables
    tap_input: TapInput | None = None

    @property
    def label_names(self) -> list[str]:
        """The saved class names, or "0", "1", ... when the head was saved without them."""
        return list(self.meta.get("label_names") or [str(i) for i in range(self.spec.num_classes)])

    @property
    def bag_size(self) -> int:
        """How many models the head averages (1: a single model)."""
        return _bag_size(self.bag)

    def input_size(self, backbone: backbones.Backbone) -> int:
        """The image side the head was trained at (``jaxheads sweep --input-size``), else the backbone's own."""
        return int(self.meta.get("input_size") or backbone.config.preprocessing.input_size)


def read_swept_head(path: str | Path, *, taps: bool = False) -> SweptHead:
    """The head in ``path``; its meta must name the backbone it was trained on (as `jaxheads sweep` writes).

    ``taps``: whether the caller rebuilds a tap head's input (predict and the export do); a fine-tune does not
    (it trains the backbone's last layer end to end), so there a tap head is refused in one line."""
    spec, stacked, meta, arrays = _read(path)
    for field in PROVENANCE_FIELDS:
        if field not in meta:
            raise ValueError(f"{path}: head meta has no {field!r} (was it written by `jaxheads sweep`?)")
    level = meta.get("representation") or "last"
    tap_input = None
    if level != "last":
        if not taps:
            raise ValueError(f"{path}: the head reads the {level!r} representation (backbone taps), which finetune "
                             "does not train (predict and model.jaxexport rebuild it); sweep with --representation "
                             "last for a head finetune can start from")
        if INPUT not in meta:
            raise ValueError(f"{path}: the head reads the {level!r} representation, but its meta has no {INPUT!r} "
                             "(saved before heads recorded their tap standardisation); re-run the sweep")
        tap_input = TapInput.read(path, meta[INPUT], arrays)
    best = int(meta.get("bag_best", 0))
    one = jax.tree.map(lambda a: np.asarray(a[best]), stacked)
    return SweptHead(Path(path), spec, one, meta, jax.tree.map(np.asarray, stacked), tap_input)


def backbone_load_args(meta: Mapping[str, Any]) -> tuple[Any, int]:
    """``(weights, seed)`` for ``backbones.load`` as the meta records them: a random init's seed is in its weights
    id (``random-seedN``), since the sweep's ``--seed`` also seeds ``--weights none``."""
    weights = None if meta["weights"] == "none" else meta["weights"]
    weights_id = str(meta["weights_id"])
    seed = 0
    if weights is None and weights_id.startswith(RANDOM_INIT_PREFIX):
        seed = int(weights_id[len(RANDOM_INIT_PREFIX):])
    return weights, seed


def load_backbone_of(head: SweptHead) -> backbones.Backbone:
    """The backbone ``head`` was trained on, refused if its weights are not those (features would differ)."""
    meta = head.meta
    if head.tap_input is not None:  # before the weights load: a missing tap is known from the config alone
        known = backbones.get_config(meta["backbone"]).taps
        missing = [t for t in head.tap_input.taps if t not in known]
        if missing:
            raise ValueError(f"{head.path}: the head reads tap {missing[0]!r}, which backbone {meta['backbone']} "
                             f"lacks (its taps: {', '.join(known) or 'none'})")
    weights, seed = backbone_load_args(meta)
    backbone = backbones.load(meta["backbone"], weights, seed=seed)
    if backbone.weights_id != meta["weights_id"]:
        raise ValueError(f"{head.path}: head was trained on {meta['backbone']} weights {meta['weights_id']}, but "
                         f"these weights are {backbone.weights_id}")
    return backbone


def load_swept_head(path: str | Path, *, taps: bool = False) -> tuple[SweptHead, backbones.Backbone]:
    """:func:`read_swept_head` and :func:`load_backbone_of` in one call."""
    head = read_swept_head(path, taps=taps)
    return head, load_backbone_of(head)
