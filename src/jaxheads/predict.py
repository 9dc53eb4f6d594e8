"""Apply a head saved by ``jaxheads sweep`` to new images: rebuild its backbone, extract features, run the head.

The head's checkpoint meta records the backbone name, the weights argument and the weights id it was trained on;
the backbone is rebuilt from those and refused if its weights id differs (features would not match).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads import backbones, data, heads_io


def predict_files(head_dir: str | Path, images: Sequence[str | Path], *, top: int = 3,
                  batch_size: int = 32) -> list[list[tuple[str, float]]]:
    """For each image, the ``top`` (label, probability) pairs under the saved head (sigmoid scores for multilabel)."""
    spec, variables, apply_fn = heads_io.load_head(head_dir)
    meta = heads_io.load_meta(head_dir)
    for field in ("backbone", "weights", "weights_id"):
        if field not in meta:
            raise ValueError(f"{head_dir}: head meta has no {field!r} (was it written by `jaxheads sweep`?)")
    weights = None if meta["weights"] == "none" else meta["weights"]
    backbone = backbones.load(meta["backbone"], weights)
    if backbone.weights_id != meta["weights_id"]:
        raise ValueError(f"{head_dir}: head was trained on {meta['backbone']} weights {meta['weights_id']}, "
                         f"but these weights are {backbone.weights_id}")
    names = meta.get("label_names") or [str(i) for i in range(spec.num_classes)]
    feature_fn = _feature_fn(backbone, pooled=spec.pooling == "none")
    size = backbone.config.preprocessing.input_size
    out: list[list[tuple[str, float]]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pixels = np.stack([data.resize_center_crop(data.load_image(str(p)), size) for p in chunk])
        logits = apply_fn(variables, feature_fn(backbone.variables, pixels))
        probs = np.asarray(jax.nn.sigmoid(logits) if spec.task == "multilabel" else jax.nn.softmax(logits))
        for row in probs:
            order = np.argsort(-row)[:top]
            out.append([(names[i], float(row[i])) for i in order])
    return out


def _feature_fn(backbone: backbones.Backbone, *, pooled: bool) -> Callable[..., jax.Array]:
    """Jitted pixels -> features, pooled to (N, C) when the head takes pooled vectors (as the cache stores them)."""

    @jax.jit
    def features(variables: backbones.base.Variables, pixels: jax.Array) -> jax.Array:
        x = backbone.config.preprocessing(pixels)
        fmap = backbone.module.apply(variables, x, train=False)["features"]
        # The cache stores float16; round the same way so predictions match training inputs.
        fmap = fmap.astype(jnp.float16).astype(jnp.float32) if not pooled else fmap
        return fmap.mean(axis=(1, 2)).astype(jnp.float16).astype(jnp.float32) if pooled else fmap

    return features
