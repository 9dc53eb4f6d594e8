"""The heads' random numbers: a counter-based hash of (seed words, salt, row, column) instead of jax.random.

A value depends on its coordinates only, never on the array's shape, so a member padded to a wider group draws
exactly the numbers its standalone head draws (init and dropout), and a batch split over devices draws what the
whole batch draws. It is also cheap to compile, where jax.random's threefry adds XLA compile time at every call
site and a sweep has one per layer per program (figure: experiments/README.md, "Hash-based random numbers").
:mod:`jaxheads.heads` re-exports the public names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
_GOLDEN = 0x9E3779B9


def _mix(x: Array) -> Array:
    """A 32-bit integer finaliser (xorshift-multiply; full avalanche): uint32 -> uint32."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def seed_words(rng: Array | int) -> Array:
    """(2,) uint32 seed words of a jax PRNG key (typed, or its raw data), of (2,) words, or of an int seed."""
    if isinstance(rng, (int, np.integer)):
        return jnp.asarray([int(rng) & 0xFFFFFFFF, 0], jnp.uint32)
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    words = jnp.asarray(rng).astype(jnp.uint32).reshape(-1)
    if words.shape[0] == 1:
        return jnp.stack([words[0], jnp.uint32(0)])
    return words if words.shape[0] == 2 else jnp.stack([words[0], words[-1]])


def fold(words: Array, data: Array | int) -> Array:
    """New (2,) seed words from ``words`` and an integer (e.g. the step): independent streams per value."""
    data = jnp.asarray(data).astype(jnp.uint32)
    return jnp.stack([_mix(words[0] ^ _mix(data + jnp.uint32(_GOLDEN))), _mix(words[1] + data)])


def hash_uniform(words: Array, salt: Array | int, shape: tuple[int, int], row_offset: Array | int = 0) -> Array:
    """Uniform [0, 1) float32 of ``shape`` whose (i, j) entry depends only on (words, salt, row_offset + i, j).
    ``salt`` may be traced (a depth-gated member's output layer salt depends on its true depth)."""
    h = _mix(_mix(words[0] + jnp.asarray(salt).astype(jnp.uint32) * jnp.uint32(_GOLDEN)) ^ words[1])
    rows = lax.broadcasted_iota(jnp.uint32, shape, 0) + jnp.asarray(row_offset).astype(jnp.uint32)
    cols = lax.broadcasted_iota(jnp.uint32, shape, 1)
    bits = _mix(_mix(h ^ _mix(rows + jnp.uint32(0x632BE5AB))) ^ cols)
    return (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


_TRUNC = 0.9544997361036416  # erf(2 / sqrt(2)): the mass of a unit normal within ±2σ


def truncated_normal(words: Array, salt: Array | int, shape: tuple[int, int]) -> Array:
    """Unit normal truncated to [-2, 2] by inverting its CDF on :func:`hash_uniform` draws."""
    u = hash_uniform(words, salt, shape)
    return jnp.sqrt(2.0).astype(jnp.float32) * lax.erf_inv((2.0 * u - 1.0) * _TRUNC)
