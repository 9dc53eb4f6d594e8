"""ResNet50/101/152 (``keras.applications.ResNet50/101/152``, the v1 "caffe" ResNets) in Flax, with name maps.

Features are Keras's ``include_top=False`` output: ``conv5_block3_out`` (N, H/32, W/32, 2048). Input: caffe
preprocessing (BGR, minus the ImageNet BGR mean), 224 px by default, any size >= 32. Padding as Keras writes
it: the 7x7 stem conv and the 3x3 max pool run "valid" on explicitly zero-padded inputs (3 and 1 pixels);
strides sit on the 1x1 convs of each stage's first block. Batch norm epsilon 1.001e-5, convs with biases.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxheads.backbones import register
from jaxheads.backbones import keras_layers as kl
from jaxheads.backbones.base import BackboneConfig, Layer, run_layers
from jaxheads.backbones.keras_convert import ImagenetFile, KerasWeights, LayerSpec, convert_family, keras_loaders
from jaxheads.backbones.vgg import CAFFE

BN_EPS = 1.001e-5
STAGES: dict[str, tuple[int, ...]] = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}
"""Blocks per stage (Keras ``conv2`` .. ``conv5``)."""
WIDTHS = (64, 128, 256, 512)
"""Bottleneck width per stage; blocks output 4x this."""


def _zero_pad(x: jax.Array, p: int) -> jax.Array:
    """Keras ``ZeroPadding2D(((p, p), (p, p)))``."""
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


class Bottleneck(nn.Module):
    """Keras ``residual_block_v1``: 1x1 (stride) -> 3x3 -> 1x1 (4x width), each with BN; projection shortcut
    (1x1 conv + BN, same stride) on a stage's first block."""

    width: int
    stride: int
    shortcut_conv: bool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = functools.partial(kl.batch_norm, train=train, epsilon=BN_EPS)
        shortcut = x
        if self.shortcut_conv:
            shortcut = bn(kl.conv(x, 4 * self.width, 1, self.stride, "valid", name="shortcut_conv"),
                          name="shortcut_bn")
        y = nn.relu(bn(kl.conv(x, self.width, 1, self.stride, "valid", name="conv1"), name="bn1"))
        y = nn.relu(bn(kl.conv(y, self.width, 3, 1, "same", name="conv2"), name="bn2"))
        y = bn(kl.conv(y, 4 * self.width, 1, 1, "valid", name="conv3"), name="bn3")
        return nn.relu(shortcut + y)


def block_names(stages: tuple[int, ...]) -> tuple[str, ...]:
    """Keras's block names, input to output: ``conv2_block1`` .. ``conv5_block{n}``."""
    return tuple(f"conv{s + 2}_block{b + 1}" for s, n in enumerate(stages) for b in range(n))


class ResNet(nn.Module):
    """ResNet v1 with ``stages`` blocks per stage. Returns ``{"features": conv5_block{n}_out}`` (+ ``"logits"``).
    Taps (``taps``, ``until``; :mod:`jaxheads.backbones.base`): ``stem`` (after the max pool), then every block."""

    stages: tuple[int, ...] = STAGES["resnet50"]
    num_classes: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, taps: bool = False,
                 until: str | None = None) -> dict[str, Any]:
        def stem(x: jax.Array) -> jax.Array:
            x = kl.conv(_zero_pad(x, 3), 64, 7, 2, "valid", name="stem_conv")
            x = nn.relu(kl.batch_norm(x, train, BN_EPS, name="stem_bn"))
            return kl.max_pool(_zero_pad(x, 1), 3, 2, "valid")

        layers: list[Layer] = [("stem", stem)]
        names = iter(block_names(self.stages))
        for s, (blocks, width) in enumerate(zip(self.stages, WIDTHS)):
            for b in range(blocks):
                block = Bottleneck(width, 2 if s > 0 and b == 0 else 1, b == 0, name=next(names))
                layers.append((block.name, functools.partial(block, train=train)))
        out = run_layers(layers, x, taps=taps, until=until)
        x = out["features"]
        if self.num_classes and until in (None, layers[-1][0]):
            out["logits"] = nn.Dense(self.num_classes, name="classifier")(kl.global_avg_pool(x))
        return out


def body_map(stages: tuple[int, ...]) -> tuple[LayerSpec, ...]:
    """Keras names -> Flax paths: ``conv3_block1_0_conv`` -> ``conv3_block1/shortcut_conv``, ``_2_bn`` -> ``bn2``.

    Listed in ``model.layers`` order (Keras 3 sorts the graph by depth, so a first block's shortcut conv comes
    after ``_2_bn``): Keras 3 files number same-class layers in this order.
    """
    specs = [LayerSpec("conv1_conv", ("stem_conv",), "conv"), LayerSpec("conv1_bn", ("stem_bn",), "bn")]
    for s, blocks in enumerate(stages):
        for b in range(blocks):
            block = f"conv{s + 2}_block{b + 1}"
            order = ("1_conv", "1_bn", "2_conv", "2_bn", "0_conv", "3_conv", "0_bn", "3_bn")
            for part in order if b == 0 else tuple(p for p in order if not p.startswith("0")):
                k, kind = part.split("_")
                leaf = {"0": "shortcut_", "1": "", "2": "", "3": ""}[k] + kind + ("" if k == "0" else k)
                specs.append(LayerSpec(f"{block}_{part}", (block, leaf), kind))
    return tuple(specs)


TOP_MAP = (LayerSpec("predictions", ("classifier",), "dense"),)


def convert(config: BackboneConfig, weights: KerasWeights) -> dict:
    """Flax variables for a registered ResNet from Keras weights (the classifier too when present)."""
    stages = STAGES[config.name]
    build = functools.partial(ResNet, stages)
    return convert_family(weights, lambda n: build(num_classes=n), body_map(stages), TOP_MAP, 224, config.name)


def imagenet_file(config: BackboneConfig) -> ImagenetFile:
    """keras.applications' notop file (``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``)."""
    file = f"{config.name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return ImagenetFile(file, f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{file}")


for _name, _stages in STAGES.items():
    register(
        BackboneConfig(
            name=_name,
            build=functools.partial(ResNet, _stages),
            preprocessing=CAFFE,
            feature_channels=2048,
            weights=keras_loaders(convert, imagenet_file),
            blocks=("stem_conv", "stem_bn", *block_names(_stages)),
            taps=("stem", *block_names(_stages)),
        )
    )
