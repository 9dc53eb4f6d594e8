"""A chosen head on disk: an orbax checkpoint (through :mod:`jaxheads.checkpoint`) and a ``jax.export`` file.

* ``save_head(path, spec, variables, feature_shape, *, label_names=None, extra=None)`` writes the variables
  pytree with ``{"kind": "jaxheads.head", "spec", "feature_shape", "label_names", ...extra}`` as meta.
* ``load_head(path) -> (spec, variables, apply_fn)``: ``apply_fn(variables, x) -> logits`` is jitted and pure,
  so it composes with ``jax.jit``, ``jax.vmap`` and ``jax.grad`` (with respect to the variables or the input).
* ``export_head(path, spec, variables, feature_shape)`` serialises inference (weights baked in, symbolic batch
  size) with ``jax.export``; :func:`load_exported` needs only ``jax`` — the file runs without jaxheads::

      exp = jax.export.deserialize(open(path, "rb").read()); logits = exp.call(x)

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

from jaxheads import backbones, checkpoint
from jaxheads.heads.head import Variables, apply_head
from jaxheads.heads.spec import HeadSpec, check_input

KIND = "jaxheads.head"
PROVENANCE_FIELDS = ("backbone", "weights", "weights_id")
"""The meta fields `jaxheads sweep` writes so that a head's backbone can be rebuilt."""
RANDOM_INIT_PREFIX = "random-seed"
"""``backbones.load(name, None, seed=N)`` names its weights ``random-seed{N}``."""


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
    """(spec, variables, apply_fn) of a head written by :func:`save_head`; ``meta`` is in ``load_meta``."""
    tree, meta = checkpoint.load(path)
    if meta.get("kind") != KIND:
        raise ValueError(f"{path} is not a jaxheads head checkpoint (meta kind {meta.get('kind')!r})")
    spec = HeadSpec.from_dict(meta["spec"])
    tree.setdefault("batch_stats", {})
    variables = jax.tree.map(jnp.asarray, tree)
    return spec, variables, make_apply_fn(spec)


def load_meta(path: str | Path) -> dict[str, Any]:
    """The meta dict of a saved head (spec, feature_shape, label_names, extras)."""
    return checkpoint.load_meta(path)


@functools.lru_cache(maxsize=32)
def make_apply_fn(spec: HeadSpec) -> Callable[[Variables, jax.Array], jax.Array]:
    """Jitted inference ``apply_fn(variables, x) -> logits`` for ``spec`` (eval mode: running BN stats, no
    dropout)."""
    return jax.jit(lambda variables, x: apply_head(variables, x, spec, train=False))


def export_head(path: str | Path, spec: HeadSpec, variables: Variables, feature_shape: Sequence[int]) -> Path:
    """Serialise ``x -> logits`` with the weights as constants and a symbolic batch dimension; returns ``path``.

    The file is StableHLO plus calling convention (``jax.export``): load it with ``jax.export.deserialize`` in
    any process with a compatible jax, no jaxheads import needed."""
    check_input(spec, feature_shape)
    consts = jax.tree.map(jnp.asarray, variables)
    (batch,) = jax.export.symbolic_shape("b")
    arg = jax.ShapeDtypeStruct((batch, *(int(d) for d in feature_shape)), jnp.float32)
    exported = jax.export.export(jax.jit(lambda x: apply_head(consts, x, spec, train=False)))(arg)
    path = Path(path)
    checkpoint.write_bytes_atomic(path, exported.serialize())
    return path


def load_exported(path: str | Path) -> Callable[[Any], jax.Array]:
    """``x -> logits`` from a file written by :func:`export_head` (what a jaxheads-free user does)."""
    exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
    return lambda x: exported.call(np.asarray(x, np.float32))


@dataclasses.dataclass(frozen=True)
class SweptHead:
    """A head written by ``jaxheads sweep``: its spec, variables (host arrays), meta and directory."""

    path: Path
    spec: HeadSpec
    variables: Variables
    meta: dict[str, Any]

    @property
    def label_names(self) -> list[str]:
        """The saved class names, or "0", "1", ... when the head was saved without them."""
        return list(self.meta.get("label_names") or [str(i) for i in range(self.spec.num_classes)])

    def input_size(self, backbone: backbones.Backbone) -> int:
        """The image side the head was trained at (``jaxheads sweep --input-size``), else the backbone's own."""
        return int(self.meta.get("input_size") or backbone.config.preprocessing.input_size)


def read_swept_head(path: str | Path) -> SweptHead:
    """The head in ``path``; its meta must name the backbone it was trained on (as `jaxheads sweep` writes)."""
    spec, variables, _ = load_head(path)
    meta = load_meta(path)
    for field in PROVENANCE_FIELDS:
        if field not in meta:
            raise ValueError(f"{path}: head meta has no {field!r} (was it written by `jaxheads sweep`?)")
    if meta.get("representation", "last") != "last":  # its input is standardised taps, which nothing rebuilds yet
        raise ValueError(f"{path}: the head reads the {meta['representation']!r} representation (backbone taps), "
                         "which predict and finetune do not rebuild yet; sweep with --representation last for one "
                         "they can")
    return SweptHead(Path(path), spec, jax.tree.map(np.asarray, variables), meta)


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
    weights, seed = backbone_load_args(meta)
    backbone = backbones.load(meta["backbone"], weights, seed=seed)
    if backbone.weights_id != meta["weights_id"]:
        raise ValueError(f"{head.path}: head was trained on {meta['backbone']} weights {meta['weights_id']}, but "
                         f"these weights are {backbone.weights_id}")
    return backbone


def load_swept_head(path: str | Path) -> tuple[SweptHead, backbones.Backbone]:
    """:func:`read_swept_head` and :func:`load_backbone_of` in one call."""
    head = read_swept_head(path)
    return head, load_backbone_of(head)
