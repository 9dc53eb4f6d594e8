"""Taps: pooled vectors of a backbone's intermediate outputs (its stem's and each block's, as the family names them
in ``BackboneConfig.taps``), cached per image beside the last layer's features from the same forward pass.

Which taps (``--taps``, ``ExtractOptions.taps``): ``last`` (the default) is today's feature pass alone, the last map
mean-pooled into ``pooled``, with the same cache key and bytes as before taps existed; ``all`` every tap the backbone
names; or a comma list of names (``last`` among them means the final tap). A name the backbone lacks is a one-line
error that lists its taps.

Pooling: each tap's (h, w, C) map becomes its per-channel mean and standard deviation over the positions, a (2C,)
vector (mean first). Why these two: the mean is what the last layer's global average pool keeps, so the final
tap's mean half is the ``pooled`` vector itself; the standard deviation keeps what the mean averages away, how
unevenly a channel fires across the image, which is where a thin crack or a small defect on a large uniform cell
shows up in the early, high-resolution taps (Head2Toe pools intermediate layers for a linear probe in the same
spirit). Max pooling, the other candidate, reads a single position: it is dominated by one hot pixel or one image
border artefact, and it grows with the number of positions, so a tap's max shifts with the input size while its
mean and standard deviation stay comparable across ``--input-size`` levels. Both statistics cost one pass over a
map that is already in memory, inside each micro-batch.

On disk every shard that has taps holds one ``taps.npz`` (``features.store``) with *every* tap of the backbone, so
asking for other taps later never runs the backbone again; a tap request only adds that file to shards whose
plain features are already complete, and never rewrites them.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

__all__ = ["ALL", "LAST", "parse_taps", "pool_tap", "resolve_taps"]

LAST = "last"
ALL = "all"


def parse_taps(text: str | Sequence[str]) -> tuple[str, ...]:
    """``--taps`` text (``last``, ``all``, ``a,b``) or a sequence of names as a tuple of stripped names."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ValueError(f"--taps {text!r}: expected 'last', 'all' or comma-separated tap names")
    return tuple(names)


def resolve_taps(request: Sequence[str], known: Sequence[str], backbone: str) -> tuple[str, ...]:
    """The taps to keep beside ``pooled`` for ``request`` (:func:`parse_taps`'s names) on a backbone whose taps are
    ``known`` (input to output): () for ``last`` alone, else the names in the backbone's order."""
    if tuple(request) == (LAST,):
        return ()
    if not known:
        raise ValueError(f"--taps {','.join(request)}: backbone {backbone} names no taps; only 'last' works")
    wanted = set(known) if ALL in request else {known[-1] if n == LAST else n for n in request}
    unknown = sorted(wanted - set(known))
    if unknown:
        raise ValueError(f"--taps {','.join(request)}: {backbone} has no tap {unknown[0]!r}; its taps: "
                         f"{', '.join(known)} (or 'last', 'all')")
    return tuple(n for n in known if n in wanted)


def pool_tap(maps: jax.Array) -> jax.Array:
    """(N, h, w, C) -> (N, 2C) float32: the per-channel mean, then the standard deviation, over the positions."""
    x = maps.astype(jnp.float32)
    return jnp.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=-1)
