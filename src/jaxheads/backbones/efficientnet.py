"""EfficientNet B0-B7 (``keras.applications.EfficientNetB0..B7``) in Flax, with the Keras weight name map.

Features are Keras's ``include_top=False`` output: ``top_activation`` (N, H/32, W/32, 1280 x width).

Preprocessing: Keras puts it *inside* the model (``Rescaling(1/255)``, ``Normalization`` with the ImageNet
mean and, for ImageNet weights, a second ``Rescaling`` that turns its stored variance into the ImageNet std).
Together that is ``(x / 255 - mean) / std``, Keras's "torch" mode. Here it is the backbone's
:class:`Preprocessing` record (mean and std in 0..255 units), not module code: the Flax module starts at
``stem_conv``, like every other backbone. The converter checks that a source's ``normalization`` layer holds
either those ImageNet statistics or Keras's untouched init (mean 0, variance 1, a ``weights=None`` model),
and refuses anything else rather than silently changing the input statistics.

Padding: stride-2 depthwise convs pad by ``correct_pad`` (TensorFlow "same" for a fixed input size). Batch
norm epsilon 1e-3, momentum 0.99. Activation swish (x * sigmoid(x)).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxheads.backbones import register
from jaxheads.backbones import keras_layers as kl
from jaxheads.backbones.base import BackboneConfig, Preprocessing, run_layers
from jaxheads.backbones.keras_convert import (
    ImagenetFile, KerasWeights, KerasWeightsError, LayerSpec, convert_family, keras_loaders,
)

BN_EPS = 1e-3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class StageArgs:
    """One row of Keras's ``DEFAULT_BLOCKS_ARGS`` (before width/depth scaling)."""

    kernel: int
    repeats: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    stride: int
    se_ratio: float = 0.25


STAGES = (
    StageArgs(3, 1, 32, 16, 1, 1), StageArgs(3, 2, 16, 24, 6, 2), StageArgs(5, 2, 24, 40, 6, 2),
    StageArgs(3, 3, 40, 80, 6, 2), StageArgs(5, 3, 80, 112, 6, 1), StageArgs(5, 4, 112, 192, 6, 2),
    StageArgs(3, 1, 192, 320, 6, 1),
)
VARIANTS: dict[str, tuple[float, float, int]] = {
    "efficientnet_b0": (1.0, 1.0, 224), "efficientnet_b1": (1.0, 1.1, 240), "efficientnet_b2": (1.1, 1.2, 260),
    "efficientnet_b3": (1.2, 1.4, 300), "efficientnet_b4": (1.4, 1.8, 380), "efficientnet_b5": (1.6, 2.2, 456),
    "efficientnet_b6": (1.8, 2.6, 528), "efficientnet_b7": (2.0, 3.1, 600),
}
"""name -> (width coefficient, depth coefficient, default input size)."""


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Keras's ``round_filters``: scale by width, round to a multiple of 8, never more than 10% down."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


@dataclasses.dataclass(frozen=True)
class BlockArgs:
    """One MBConv block after scaling: its Keras name prefix (``block2a``) and shape."""

    name: str
    kernel: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    stride: int
    se_ratio: float


def blocks(width: float, depth: float) -> tuple[BlockArgs, ...]:
    """Every block of the scaled network, named as Keras names them (``block{stage}{a,b,...}``)."""
    out = []
    for i, stage in enumerate(STAGES):
        f_in, f_out = round_filters(stage.filters_in, width), round_filters(stage.filters_out, width)
        for j in range(int(math.ceil(depth * stage.repeats))):
            out.append(BlockArgs(f"block{i + 1}{chr(97 + j)}", stage.kernel, f_in if j == 0 else f_out, f_out,
                                 stage.expand_ratio, stage.stride if j == 0 else 1, stage.se_ratio))
    return tuple(out)


class MBConv(nn.Module):
    """Keras ``efficientnet.block``: expand 1x1, depthwise kxk, squeeze-excite, project 1x1, identity skip."""

    args: BlockArgs

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool) -> jax.Array:
        a = self.args
        bn = functools.partial(kl.batch_norm, train=train, epsilon=BN_EPS)
        x = inputs
        filters = a.filters_in * a.expand_ratio
        if a.expand_ratio != 1:
            x = nn.swish(bn(kl.conv(x, filters, 1, use_bias=False, name="expand_conv"), name="expand_bn"))
        x = nn.swish(bn(kl.depthwise_conv(x, a.kernel, a.stride, "same", name="dwconv"), name="bn"))
        if 0 < a.se_ratio <= 1:
            se = jnp.mean(x, axis=(1, 2), keepdims=True)
            se = nn.swish(kl.conv(se, max(1, int(a.filters_in * a.se_ratio)), 1, name="se_reduce"))
            x = x * nn.sigmoid(kl.conv(se, filters, 1, name="se_expand"))
        x = bn(kl.conv(x, a.filters_out, 1, use_bias=False, name="project_conv"), name="project_bn")
        if a.stride == 1 and a.filters_in == a.filters_out:
            x = x + inputs  # Keras's drop-connect is identity at inference
        return x


def tap_names(width: float, depth: float) -> tuple[str, ...]:
    """The taps: ``stem``, every block under its Keras name (``block1a`` ..), then ``top`` (the feature map)."""
    return ("stem", *(b.name for b in blocks(width, depth)), "top")


