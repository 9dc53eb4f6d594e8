"""VGG16 and VGG19 (``keras.applications.VGG16/VGG19``) in Flax, with the Keras weight name map.

Features are Keras's ``include_top=False`` output: ``block5_pool`` (N, H/32, W/32, 512). Input: caffe
preprocessing (RGB->BGR, minus the ImageNet BGR mean, no scaling), 224 px by default; any size >= 32 works.
With ``num_classes > 0`` the Keras top (flatten, fc1, fc2, predictions) gives logits and needs 224 px.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax

from jaxheads.backbones import register
from jaxheads.backbones import keras_layers as kl
from jaxheads.backbones.base import BackboneConfig, Preprocessing, run_layers
from jaxheads.backbones.keras_convert import ImagenetFile, KerasWeights, LayerSpec, convert_family, keras_loaders

STAGES: dict[int, tuple[int, ...]] = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
"""Convolutions per block, per depth."""
WIDTHS = (64, 128, 256, 512, 512)
CAFFE = Preprocessing(input_size=224, mean=(103.939, 116.779, 123.68), bgr=True)
"""Keras ``preprocess_input(mode="caffe")``: BGR order, mean subtracted per BGR channel, no scaling."""


class VGGBlock(nn.Module):
    """``n`` 3x3 "same" convolutions with ReLU, then a 2x2 stride-2 max pool."""

    convs: int
    width: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(1, self.convs + 1):
            x = nn.relu(kl.conv(x, self.width, 3, name=f"conv{i}"))
        return kl.max_pool(x, 2, 2)


class VGGTop(nn.Module):
    """Keras's classifier: flatten, fc1 (4096, ReLU), fc2 (4096, ReLU), predictions (logits, no softmax)."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(4096, name="fc1")(x))
        x = nn.relu(nn.Dense(4096, name="fc2")(x))
        return nn.Dense(self.num_classes, name="predictions")(x)


TAPS = tuple(f"block{b}" for b in range(1, len(WIDTHS) + 1))
"""Each block's pooled output, ``block1`` .. ``block5`` (the feature map)."""


class VGG(nn.Module):
    """VGG of ``depth`` 16 or 19. Returns ``{"features": block5_pool}`` (+ ``"logits"`` with a classifier); taps
    and truncation (``taps``, ``until``) as :mod:`jaxheads.backbones.base` describes, named by :data:`TAPS`."""

    depth: int = 16
    num_classes: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, taps: bool = False,
                 until: str | None = None) -> dict[str, Any]:
        layers = [(name, VGGBlock(convs, width, name=name))
                  for name, convs, width in zip(TAPS, STAGES[self.depth], WIDTHS)]
        out = run_layers(layers, x, taps=taps, until=until)
        if self.num_classes and until in (None, TAPS[-1]):
            out["logits"] = VGGTop(self.num_classes, name="classifier")(out["features"])
        return out


def body_map(depth: int) -> tuple[LayerSpec, ...]:
    """Keras ``block{b}_conv{i}`` -> Flax ``block{b}/conv{i}``."""
    return tuple(
        LayerSpec(f"block{b}_conv{i}", (f"block{b}", f"conv{i}"), "conv")
        for b, convs in enumerate(STAGES[depth], 1)
        for i in range(1, convs + 1)
    )


TOP_MAP = tuple(LayerSpec(n, ("classifier", n), "dense") for n in ("fc1", "fc2", "predictions"))


def convert(config: BackboneConfig, weights: KerasWeights) -> dict:
    """Flax variables for ``config`` (vgg16/vgg19) from Keras weights (the classifier too when present)."""
    depth = _DEPTHS[config.name]
    build = functools.partial(VGG, depth)
    return convert_family(weights, lambda n: build(num_classes=n), body_map(depth), TOP_MAP, 224, config.name)


def imagenet_file(config: BackboneConfig) -> ImagenetFile:
    """keras.applications' notop file for this depth."""
    file = f"{config.name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return ImagenetFile(file, f"https://storage.googleapis.com/tensorflow/keras-applications/{config.name}/{file}")


_DEPTHS = {"vgg16": 16, "vgg19": 19}

for _name, _depth in _DEPTHS.items():
    register(
        BackboneConfig(
            name=_name,
            build=functools.partial(VGG, _depth),
            preprocessing=CAFFE,
            feature_channels=512,
            weights=keras_loaders(convert, imagenet_file),
            blocks=tuple(f"block{b}" for b in range(1, 6)),
            taps=TAPS,
        )
    )
