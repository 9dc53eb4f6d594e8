"""Depthwise convolution as a sum of k*k shifted, per-channel-scaled views of the input.

XLA's CPU backend lowers a grouped convolution with one group per channel to a slow generic loop; the same
operation written as k*k multiply-adds fuses into one elementwise kernel and runs 3-17x faster on CPU (measured
on the EfficientNet-Lite0 layer shapes, batch 32). On accelerators both forms are fine. Parameters keep Flax's
grouped-conv layout (k, k, 1, C), so converters and checkpoints are unchanged.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
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


class DepthwiseConv(nn.Module):
    """Drop-in for ``nn.Conv(C, (k, k), stride, padding=pads, feature_group_count=C)``: same params, faster on CPU."""

    kernel_size: int
    stride: int
    padding: Pads
    use_bias: bool = False
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, channels))
        y = depthwise_conv2d(x, kernel, self.stride, self.padding)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (channels,)).reshape(1, 1, 1, -1)
        return y
