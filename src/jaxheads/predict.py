"""Apply a saved model to new images: a sweep's head (``OUT/head``: its backbone is rebuilt) or a fine-tuned model
(``OUT/model``), told apart by the directory's meta.

A head's checkpoint meta records the backbone name, the weights argument and the weights id it was trained on;
:func:`jaxheads.heads.io.load_swept_head` rebuilds the backbone from those (a random init with its seed) and
refuses it if its weights id differs (features would not match). The program that runs is
:func:`jaxheads.export.image_model`'s, the very one ``model.jaxexport`` serialises: features as the cache holds
them (rounded through float16; a tap head's taps pooled, standardised and selected as its sweep did), then the
saved bag's mean probability.

Also the ranking helpers every prediction path shares: :func:`probabilities`, :func:`top_k`, :func:`top_labels`
and :func:`top_labels_of_files` (used here, by :class:`jaxheads.finetuning.Model` and by :mod:`jaxheads.classify`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from jaxheads import data, metrics

Ranked = list[tuple[str, float]]
"""One image's (label, probability) pairs, most probable first."""


def predict_files(saved: str | Path, images: Sequence[str | Path], *, top: int = 3,
                  batch_size: int = 32) -> list[Ranked]:
    """For each image, the ``top`` (label, probability) pairs under the saved head or fine-tuned model in
    ``saved`` (sigmoid scores for multilabel)."""
    from jaxheads import export

    model = export.image_model(saved)
    return top_labels_of_files(images, model.image_size, model.predict, model.label_names, top=top,
                               batch_size=batch_size)


def probabilities_of_files(saved: str | Path, images: Sequence[str | Path], *,
                           batch_size: int = 32) -> tuple[np.ndarray, list[str]]:
    """((N, K) probabilities, the class names) of image files under a saved head or fine-tuned model."""
    from jaxheads import export

    model = export.image_model(saved)
    probs = [model.predict(read_images(images[start:start + batch_size], model.image_size))
             for start in range(0, len(images), batch_size)]
    names = list(model.label_names)
    return (np.concatenate(probs) if probs else np.zeros((0, len(names)), np.float32)), names


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
