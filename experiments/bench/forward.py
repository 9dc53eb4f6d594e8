"""Part 3: backbone forward throughput, the Flax port vs Keras, on the same weights and the same images.

Both run inference on a batch of uint8 pixels with the preprocessing inside the timed call: Flax as one jitted
``preprocess -> module.apply``, Keras as ``predict_on_batch`` of Rescaling -> base. Best of ``fwd_repeats`` calls
after a warm-up call (which compiles / traces). The features' max |difference| is reported too.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax
import numpy as np

from experiments.bench.backbone_pair import BackbonePair
from experiments.bench.config import BenchSize


def best_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(first call's seconds, best of ``repeats`` further calls' seconds)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return first, best


def run(pair: BackbonePair, size: BenchSize, images: np.ndarray | None = None) -> dict[str, Any]:
    """Images/s of both frameworks at batch ``fwd_batch`` (random pixels unless ``images`` are given)."""
    b, s = size.fwd_batch, size.image_size
    if images is None or len(images) < b:
        images = np.random.default_rng(0).integers(0, 256, (b, s, s, 3), dtype=np.uint8)
    images = images[:b]
    backbone = pair.flax
    flax_fn = jax.jit(lambda v, x: backbone.module.apply(v, backbone.config.preprocessing(x), train=False)["features"])
    variables = jax.device_put(backbone.variables)
    device_images = jax.device_put(images)
    flax_first, flax_best = best_seconds(
        lambda: jax.block_until_ready(flax_fn(variables, device_images)), size.fwd_repeats)
    keras_model = pair.keras_features_model()
    pixels = images.astype(np.float32)
    keras_first, keras_best = best_seconds(lambda: keras_model.predict_on_batch(pixels), size.fwd_repeats)
    diff = np.abs(np.asarray(flax_fn(variables, device_images)) - keras_model.predict_on_batch(pixels))
    return {
        "batch": b, "image_size": s, "repeats": size.fwd_repeats,
        "flax_images_per_s": b / flax_best, "keras_images_per_s": b / keras_best,
        "flax_over_keras": keras_best / flax_best,
        "flax_first_call_s": flax_first, "keras_first_call_s": keras_first,
        "max_abs_diff": float(diff.max()),
    }
