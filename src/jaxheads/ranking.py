"""Ranking what a model predicts: probabilities from logits, the top classes of each row, and image files read as
the val split is. Shared by every prediction path (:mod:`jaxheads.predict`, :class:`jaxheads.finetuning.Model`,
:mod:`jaxheads.classify`), apart from them so none of those imports another to rank."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import jax
import numpy as np

from jaxheads import data, metrics

Ranked = list[tuple[str, float]]
"""One image's (label, probability) pairs, most probable first."""


def read_images(paths: Sequence[str | os.PathLike[str]], image_size: int) -> np.ndarray:
    """(N, S, S, 3) uint8 of image files, resized and centre-cropped as the val split is."""
    return np.stack([data.resize_center_crop(data.load_image(os.fspath(p)), image_size) for p in paths])


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
        out.extend(top_labels(probs_fn(read_images(paths[start:start + batch_size], image_size)), top, names))
    return out
