"""Depthwise convolution as a sum of k*k shifted, per-channel-scaled views of the input.

XLA's CPU backend lowers a grouped convolution with one group per channel to a slow generic loop; the same
operation written as k*k multiply-adds fuses into one elementwise kernel and runs several times faster on CPU
(figures: experiments/README.md, "Convolutions on XLA's CPU backend"). On accelerators both forms are fine. The
kernel keeps Flax's grouped-conv layout (k, k, 1, C); the Flax module around it is ``keras_layers.DepthwiseConv``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Pads = Sequence[tuple[int, int]]


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, stride: int, pads: Pads) -> jax.Array:
    """(N, H, W, C) * (k, k, 1, C) -> (N, H', W', C) with explicit (low, high) padding per spatial axis."""
    k_h, k_w = kernel.shape[0], kernel.shape[1]
    x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    out_h = (x.shape[1] - k_h) // stride + 1
    out_w = (x.shape[2] - k_w) // stride + 1
    kernel = kernel.astype(x.dtype)
    out = None
    for i in range(k_h):
        for j in range(k_w):
            view = x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride, :]
            term = view * kernel[i, j, 0].reshape(1, 1, 1, -1)
            out = term if out is None else out + term
    return out

