"""Apply a saved model to new images: a sweep's head (``OUT/head``: its backbone is rebuilt) or a fine-tuned model
(``OUT/model``), told apart by the directory's meta.

A head's checkpoint meta records the backbone name, the weights argument and the weights id it was trained on;
:func:`jaxheads.heads.io.load_swept_head` rebuilds the backbone from those (a random init with its seed) and
refuses it if its weights id differs (features would not match). The program that runs is
:func:`jaxheads.export.image_model`'s, the very one ``model.jaxexport`` serialises: features as the cache holds
them (rounded through float16; a tap head's taps pooled, standardised and selected as its sweep did), then the
saved bag's mean probability.

The ranking helpers every prediction path shares live in :mod:`jaxheads.ranking` and are re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from jaxheads.ranking import Ranked, probabilities, read_images, top_k, top_labels, top_labels_of_files

__all__ = ["Ranked", "predict_files", "probabilities", "probabilities_of_files", "read_images", "top_k", "top_labels",
           "top_labels_of_files"]


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


