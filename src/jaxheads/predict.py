"""Apply a head saved by ``jaxheads sweep`` to new images: rebuild its backbone, extract features, run the head.

The head's checkpoint meta records the backbone name, the weights argument and the weights id it was trained on;
:func:`jaxheads.heads.io.load_swept_head` rebuilds the backbone from those (a random init with its seed) and
refuses it if its weights id differs (features would not match).

Also the ranking helpers every prediction path shares: :func:`probabilities`, :func:`top_k`, :func:`top_labels`
and :func:`top_labels_of_files` (used here, by :class:`jaxheads.finetuning.Model` and by :mod:`jaxheads.classify`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads import backbones, data, metrics
from jaxheads.heads import io as heads_io

Ranked = list[tuple[str, float]]
"""One image's (label, probability) pairs, most probable first."""


def predict_files(head_dir: str | Path, images: Sequence[str | Path], *, top: int = 3,
                  batch_size: int = 32) -> list[Ranked]:
    """For each image, the ``top`` (label, probability) pairs under the saved head (sigmoid scores for multilabel)."""
    head, backbone = heads_io.load_swept_head(head_dir)
    feature_fn = _feature_fn(backbone, pooled=head.spec.pooling == "none")
    apply_fn = heads_io.make_apply_fn(head.spec)

    def probs_of(pixels: np.ndarray) -> np.ndarray:
        return probabilities(apply_fn(head.variables, feature_fn(backbone.variables, pixels)), head.spec.task)

    size = head.input_size(backbone)  # the size the head was trained at: its features depend on it
    return top_labels_of_files(images, size, probs_of, head.label_names, top=top, batch_size=batch_size)


def _feature_fn(backbone: backbones.Backbone, *, pooled: bool) -> Callable[..., jax.Array]:
    """Jitted pixels -> features, pooled to (N, C) when the head takes pooled vectors (as the cache stores them)."""

    @jax.jit
    def features(variables: backbones.base.Variables, pixels: jax.Array) -> jax.Array:
        x = backbone.config.preprocessing(pixels)
        fmap = backbone.module.apply(variables, x, train=False)["features"]
        if pooled:
            fmap = fmap.mean(axis=(1, 2))
        # The cache stores float16; round the same way so predictions match training inputs.
        return fmap.astype(jnp.float16).astype(jnp.float32)

    return features


def probabilities(logits: jax.Array | np.ndarray, task: str) -> np.ndarray:
    """:func:`jaxheads.metrics.probabilities` as a NumPy array."""
    return np.asarray(metrics.probabilities(logits, task))


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """(N, k) class indices of each row's ``k`` highest probabilities, best first; ties keep class order."""
    return np.argsort(-np.asarray(probs), axis=-1, kind="stable")[..., :k]


def top_labels(probs: np.ndarray, k: int, names: Sequence[str]) -> list[Ranked]:
    """Per row of ``probs``, its ``k`` most probable (label, probability) pairs."""
    return [[(names[i], float(row[i])) for i in best] for row, best in zip(probs, top_k(probs, k))]


def top_labels_of_files(paths: Sequence[str | os.PathLike[str]], image_size: int,
                        probs_fn: Callable[[np.ndarray], np.ndarray], names: Sequence[str], *, top: int,
                        batch_size: int) -> list[Ranked]:
    """:func:`top_labels` of image files, read in batches and resized and centre-cropped as the val split is."""
    out: list[Ranked] = []
    for start in range(0, len(paths), batch_size):
        chunk = [os.fspath(p) for p in paths[start:start + batch_size]]
        pixels = np.stack([data.resize_center_crop(data.load_image(p), image_size) for p in chunk])
        out.extend(top_labels(probs_fn(pixels), top, names))
    return out