class EfficientNet(nn.Module):
    """EfficientNet with width/depth coefficients. Input: ImageNet-normalised pixels (see module docstring). Taps
    and truncation (``taps``, ``until``) as :mod:`jaxheads.backbones.base` describes, named by :func:`tap_names`."""

    width: float = 1.0
    depth: float = 1.0
    num_classes: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, taps: bool = False,
                 until: str | None = None) -> dict[str, Any]:
        bn = functools.partial(kl.batch_norm, train=train, epsilon=BN_EPS)

        def stem(x: jax.Array) -> jax.Array:
            x = kl.conv(x, round_filters(32, self.width), 3, 2, "same", use_bias=False, name="stem_conv")
            return nn.swish(bn(x, name="stem_bn"))

        def top(x: jax.Array) -> jax.Array:
            x = kl.conv(x, round_filters(1280, self.width), 1, use_bias=False, name="top_conv")
            return nn.swish(bn(x, name="top_bn"))

        body = [MBConv(args, name=args.name) for args in blocks(self.width, self.depth)]
        layers = [("stem", stem), *((b.name, functools.partial(b, train=train)) for b in body), ("top", top)]
        out = run_layers(layers, x, taps=taps, until=until)
        x = out["features"]
        if self.num_classes and until in (None, "top"):
            out["logits"] = nn.Dense(self.num_classes, name="classifier")(kl.global_avg_pool(x))
        return out


def body_map(width: float, depth: float) -> tuple[LayerSpec, ...]:
    """Keras names -> Flax paths: ``block2a_expand_conv`` -> ``block2a/expand_conv`` (Keras names kept)."""
    specs = [LayerSpec("stem_conv", ("stem_conv",), "conv"), LayerSpec("stem_bn", ("stem_bn",), "bn")]
    for args in blocks(width, depth):
        parts = [("expand_conv", "conv"), ("expand_bn", "bn")] if args.expand_ratio != 1 else []
        parts += [("dwconv", "dwconv"), ("bn", "bn")]
        parts += [("se_reduce", "conv"), ("se_expand", "conv")] if 0 < args.se_ratio <= 1 else []
        parts += [("project_conv", "conv"), ("project_bn", "bn")]
        specs += [LayerSpec(f"{args.name}_{part}", (args.name, part), kind) for part, kind in parts]
    return (*specs, LayerSpec("top_conv", ("top_conv",), "conv"), LayerSpec("top_bn", ("top_bn",), "bn"))


TOP_MAP = (LayerSpec("predictions", ("classifier",), "dense"),)


def check_normalization(weights: KerasWeights) -> None:
    """Refuse a source whose in-model ``Normalization`` is neither ImageNet's nor Keras's untouched init."""
    arrays = next((v for k, v in weights.layers.items() if re.fullmatch(r"normalization(_\d+)?", k.rsplit("/")[-1])),
                  None)  # Keras auto-names it normalization, normalization_1, ...
    if not arrays:
        return
    mean, var = np.ravel(arrays[0]), np.ravel(arrays[1])
    identity = np.allclose(mean, 0) and np.allclose(var, 1)
    imagenet = np.allclose(mean, IMAGENET_MEAN, atol=1e-4) and (
        np.allclose(var, IMAGENET_STD, atol=1e-4) or np.allclose(var, np.square(IMAGENET_STD), atol=1e-5))
    if not (identity or imagenet):
        raise KerasWeightsError(
            f"{weights.source}: layer 'normalization' holds mean {mean.tolist()}, variance {var.tolist()}; "
            "jaxheads's EfficientNet preprocessing is the ImageNet mean/std"
        )


def convert(config: BackboneConfig, weights: KerasWeights) -> dict:
    """Flax variables for a registered EfficientNet from Keras weights (the classifier too when present)."""
    check_normalization(weights)
    width, depth, _ = VARIANTS[config.name]
    build = functools.partial(EfficientNet, width, depth)
    return convert_family(weights, lambda n: build(num_classes=n), body_map(width, depth), TOP_MAP, 64, config.name)


def imagenet_file(config: BackboneConfig) -> ImagenetFile:
    """keras.applications' notop file (``efficientnetb0_notop.h5``)."""
    file = f"efficientnet{config.name.rsplit('_', 1)[1]}_notop.h5"
    return ImagenetFile(file, f"https://storage.googleapis.com/keras-applications/{file}")


for _name, (_width, _depth, _size) in VARIANTS.items():
    register(
        BackboneConfig(
            name=_name,
            build=functools.partial(EfficientNet, _width, _depth),
            preprocessing=Preprocessing(
                input_size=_size,
                mean=tuple(255.0 * m for m in IMAGENET_MEAN),  # type: ignore[arg-type]
                std=tuple(255.0 * s for s in IMAGENET_STD),  # type: ignore[arg-type]
            ),
            feature_channels=round_filters(1280, _width),
            weights=keras_loaders(convert, imagenet_file),
            blocks=("stem_conv", "stem_bn", *(b.name for b in blocks(_width, _depth)), "top_conv", "top_bn"),
            taps=tap_names(_width, _depth),
        )
    )
