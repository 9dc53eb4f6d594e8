"""Depthwise convolution as a sum of k*k shifted, per-channel-scaled views of the input.

XLA's CPU backend lowers a grouped convolution with one group per channel to a slow generic loop; the same
operation written as k*k multiply-adds fuses into one elementwise kernel and runs several times faster on CPU
(figures: experiments/README.md, "Convolutions on XLA's CPU backend"). On accelerators both forms are fine. The
kernel keeps Flax's grouped-conv layout (k, k, 1, C); the Flax module around it is ``keras_layers.DepthwiseConv``.

A strided convolution reads its views through a (rows/s, s, cols/s, s) phase reshape of the padded input, so every
view is a contiguous slice of one phase instead of a strided slice: the same products in the same order (bit-identical
results), faster on XLA's CPU backend (by how much: experiments/README.md, "Feature-pass speed").
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Pads = Sequence[tuple[int, int]]


def _phase_views(x: jax.Array, k_h: int, k_w: int, stride: int) -> list[list[jax.Array]]:
    """The k_h x k_w (out_h, out_w) views of a padded NHWC ``x`` that a ``stride`` convolution reads, as slices of
    its stride x stride phases (rows and columns padded with zeros up to a multiple of the stride first)."""
    out_h = (x.shape[1] - k_h) // stride + 1
    out_w = (x.shape[2] - k_w) // stride + 1
    x = jnp.pad(x, ((0, 0), (0, -x.shape[1] % stride), (0, -x.shape[2] % stride), (0, 0)))
    n, h, w, c = x.shape
    phases = x.reshape(n, h // stride, stride, w // stride, stride, c)
    views = [[phases[:, i // stride:i // stride + out_h, i % stride, j // stride:j // stride + out_w, j % stride]
              for j in range(k_w)] for i in range(k_h)]
    return views


def _strided_views(x: jax.Array, k_h: int, k_w: int, stride: int) -> list[list[jax.Array]]:
    """The same views as :func:`_phase_views`, as strided slices of ``x``."""
    out_h = (x.shape[1] - k_h) // stride + 1
    out_w = (x.shape[2] - k_w) // stride + 1
    return [[x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride, :]
             for j in range(k_w)] for i in range(k_h)]


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, stride: int, pads: Pads, *, phases: bool = True) -> jax.Array:
    """(N, H, W, C) * (k, k, 1, C) -> (N, H', W', C) with explicit (low, high) padding per spatial axis; a strided
    one reads its views through a phase reshape unless ``phases`` is False (strided slices, the same numbers)."""
    k_h, k_w = kernel.shape[0], kernel.shape[1]
    x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    if stride > 1 and phases:
        views = _phase_views(x, k_h, k_w, stride)
    else:
        views = _strided_views(x, k_h, k_w, stride)
    kernel = kernel.astype(x.dtype)
    out = None
    for i in range(k_h):
        for j in range(k_w):
            term = views[i][j] * kernel[i, j, 0].reshape(1, 1, 1, -1)
            out = term if out is None else out + term
    return out
