"""Augmented views of an image, as data: a policy (a few named transforms) and a view index decide the pixels.

View 0 is always the plain image, exactly what :func:`jaxheads.data.images.resize_center_crop` gives. View v >= 1 is a
transform drawn from (the image's id, v, the policy) alone, so every process and every rerun computes the same view
and the feature cache can key, shard and resume views like plain images (:func:`jaxheads.features.extract_all`).

Names (``--augment``):

- ``flip``: a horizontal flip;
- ``dihedral``: one of the 8 rotations and reflections of the square (suits data without an up, such as ELPV's
  solar cells); it includes ``flip``;
- ``crop``: a random-resized crop covering 60-100% of the image's area, aspect ratio 3/4 to 4/3;
- ``scale``: a small scale jitter, zooming in by 0-15% around a slightly moved centre;
- ``affine``: a small affine jitter of the rendered view (``AFFINE_JITTER``: rotation up to ±3°, translation up to
  ±2% of the side, scale ±2%; the ranges of Deitsch et al.'s ELPV recipe), edges replicated.

The fine-tune (:mod:`jaxheads.finetuning.augment`) draws the same names on device, per example and step, inside its
jitted step; the names and ranges are this module's, the pixels are computed there in JAX.

Orientations are stratified: an image's views 1, 2, ... run through a random order of the group's non-identity
elements before any repeats (with ``flip``: flipped, plain, flipped, ...), so a few views already cover the group.
Crops and scales are drawn afresh for every view. Resizing is bilinear (antialiased when shrinking), as for view 0.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
from PIL import Image

from jaxheads.data.images import resize_center_crop

__all__ = ["AFFINE_JITTER", "AUGMENTATIONS", "AUGMENT_METHOD", "CROP_AREA", "CROP_ASPECT", "DEFAULT_POLICY",
           "SCALE_ZOOM", "augmented_view", "check_views", "parse_policy"]

# "affine" comes last: a policy's canonical text (part of its cache key) is unchanged for the older names.
AUGMENTATIONS = ("flip", "dihedral", "crop", "scale", "affine")
DEFAULT_POLICY = ("flip", "crop")
"""Safe for photos (no rotation); ELPV-like data without an up is better served by ``dihedral,crop``."""
AUGMENT_METHOD = "augment-v1"
"""Names how views are drawn and rendered; part of every augmented view's cache key: change it when they change."""
CROP_AREA, CROP_ASPECT, SCALE_ZOOM = (0.6, 1.0), (3 / 4, 4 / 3), (1.0, 1.15)
AFFINE_JITTER = (3.0, 0.02, 0.02)
"""``affine``'s largest rotation (degrees), translation (fraction of the side) and scale change (fraction)."""


def parse_policy(names: str | Sequence[str], *, allow_empty: bool = False) -> tuple[str, ...]:
    """The policy named by ``names`` (comma-separated text or a sequence) in canonical order (``AUGMENTATIONS``'s),
    so ``crop,flip`` and ``flip,crop`` are one policy and one cache entry; a one-line error naming ``--augment``
    for an unknown or (unless ``allow_empty``: the fine-tune's "no augmentation") missing name."""
    given = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in given if n not in AUGMENTATIONS]
    if unknown or not (given or allow_empty):
        what = f"unknown augmentation {unknown[0]!r}" if unknown else "no augmentation named"
        raise ValueError(f"--augment {','.join(given)!r}: {what}; expected comma-separated names from "
                         f"{', '.join(AUGMENTATIONS)}")
    return tuple(n for n in AUGMENTATIONS if n in given)


def check_views(views: int) -> int:
    """``views`` as an int >= 1 (1: the plain image only); a one-line error naming ``--views`` otherwise."""
    if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or views < 1:
        raise ValueError(f"--views {views!r}: expected an integer >= 1 (1 = the plain image only, K = the plain "
                         "image and K-1 augmented views)")
    return int(views)


