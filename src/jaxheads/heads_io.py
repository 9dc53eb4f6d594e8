"""A chosen head on disk: an orbax checkpoint (through :mod:`jaxheads.checkpoint`) and a ``jax.export`` file.

* ``save_head(path, spec, variables, feature_shape, *, label_names=None, extra=None)`` writes the variables
  pytree with ``{"kind": "jaxheads.head", "spec", "feature_shape", "label_names", ...extra}`` as meta.
* ``load_head(path) -> (spec, variables, apply_fn)``: ``apply_fn(variables, x) -> logits`` is jitted and pure,
  so it composes with ``jax.jit``, ``jax.vmap`` and ``jax.grad`` (with respect to the variables or the input).
* ``export_head(path, spec, variables, feature_shape)`` serialises inference (weights baked in, symbolic batch
  size) with ``jax.export``; :func:`load_exported` needs only ``jax`` — the file runs without jaxheads::

      exp = jax.export.deserialize(open(path, "rb").read()); logits = exp.call(x)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads import checkpoint
from jaxheads.heads import HeadSpec, Variables, apply_head, check_input

KIND = "jaxheads.head"


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
    return checkpoint.load(path)[1]


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
