"""Winograd F(2x2, 3x3) convolution: a 3x3 stride-1 convolution as 16 channel matrix products.

Each 2x2 block of outputs is computed from a 4x4 input tile (tiles overlap by 2) as
``Y = A^T [(G g G^T) * (B^T d B)] A``: the input transform ``B^T d B`` and the output transform are adds
and subtracts, and the elementwise product over the 4x4 transformed tile, summed over input channels, is 16
independent (tiles, C) x (C, O) matrix products. That is 16 multiplies per 4 outputs instead of 36, a 2.25x
cut in the multiply work, where XLA's CPU direct convolution already runs near its matmul peak. Rounding
stays at float32 level (max |diff| ~5e-6 on unit-scale outputs with 512 channels): the transforms only use
1, 1/2 and sums of at most 4 terms (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015).
F(4x4, 3x3) was tried too: ten times the rounding error (~1e-4) and no faster on CPU.

The 16 transformed tiles stay separate arrays, each feeding its own matrix product: on XLA's CPU backend
stacking them into one (16, tiles, C) batch for a batched product costs more than the products themselves.
When to use it is decided by :func:`jaxheads.backbones.keras_layers.winograd_pays`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Pads = Sequence[tuple[int, int]]

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)
"""Filter transform: U = G g G^T, (3, 3) -> (4, 4)."""


def _input_transform(d: Sequence[jax.Array]) -> list[jax.Array]:
    """B^T applied along one tile axis to its four slices: B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]."""
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _output_transform(m: Sequence[jax.Array]) -> list[jax.Array]:
    """A^T applied along one tile axis to its four slices: A^T = [[1,1,1,0],[0,1,-1,-1]]."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _tile_slices(a: jax.Array, axis: int, tiles: int) -> list[jax.Array]:
    """``a[i : i + 2 * tiles : 2]`` along ``axis`` for i = 0..3 (``a`` has 2 * tiles + 2 entries there),
    read through an even/odd reshape rather than strided slices (faster on XLA's CPU backend)."""
    pairs = a.reshape(a.shape[:axis] + (tiles + 1, 2) + a.shape[axis + 1:])
    lead = (slice(None),) * axis
    return [pairs[lead + (slice(i // 2, i // 2 + tiles), i % 2)] for i in range(4)]


def winograd_conv3x3(x: jax.Array, kernel: jax.Array, pads: Pads) -> jax.Array:
    """(N, H, W, C) * (3, 3, C, O) -> (N, H', W', O): stride-1 convolution with explicit (low, high) pads.

    Equals ``lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))``
    up to float rounding. Odd output sizes are handled by padding one more row/column and cropping.
    """
    n, h, w, _ = x.shape
    out_h, out_w = h + sum(pads[0]) - 2, w + sum(pads[1]) - 2
    tiles_h, tiles_w = -(-out_h // 2), -(-out_w // 2)
    (top, bottom), (left, right) = pads
    xp = jnp.pad(x, ((0, 0), (top, bottom + 2 * tiles_h - out_h), (left, right + 2 * tiles_w - out_w), (0, 0)))
    u = jnp.einsum("ai,ijco,bj->abco", _G, kernel.astype(x.dtype), _G)
    m = [[None] * 4 for _ in range(4)]
    for j, column in enumerate(_input_transform(_tile_slices(xp, 2, tiles_w))):
        for i, v in enumerate(_input_transform(_tile_slices(column, 1, tiles_h))):
            m[i][j] = jnp.einsum("nhwc,co->nhwo", v, u[i, j])
    columns = [_output_transform([m[i][j] for i in range(4)]) for j in range(4)]
    y = [_output_transform([columns[j][p] for j in range(4)]) for p in range(2)]
    y = jnp.stack([jnp.stack(y[p], axis=3) for p in range(2)], axis=2)
    return y.reshape(n, 2 * tiles_h, 2 * tiles_w, -1)[:, :out_h, :out_w]