def _rng(image_id: bytes, policy: Sequence[str], *salt: int) -> np.random.Generator:
    """A generator drawn from the image's id, the policy and ``salt`` alone (the same in every process)."""
    text = b"|".join([bytes(image_id), ",".join(policy).encode(), AUGMENT_METHOD.encode(),
                      *(str(s).encode() for s in salt)])
    return np.random.default_rng(np.frombuffer(hashlib.sha256(text).digest()[:16], np.uint32))


def _orientation(image_id: bytes, view: int, policy: Sequence[str]) -> int:
    """The view's element of the orientation group (0 = identity; 1-7 dihedral, bit 0 a flip, bits 1-2 quarter
    turns): the image's own order of the non-identity elements, cycled with the identity every ``size`` views."""
    size = 8 if "dihedral" in policy else 2 if "flip" in policy else 1
    if size == 1:
        return 0
    order = np.concatenate([[0], 1 + _rng(image_id, policy).permutation(size - 1)])
    return int(order[view % size])


def _box(width: int, height: int, rng: np.random.Generator, policy: Sequence[str]) -> tuple[float, ...]:
    """The (left, top, right, bottom) region the view is resized from: a random-resized crop or the centred square
    of the shorter side, zoomed in by the scale jitter."""
    side = min(width, height)
    w, h, cx, cy = float(side), float(side), width / 2, height / 2
    if "crop" in policy:
        area = width * height * rng.uniform(*CROP_AREA)
        aspect = math.exp(rng.uniform(math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1])))
        w, h = min(width, math.sqrt(area * aspect)), min(height, math.sqrt(area / aspect))
        cx, cy = rng.uniform(w / 2, width - w / 2), rng.uniform(h / 2, height - h / 2)
    if "scale" in policy:
        zoom = rng.uniform(*SCALE_ZOOM)
        shift = (1 - 1 / zoom) / 2  # the centre moves at most as far as the zoom leaves room
        cx, cy = cx + w * shift * rng.uniform(-1, 1), cy + h * shift * rng.uniform(-1, 1)
        w, h = w / zoom, h / zoom
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def augmented_view(image: Image.Image, size: int, image_id: bytes, view: int,
                   policy: Sequence[str]) -> np.ndarray:
    """View ``view`` of ``image`` under ``policy``: (size, size, 3) uint8. View 0 is ``resize_center_crop(image,
    size)`` byte for byte; a view >= 1 depends only on (``image_id``, ``view``, ``policy``) and the pixels."""
    if view == 0:
        return resize_center_crop(image, size)
    if "crop" in policy or "scale" in policy:
        box = _box(*image.size, _rng(image_id, policy, view), policy)
        pixels = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box), np.uint8)
    else:
        pixels = resize_center_crop(image, size)
    if "affine" in policy:  # its own generator: the crop and scale draws stay those of the policy without it
        pixels = _affine_jitter(pixels, _rng(image_id, policy, view, 1))
    element = _orientation(image_id, view, policy)
    pixels = np.rot90(pixels, element >> 1)
    return np.ascontiguousarray(pixels[:, ::-1] if element & 1 else pixels)


def _affine_jitter(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``pixels`` (S, S, 3) rotated, moved and scaled about the centre by draws within ``AFFINE_JITTER``, bilinear,
    the edges replicated (padded first, as PIL fills outside the image with a constant)."""
    size = pixels.shape[0]
    degrees, shift, zoom = AFFINE_JITTER
    angle = math.radians(rng.uniform(-degrees, degrees))
    tx, ty = rng.uniform(-shift, shift, 2) * size
    scale = 1.0 + rng.uniform(-zoom, zoom)
    pad = size // 4 + 1  # more than the jitter ever reaches beyond the image
    padded = Image.fromarray(np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    cos, sin, c = math.cos(angle) / scale, math.sin(angle) / scale, size / 2
    # output -> input: c + R(-angle) (p - c - t) / scale, then into the padded image's coordinates
    a, b, d, e = cos, sin, -sin, cos
    ox, oy = -c - tx, -c - ty
    data = (a, b, a * ox + b * oy + c + pad, d, e, d * ox + e * oy + c + pad)
    return np.asarray(padded.transform((size, size), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR),
                      np.uint8)
