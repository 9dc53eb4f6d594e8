"""Xception (``keras.applications.Xception``) in Flax, with the Keras weight name map.

Features are Keras's ``include_top=False`` output: ``block14_sepconv2_act`` (N, H/32, W/32, 2048), at Keras's
default 299 px; any size >= 71 works (the two stem convs are "valid"). Input: Keras "tf" preprocessing, pixels
scaled to [-1, 1]. Batch norm: Keras's defaults, epsilon 1e-3, momentum 0.99. Separable convs are a depthwise
3x3 then a pointwise 1x1, without biases; max pools and separable convs pad TensorFlow "same".

Weights: ``"imagenet"`` is keras.applications' notop file (downloaded by Keras on first use, like the other Keras
families; jaxheads ships none); ``"file"`` takes any Keras file holding an Xception, e.g. a user's ``.keras``
model whose frozen base kept the ImageNet weights. Keras names the four shortcut convs and their batch norms by a
global counter (``conv2d_3``), so the name map matches those by class order (``keras_convert.ANONYMOUS``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax

from jaxheads.backbones import register
from jaxheads.backbones import keras_layers as kl
from jaxheads.backbones.base import BackboneConfig, Layer, run_layers
from jaxheads.backbones.keras_convert import (ANONYMOUS, ImagenetFile, KerasWeights, LayerSpec, convert_family,
                                              keras_loaders)
from jaxheads.backbones.mobilenet import TF_MODE

BN_EPS = 1e-3
ENTRY: dict[str, tuple[int, int, bool]] = {
    "block2": (128, 128, False), "block3": (256, 256, True), "block4": (728, 728, True),
    "block13": (728, 1024, True),
}
"""Strided blocks (entry flow and the exit's first): (sepconv1 filters, sepconv2 filters, ReLU before sepconv1)."""
MIDDLE = tuple(f"block{i}" for i in range(5, 13))
"""The middle flow: eight residual blocks of three 728-wide separable convs."""
TAPS = tuple(f"block{i}" for i in range(1, 15))
"""Each block's output, ``block1`` (the stem) .. ``block14`` (the feature map); blocks 2-13 end at their add."""


class SepConv(nn.Module):
    """Keras ``SeparableConv2D`` (3x3 "same", depth multiplier 1, no bias): ``depthwise`` then ``pointwise``."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = kl.depthwise_conv(x, 3, 1, "same", name="depthwise")
        return kl.conv(x, self.features, 1, use_bias=False, name="pointwise")


class Stem(nn.Module):
    """``block1``: 3x3 stride-2 conv (32) and 3x3 conv (64), both "valid", each with BN and ReLU."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = kl.conv(x, 32, 3, 2, "valid", use_bias=False, name="conv1")
        x = nn.relu(kl.batch_norm(x, train, BN_EPS, name="conv1_bn"))
        x = kl.conv(x, 64, 3, 1, "valid", use_bias=False, name="conv2")
        return nn.relu(kl.batch_norm(x, train, BN_EPS, name="conv2_bn"))


class StridedBlock(nn.Module):
    """Blocks 2-4 and 13: [ReLU] sepconv-BN, ReLU, sepconv-BN, 3x3 stride-2 max pool, plus a 1x1 stride-2
    conv-BN shortcut of the block's input."""

    filters: tuple[int, int]
    relu_first: bool

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool) -> jax.Array:
        bn = functools.partial(kl.batch_norm, train=train, epsilon=BN_EPS)
        shortcut = bn(kl.conv(inputs, self.filters[1], 1, 2, use_bias=False, name="shortcut_conv"),
                      name="shortcut_bn")
        x = nn.relu(inputs) if self.relu_first else inputs
        x = nn.relu(bn(SepConv(self.filters[0], name="sepconv1")(x), name="sepconv1_bn"))
        x = bn(SepConv(self.filters[1], name="sepconv2")(x), name="sepconv2_bn")
        return kl.max_pool(x, 3, 2, "same") + shortcut


class MiddleBlock(nn.Module):
    """Blocks 5-12: three (ReLU, 728 sepconv, BN) with an identity shortcut."""

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool) -> jax.Array:
        x = inputs
        for i in (1, 2, 3):
            x = kl.batch_norm(SepConv(728, name=f"sepconv{i}")(nn.relu(x)), train, BN_EPS, name=f"sepconv{i}_bn")
        return x + inputs


