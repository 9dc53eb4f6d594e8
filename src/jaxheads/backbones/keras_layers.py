"""Flax layers that compute exactly what their Keras counterparts compute (padding, epsilon, channel order).

Two Keras rules differ from PyTorch's and matter for bit-level parity:

* ``padding="same"`` pads ``total = max(k - s, 0)`` (when the size divides by the stride, else
  ``max(k - size % s, 0)``) and puts the odd pixel at the *end* (bottom/right). With stride 2 that is
  asymmetric, e.g. (0, 1) for a 3x3 kernel on an even size. We always pass the pads explicitly, computed
  from the static input shape, so the rule is visible here and not left to a backend default.
* BatchNormalization's epsilon is 1e-3 by default (1.001e-5 in ResNet); each family passes its own.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxheads.backbones.depthwise import depthwise_conv2d
from jaxheads.backbones.winograd import winograd_conv3x3

Pads = tuple[tuple[int, int], tuple[int, int]]


def same_pads(size: Sequence[int], kernel: int, stride: int) -> Pads:
    """Keras/TensorFlow ``"same"`` padding for a square kernel on an (h, w) input: ((top, bottom), (left, right))."""

    def one(n: int) -> tuple[int, int]:
        total = max(kernel - stride, 0) if n % stride == 0 else max(kernel - n % stride, 0)
        return total // 2, total - total // 2

    h, w = size
    return one(h), one(w)


def resolve_pads(x: jax.Array, kernel: int, stride: int, padding: str | Pads) -> Pads:
    """``"same"``, ``"valid"`` or explicit ((top, bottom), (left, right)) pads for an NHWC input ``x``."""
    if padding == "same":
        return same_pads(x.shape[1:3], kernel, stride)
    if padding == "valid":
        return (0, 0), (0, 0)
    return tuple(tuple(p) for p in padding)  # type: ignore[return-value]


WINOGRAD_MIN_CHANNELS = 128
WINOGRAD_MIN_SIZE = 14


def winograd_pays(x: jax.Array, pads: Pads) -> bool:
    """Whether a 3x3 stride-1 convolution of ``x`` runs faster as Winograd F(2x2, 3x3) on XLA's CPU backend: from
    128 input channels on output maps of at least 14x14; with fewer channels or smaller maps its 16 products are
    too short to pay. Figures: experiments/README.md, "Convolutions on XLA's CPU backend" (end to end:
    experiments/features/bench_backbones.py -> experiments/results/bench_backbones.json).
    """
    out_h, out_w = x.shape[1] + sum(pads[0]) - 2, x.shape[2] + sum(pads[1]) - 2
    return x.shape[3] >= WINOGRAD_MIN_CHANNELS and min(out_h, out_w) >= WINOGRAD_MIN_SIZE


class Conv(nn.Module):
    """Keras ``Conv2D`` (square kernel, NHWC). Params: ``kernel`` (k, k, in, out), Keras's layout, and ``bias``.

    A 1x1 convolution is computed as a matrix product over channels (after striding, when strided), which XLA's
    CPU backend runs faster than the equivalent convolution; a 3x3 stride-1 convolution as Winograd F(2x2, 3x3)
    where :func:`winograd_pays` (figures: experiments/README.md, "Convolutions on XLA's CPU backend").
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: str | Pads = "same"
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.stride
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), jnp.float32)
        if k == 1:
            y = jnp.einsum("nhwc,cd->nhwd", x[:, ::s, ::s, :] if s > 1 else x, kernel[0, 0])
        else:
            pads = resolve_pads(x, k, s, self.padding)
            if k == 3 and s == 1 and winograd_pays(x, pads):
                y = winograd_conv3x3(x, kernel, pads)
            else:
                y = jax.lax.conv_general_dilated(x, kernel, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).reshape(1, 1, 1, -1)
        return y


def conv(
    x: jax.Array,
    features: int,
    kernel: int,
    stride: int = 1,
    padding: str | Pads = "same",
    *,
    use_bias: bool = True,
    name: str,
) -> jax.Array:
    """:class:`Conv` named ``name`` in the calling compact module."""
    return Conv(features, kernel, stride, padding, use_bias, name=name)(x)


class DepthwiseConv(nn.Module):
    """Keras ``DepthwiseConv2D`` with depth multiplier 1: one k x k filter per channel.

    The kernel is stored as Flax's grouped-conv kernel (k, k, 1, C) (Keras stores (k, k, C, 1); the converter
    reshapes), and computed by :func:`jaxheads.backbones.depthwise.depthwise_conv2d` (fused shifted
    multiply-adds, which XLA's CPU backend runs faster than its grouped conv; figures in experiments/README.md).
    """

    kernel_size: int
    stride: int = 1
    padding: str | Pads = "same"
    use_bias: bool = False
    phases: bool = True
    """Strided: read the input's views through a phase reshape (faster, same numbers); False: strided slices."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, channels = self.kernel_size, self.stride, x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, channels), jnp.float32)
        out = depthwise_conv2d(x, kernel, s, resolve_pads(x, k, s, self.padding), phases=self.phases)
        if self.use_bias:
            out = out + self.param("bias", nn.initializers.zeros, (channels,), jnp.float32).reshape(1, 1, 1, -1)
        return out


def depthwise_conv(
    x: jax.Array,
    kernel: int,
    stride: int = 1,
    padding: str | Pads = "same",
    *,
    use_bias: bool = False,
    name: str,
) -> jax.Array:
    """:class:`DepthwiseConv` named ``name`` in the calling compact module."""
    return DepthwiseConv(kernel, stride, padding, use_bias, name=name)(x)


def batch_norm(x: jax.Array, train: bool, epsilon: float, momentum: float = 0.99, *, name: str) -> jax.Array:
    """Keras ``BatchNormalization`` over the channel axis with that model's epsilon and momentum.

    Params ``scale`` (Keras gamma), ``bias`` (beta); batch_stats ``mean``, ``var`` (moving mean/variance).
    """
    layer = nn.BatchNorm(use_running_average=not train, epsilon=epsilon, momentum=momentum, name=name)
    return layer(x)


def relu6(x: jax.Array) -> jax.Array:
    """Keras ``ReLU(6.0)``."""
    return jnp.clip(x, 0.0, 6.0)


def max_pool(x: jax.Array, window: int, stride: int, padding: str | Pads = "valid") -> jax.Array:
    """Keras ``MaxPooling2D``; explicit pads are filled with -inf as Keras's "same" does."""
    pads = resolve_pads(x, window, stride, padding)
    return nn.max_pool(x, (window, window), (stride, stride), padding=pads)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Keras ``GlobalAveragePooling2D``: (N, H, W, C) -> (N, C)."""
    return jnp.mean(x, axis=(1, 2))
