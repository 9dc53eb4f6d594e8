"""The fine-tune's on-the-fly augmentation, in JAX inside the jitted step: the policy names of
:mod:`jaxheads.data.augment` (the sweep's cached views) drawn afresh for every example of every step.

- ``flip``: a horizontal flip with probability 1/2;
- ``dihedral``: one of the 8 rotations and reflections of the square, uniformly (includes ``flip``);
- ``crop``: a random-resized crop of the (already cropped) training image: 60-100% of its area, aspect 3/4 to 4/3;
- ``scale``: a zoom in by 0-15% around a slightly moved centre;
- ``affine``: rotation, translation and scale jitter within ``affine_jitter`` (default ``AFFINE_JITTER``: ±3°, ±2%
  of the side, ±2%, Deitsch et al.'s ELPV recipe).

``crop``, ``scale`` and ``affine`` compose into one output -> input map per image, sampled bilinearly with the
edges replicated; the orientation is exact index work (transposes and reversals). Draws come from
:func:`jaxheads.heads.hash_uniform` keyed by the step's seed words and the row, so they are the same whatever the
sharding and cheap to compile. With zero jitter the resampling returns its input exactly.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxheads import heads
from jaxheads.data.augment import AFFINE_JITTER, CROP_AREA, CROP_ASPECT, SCALE_ZOOM

__all__ = ["GEOMETRIC", "augment_batch", "orient", "resample", "view_maps"]

GEOMETRIC = ("crop", "scale", "affine")
"""The names that move pixels off the grid (resampled); the others are exact index work."""


def _span(u: jax.Array, low: float, high: float) -> jax.Array:
    return low + (high - low) * u


def view_maps(u: jax.Array, size: int, policy: Sequence[str],
              jitter: tuple[float, float, float] = AFFINE_JITTER) -> jax.Array:
    """(n, 2, 3) output -> input maps (pixel-centre coordinates, x then y) of the geometric names of ``policy``,
    from ``u`` (n, 11) uniform draws (each name its own columns): the affine jitter about the centre, then the crop / scale box."""
    c = size / 2.0
    w = h = jnp.full(u.shape[:1], float(size), jnp.float32)
    cx = cy = jnp.full(u.shape[:1], c, jnp.float32)
    if "crop" in policy:
        area = size * size * _span(u[:, 0], *CROP_AREA)
        aspect = jnp.exp(_span(u[:, 1], math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1])))
        w, h = jnp.minimum(size, jnp.sqrt(area * aspect)), jnp.minimum(size, jnp.sqrt(area / aspect))
        cx, cy = _span(u[:, 2], 0.0, 1.0) * (size - w) + w / 2, _span(u[:, 3], 0.0, 1.0) * (size - h) + h / 2
    if "scale" in policy:
        zoom = _span(u[:, 4], *SCALE_ZOOM)
        shift = (1.0 - 1.0 / zoom) / 2  # the centre moves at most as far as the zoom leaves room
        cx, cy = cx + w * shift * _span(u[:, 5], -1.0, 1.0), cy + h * shift * _span(u[:, 6], -1.0, 1.0)
        w, h = w / zoom, h / zoom
    degrees, move, zoom_range = jitter if "affine" in policy else (0.0, 0.0, 0.0)
    angle = jnp.deg2rad(degrees * _span(u[:, 7], -1.0, 1.0))
    scale = 1.0 + zoom_range * _span(u[:, 8], -1.0, 1.0)
    tx, ty = move * size * _span(u[:, 9], -1.0, 1.0), move * size * _span(u[:, 10], -1.0, 1.0)
    cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
    # view q = c + R(-angle) (p - c - t) / scale; input = box centre + (q - c) * box / size
    sx, sy = w / size, h / size
    ox, oy = -c - tx, -c - ty
    row_x = jnp.stack([cos * sx, sin * sx, (cos * ox + sin * oy) * sx + cx], -1)
    row_y = jnp.stack([-sin * sy, cos * sy, (-sin * ox + cos * oy) * sy + cy], -1)
    return jnp.stack([row_x, row_y], 1)


def resample(images: jax.Array, maps: jax.Array) -> jax.Array:
    """(n, S, S, C) float32: each image sampled bilinearly at its (2, 3) map of the output pixel centres, the edges
    replicated. An identity map returns the image exactly (every weight is 0 or 1)."""
    size = images.shape[1]
    centres = jnp.arange(size, dtype=jnp.float32) + 0.5
    px, py = centres[None, :], centres[:, None]

    def one(image: jax.Array, m: jax.Array) -> jax.Array:
        x = m[0, 0] * px + m[0, 1] * py + m[0, 2] - 0.5
        y = m[1, 0] * px + m[1, 1] * py + m[1, 2] - 0.5
        x0, y0 = jnp.floor(x), jnp.floor(y)
        fx, fy = (x - x0)[..., None], (y - y0)[..., None]
        xi0, yi0 = jnp.clip(x0, 0, size - 1).astype(jnp.int32), jnp.clip(y0, 0, size - 1).astype(jnp.int32)
        xi1, yi1 = jnp.clip(x0 + 1, 0, size - 1).astype(jnp.int32), jnp.clip(y0 + 1, 0, size - 1).astype(jnp.int32)
        im = image.astype(jnp.float32)
        top = im[yi0, xi0] * (1.0 - fx) + im[yi0, xi1] * fx
        bottom = im[yi1, xi0] * (1.0 - fx) + im[yi1, xi1] * fx
        return top * (1.0 - fy) + bottom * fy

    return jax.vmap(one)(images, maps)


def orient(images: jax.Array, element: jax.Array) -> jax.Array:
    """Each square image turned by its dihedral ``element`` (n,) int32 in 0-7, as :mod:`jaxheads.data.augment`
    numbers them: ``element >> 1`` quarter turns (``np.rot90``), then a horizontal flip when bit 0 is set."""
    turns, flip = element >> 1, (element & 1) == 1

    def pick(cond: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.where(cond[:, None, None, None], a, b)

    odd = (turns & 1) == 1
    x = pick(odd, jnp.swapaxes(images, 1, 2), images)
    x = pick((turns == 1) | (turns == 2), x[:, ::-1], x)  # rot90 once: transpose, rows reversed
    return pick(((turns == 2) | (turns == 3)) ^ flip, x[:, :, ::-1], x)


def augment_batch(images: jax.Array, words: jax.Array, size: int, policy: Sequence[str],
                  jitter: tuple[float, float, float] = AFFINE_JITTER) -> jax.Array:
    """A random ``size`` x ``size`` crop of every image (one offset per image; none when the images are that size
    already), then ``policy``: geometric resampling, then the orientation. uint8 in; uint8 out without geometric
    names, float32 [0, 255] with them."""
    n, h, w = images.shape[:3]
    u = heads.hash_uniform(words, 101, (n, 3))
    ys = jnp.floor(u[:, 0] * (h - size + 1)).astype(jnp.int32)
    xs = jnp.floor(u[:, 1] * (w - size + 1)).astype(jnp.int32)
    x = jax.vmap(lambda im, y, x0: jax.lax.dynamic_slice(im, (y, x0, 0), (size, size, im.shape[-1])))(images, ys, xs)
    if any(name in policy for name in GEOMETRIC):
        x = resample(x, view_maps(heads.hash_uniform(words, 103, (n, 11)), size, policy, jitter))
    if "dihedral" in policy:
        element = jnp.minimum(jnp.floor(heads.hash_uniform(words, 102, (n, 1))[:, 0] * 8), 7).astype(jnp.int32)
        x = orient(x, element)
    elif "flip" in policy:
        x = jnp.where((u[:, 2] < 0.5)[:, None, None, None], x[:, :, ::-1, :], x)
    return x