class ExitBlock(nn.Module):
    """``block14``: 1536 sepconv-BN-ReLU, 2048 sepconv-BN-ReLU (the feature map)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(kl.batch_norm(SepConv(1536, name="sepconv1")(x), train, BN_EPS, name="sepconv1_bn"))
        return nn.relu(kl.batch_norm(SepConv(2048, name="sepconv2")(x), train, BN_EPS, name="sepconv2_bn"))


class Xception(nn.Module):
    """Xception. Returns ``{"features": block14_sepconv2_act}`` (+ ``"logits"``); taps and truncation (``taps``,
    ``until``) as :mod:`jaxheads.backbones.base` describes, named by :data:`TAPS`."""

    num_classes: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, taps: bool = False,
                 until: str | None = None) -> dict[str, Any]:
        modules: list[nn.Module] = [Stem(name="block1")]
        for name in TAPS[1:]:
            if name in ENTRY:
                first, second, relu_first = ENTRY[name]
                modules.append(StridedBlock((first, second), relu_first, name=name))
            else:
                modules.append(MiddleBlock(name=name) if name in MIDDLE else ExitBlock(name=name))
        layers: list[Layer] = [(m.name, functools.partial(m, train=train)) for m in modules]
        out = run_layers(layers, x, taps=taps, until=until)
        if self.num_classes and until in (None, TAPS[-1]):
            out["logits"] = nn.Dense(self.num_classes, name="classifier")(kl.global_avg_pool(out["features"]))
        return out


def _strided_specs(block: str) -> list[LayerSpec]:
    """A strided block in ``model.layers`` order: its separable convs, then the shortcut conv and BN (Keras 3
    sorts the graph by depth); the shortcut's Keras names are counted globally (``conv2d_N``), hence by order."""
    specs = [LayerSpec(f"{block}_sepconv{i}{suffix}", (block, f"sepconv{i}{suffix}"), kind)
             for i in (1, 2) for suffix, kind in (("", "sepconv"), ("_bn", "bn"))]
    return specs + [LayerSpec(f"{ANONYMOUS}{block}_shortcut_conv", (block, "shortcut_conv"), "conv"),
                    LayerSpec(f"{ANONYMOUS}{block}_shortcut_bn", (block, "shortcut_bn"), "bn")]


def body_map() -> tuple[LayerSpec, ...]:
    """Keras layer names -> Flax paths (``block5_sepconv2_bn`` -> ``block5/sepconv2_bn``), in ``model.layers``
    order, which is the class order of Keras 3 files' positional names (checked by the parity test)."""
    specs = [LayerSpec(f"block1_conv{i}{suffix}", ("block1", f"conv{i}{suffix}"), kind)
             for i in (1, 2) for suffix, kind in (("", "conv"), ("_bn", "bn"))]
    for block in TAPS[1:13]:
        if block in ENTRY:
            specs += _strided_specs(block)
        else:
            specs += [LayerSpec(f"{block}_sepconv{i}{suffix}", (block, f"sepconv{i}{suffix}"), kind)
                      for i in (1, 2, 3) for suffix, kind in (("", "sepconv"), ("_bn", "bn"))]
    specs += [LayerSpec(f"block14_sepconv{i}{suffix}", ("block14", f"sepconv{i}{suffix}"), kind)
              for i in (1, 2) for suffix, kind in (("", "sepconv"), ("_bn", "bn"))]
    return tuple(specs)


TOP_MAP = (LayerSpec("predictions", ("classifier",), "dense"),)


def convert(config: BackboneConfig, weights: KerasWeights) -> dict:
    """Flax variables for Xception from Keras weights (the classifier too when present)."""
    return convert_family(weights, lambda n: Xception(num_classes=n), body_map(), TOP_MAP, 71, config.name)


def imagenet_file(config: BackboneConfig) -> ImagenetFile:
    """keras.applications' notop file (``xception_weights_tf_dim_ordering_tf_kernels_notop.h5``)."""
    file = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return ImagenetFile(file, f"https://storage.googleapis.com/tensorflow/keras-applications/xception/{file}")


register(
    BackboneConfig(
        name="xception",
        build=Xception,
        preprocessing=dataclasses.replace(TF_MODE, input_size=299),
        feature_channels=2048,
        weights=keras_loaders(convert, imagenet_file),
        blocks=TAPS,
        taps=TAPS,
    )
)
