"""Benchmark: images/s of the Flax backbones vs TF-Keras on the same weights and the same inputs, in one run.

    python experiments/features/bench_backbones.py [--models vgg16,mobilenet_v2,efficientnet_b0] [--batch 32] [--size 224]
        [--repeats 3] [--out experiments/results/bench_backbones.json]

For each model: build the keras.applications model (``weights=None``, batch norms given random statistics),
convert it to Flax through the registry's ``"object"`` loader, check the features agree, then time one batch
forward per repeat after one warm-up call (which also compiles), Flax and Keras alternating, and report
the best repeat of each.

* Flax: ``jax.jit`` of ``jaxheads.backbones.base.feature_maps`` (preprocessing + ``module.apply``, float32) —
  the forward jaxheads' feature pass runs: ``lax.map`` over micro-batches (``--micro-batch``, default
  ``MICRO_BATCH`` = 8), which keeps activations in cache on CPU without changing results; and, for reference, the
  whole batch in one call. ``block_until_ready`` on each.
* Keras: ``model(x, training=False)`` inside ``tf.function`` (Keras's own ``predict`` path), default TF
  settings (oneDNN as TF ships it). For VGG16/MobileNetV2 Keras gets the preprocessed batch (its preprocessing
  is outside the model); for EfficientNet it gets raw pixels, its preprocessing being inside the model.

Target: Flax >= 1.0x Keras. Prints a table and writes JSON (figures plus platform, versions, thread counts).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxheads.backbones import get_config  # noqa: E402
from jaxheads.backbones.base import MICRO_BATCH, feature_maps  # noqa: E402

KERAS_BUILDERS = {"vgg16": "VGG16", "mobilenet_v2": "MobileNetV2", "efficientnet_b0": "EfficientNetB0"}


def keras_model(name: str, size: int) -> Any:
    """The keras.applications model for ``name`` with random weights and random batch-norm statistics."""
    import keras

    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, KERAS_BUILDERS[name])(
        weights=None, include_top=False, input_shape=(size, size, 3)
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.0, g.shape), rng.normal(0, 0.1, b.shape),
                               rng.normal(0, 0.1, m.shape), rng.uniform(1.0, 2.0, v.shape)])
        if isinstance(layer, keras.layers.Normalization):  # EfficientNet: make it ImageNet's, as Flax assumes
            mean, var, count = layer.get_weights()
            layer.set_weights([np.reshape([0.485, 0.456, 0.406], mean.shape),
                               np.reshape(np.square([0.229, 0.224, 0.225]), var.shape), count])
    return model


def interleaved_best(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float]]:
    """Per function: (first call seconds, best of ``repeats`` later calls). Repeats alternate between the
    functions, so that load from other processes on a shared machine falls on both alike."""
    first, best = {}, {k: float("inf") for k in fns}
    for key, fn in fns.items():
        start = time.perf_counter()
        fn()
        first[key] = time.perf_counter() - start
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - start)
    return {k: (first[k], best[k]) for k in fns}


def bench_one(name: str, batch: int, size: int, repeats: int, micro_batch: int) -> dict[str, Any]:
    """Time Flax and Keras on one model; check they agree on the batch."""
    import tensorflow as tf

    config = get_config(name)
    kmodel = keras_model(name, size)
    variables, _ = config.weights["object"](config, kmodel)
    images = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    pre = config.preprocessing
    x = ((images[..., ::-1] if pre.bgr else images) - np.float32(pre.mean)) / np.float32(pre.std)
    keras_input = images if name.startswith("efficientnet") else x.astype(np.float32)

    module = config.build(num_classes=0)
    # The path jaxheads' feature pass runs (micro-batches of ``micro_batch``), and the whole batch in one call.
    flax_fn = jax.jit(lambda v, im: feature_maps(module, v, im, pre, micro_batch))
    flax_whole = jax.jit(lambda v, im: feature_maps(module, v, im, pre, batch))
    variables = jax.device_put(variables)
    device_images = jax.device_put(images)
    keras_fn = tf.function(functools.partial(kmodel, training=False))
    tf_input = tf.constant(keras_input)
    timings = interleaved_best({
        "flax": lambda: flax_fn(variables, device_images).block_until_ready(),
        "flax_whole_batch": lambda: flax_whole(variables, device_images).block_until_ready(),
        "keras": lambda: keras_fn(tf_input).numpy(),
    }, repeats)
    (flax_first, flax_best), (keras_first, keras_best) = timings["flax"], timings["keras"]
    whole_best = timings["flax_whole_batch"][1]
    diff = float(np.abs(np.asarray(flax_fn(variables, device_images)) - keras_fn(tf_input).numpy()).max())
    return {
        "model": name, "batch": batch, "size": size, "repeats": repeats, "micro_batch": micro_batch,
        "flax_images_per_s": batch / flax_best, "keras_images_per_s": batch / keras_best,
        "speedup": keras_best / flax_best,
        "flax_whole_batch_images_per_s": batch / whole_best, "speedup_whole_batch": keras_best / whole_best,
        "flax_first_call_s": flax_first, "keras_first_call_s": keras_first,
        "max_abs_diff_features": diff,
    }


def environment() -> dict[str, Any]:
    import keras
    import tensorflow as tf

    return {
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()], "tensorflow": tf.__version__, "keras": keras.__version__,
        "tf_onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vgg16,mobilenet_v2,efficientnet_b0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=MICRO_BATCH,
                        help="images per backbone call in the Flax forward (jaxheads' feature pass uses the default)")
    parser.add_argument("--out", default="experiments/results/bench_backbones.json")
    args = parser.parse_args()

    rows = []
    for name in args.models.split(","):
        row = bench_one(name, args.batch, args.size, args.repeats, args.micro_batch)
        rows.append(row)
        print(f"{name}: flax {row['flax_images_per_s']:.1f} img/s, keras {row['keras_images_per_s']:.1f} img/s",
              flush=True)
    print(f"\n{'model':<17}{'flax img/s':>11}{'keras img/s':>12}{'flax/keras':>11}{'whole batch':>12}"
          f"{'whole/keras':>12}{'max|diff|':>10}")
    for r in rows:
        print(f"{r['model']:<17}{r['flax_images_per_s']:>11.1f}{r['keras_images_per_s']:>12.1f}"
              f"{r['speedup']:>10.2f}x{r['flax_whole_batch_images_per_s']:>12.1f}{r['speedup_whole_batch']:>11.2f}x"
              f"{r['max_abs_diff_features']:>10.1e}")
    print(f"flax: jaxheads' forward (backbones.base.feature_maps, micro-batches of {args.micro_batch}); whole batch: "
          "the same in one call; load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": rows, "environment": environment()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
