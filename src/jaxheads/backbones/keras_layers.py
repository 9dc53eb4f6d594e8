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
    """Keras ``Conv2D`` (square kernel, NHWC) as an ``nn.Conv`` named ``name`` in the calling compact module.

    Params: ``kernel`` (k, k, in, out), the layout Keras uses, and ``bias`` when ``use_bias``.
    """
    pads = resolve_pads(x, kernel, stride, padding)
    layer = nn.Conv(features, (kernel, kernel), (stride, stride), padding=pads, use_bias=use_bias, name=name)
    return layer(x)


def depthwise_conv(
    x: jax.Array,
    kernel: int,
    stride: int = 1,
    padding: str | Pads = "same",
    *,
    use_bias: bool = False,
    name: str,
) -> jax.Array:
    """Keras ``DepthwiseConv2D`` with depth multiplier 1: one k x k filter per channel.

    Stored as Flax's grouped-conv kernel (k, k, 1, C); Keras stores (k, k, C, 1) and the converter reshapes.
    """
    channels = x.shape[-1]
    pads = resolve_pads(x, kernel, stride, padding)
    layer = nn.Conv(
        channels,
        (kernel, kernel),
        (stride, stride),
        padding=pads,
        feature_group_count=channels,
        use_bias=use_bias,
        name=name,
    )
    return layer(x)


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
