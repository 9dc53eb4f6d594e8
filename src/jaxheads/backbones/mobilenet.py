"""MobileNet V1 and V2 (``keras.applications.MobileNet/MobileNetV2``) in Flax, with the Keras weight name maps.

Features are Keras's ``include_top=False`` output: V1 ``conv_pw_13_relu`` (N, H/32, W/32, 1024*alpha),
V2 ``out_relu`` (N, H/32, W/32, 1280, more for alpha > 1). Input: Keras "tf" preprocessing, pixels scaled to
[-1, 1]; 224 px by default, any size >= 32 works.

Padding, as Keras does it: V1 pads every stride-2 depthwise conv by ((0, 1), (0, 1)) whatever the size; V2
pads by ``imagenet_utils.correct_pad``, which for a model built for a fixed size is TensorFlow's "same" rule
(so odd sizes get (1, 1)). A Keras V2 built with ``input_shape=None`` uses (0, 1) even for odd sizes; we match
the fixed-size model. Batch norm: epsilon 1e-3 (momentum 0.99 in V1, 0.999 in V2).
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

TF_MODE = Preprocessing(input_size=224, mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))
"""Keras ``preprocess_input(mode="tf")``: x / 127.5 - 1."""
BN_EPS = 1e-3
BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"

# ------------------------------------------------------------------------------------------------ V1

V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)
"""(pointwise filters before alpha, depthwise stride) of blocks 1..13."""
V1_STRIDE2_PADS = ((0, 1), (0, 1))


class V1Block(nn.Module):
    """Depthwise 3x3 (+BN, ReLU6) then pointwise 1x1 (+BN, ReLU6), Keras's ``_depthwise_conv_block``."""

    filters: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pad = "same" if self.stride == 1 else V1_STRIDE2_PADS
        x = kl.depthwise_conv(x, 3, self.stride, pad, name="depthwise")
        x = kl.relu6(kl.batch_norm(x, train, BN_EPS, name="depthwise_bn"))
        x = kl.conv(x, self.filters, 1, use_bias=False, name="pointwise")
        return kl.relu6(kl.batch_norm(x, train, BN_EPS, name="pointwise_bn"))


def v1_taps() -> tuple[str, ...]:
    """V1's taps: the stem, then blocks 1..13 (the last is the feature map)."""
    return ("stem", *(f"block{i}" for i in range(1, len(V1_BLOCKS) + 1)))


class MobileNetV1(nn.Module):
    """MobileNet V1 of width ``alpha`` (depth multiplier 1). Returns ``{"features"}`` (+ ``"logits"``); taps and
    truncation (``taps``, ``until``) as :mod:`jaxheads.backbones.base` describes, named by :func:`v1_taps`."""

    alpha: float = 1.0
    num_classes: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, taps: bool = False,
                 until: str | None = None) -> dict[str, Any]:
        def stem(x: jax.Array) -> jax.Array:
            x = kl.conv(x, int(32 * self.alpha), 3, 2, use_bias=False, name="stem_conv")
            return kl.relu6(kl.batch_norm(x, train, BN_EPS, name="stem_bn"))

        blocks = [V1Block(int(filters * self.alpha), stride, name=f"block{i}")
                  for i, (filters, stride) in enumerate(V1_BLOCKS, 1)]
        out = run_layers([("stem", stem), *((b.name, functools.partial(b, train=train)) for b in blocks)], x,
                         taps=taps, until=until)
        x = out["features"]
        if self.num_classes and until in (None, blocks[-1].name):
            # Keras: GlobalAveragePooling2D(keepdims) -> Dropout -> 1x1 conv_preds -> reshape -> softmax.
            pooled = kl.global_avg_pool(x)[:, None, None, :]
            logits = kl.conv(pooled, self.num_classes, 1, name="classifier")
            out["logits"] = logits.reshape(x.shape[0], self.num_classes)
        return out


def v1_body_map() -> tuple[LayerSpec, ...]:
    """Keras V1 layer names -> Flax paths (``conv_dw_3`` -> ``block3/depthwise``)."""
    stem = (LayerSpec("conv1", ("stem_conv",), "conv"), LayerSpec("conv1_bn", ("stem_bn",), "bn"))
    blocks = tuple(
        spec
        for i in range(1, len(V1_BLOCKS) + 1)
        for spec in (
            LayerSpec(f"conv_dw_{i}", (f"block{i}", "depthwise"), "dwconv"),
            LayerSpec(f"conv_dw_{i}_bn", (f"block{i}", "depthwise_bn"), "bn"),
            LayerSpec(f"conv_pw_{i}", (f"block{i}", "pointwise"), "conv"),
            LayerSpec(f"conv_pw_{i}_bn", (f"block{i}", "pointwise_bn"), "bn"),
        )
    )
    return stem + blocks


V1_TOP_MAP = (LayerSpec("conv_preds", ("classifier",), "conv"),)

# ------------------------------------------------------------------------------------------------ V2

V2_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6), (320, 1, 6),
)
"""(output filters before alpha, stride, expansion) of blocks 0..16."""
V2_BN_MOMENTUM = 0.999


def make_divisible(v: float, divisor: int = 8) -> int:
    """Keras's ``_make_divisible``: round to a multiple of ``divisor`` without going more than 10% down."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class V2Block(nn.Module):
    """Inverted residual: 1x1 expand (not in block 0), 3x3 depthwise, 1x1 linear project, skip when shapes allow."""

    filters: int
    stride: int
    expansion: int

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool) -> jax.Array:
        bn = functools.partial(kl.batch_norm, train=train, epsilon=BN_EPS, momentum=V2_BN_MOMENTUM)
        x = inputs
        if self.expansion != 1:
            x = kl.conv(x, self.expansion * inputs.shape[-1], 1, use_bias=False, name="expand")
            x = kl.relu6(bn(x, name="expand_bn"))
        x = kl.depthwise_conv(x, 3, self.stride, "same", name="depthwise")
        x = kl.relu6(bn(x, name="depthwise_bn"))
        x = bn(kl.conv(x, self.filters, 1, use_bias=False, name="project"), name="project_bn")
        if self.stride == 1 and inputs.shape[-1] == self.filters:
            x = x + inputs
        return x


def v2_taps() -> tuple[str, ...]:
    """V2's taps: the stem, blocks 0..16, then the 1x1 head (the feature map)."""
    return ("stem", *(f"block{i}" for i in range(len(V2_BLOCKS))), "head")


class MobileNetV2(nn.Module):
    """MobileNet V2 of width ``alpha``. Returns ``{"features": out_relu}`` (+ ``"logits"``); taps and truncation
    (``taps``, ``until``) as :mod:`jaxheads.backbones.base` describes, named by :func:`v2_taps`."""

    alpha: float = 1.0
    num_classes: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, taps: bool = False,
                 until: str | None = None) -> dict[str, Any]:
        bn = functools.partial(kl.batch_norm, train=train, epsilon=BN_EPS, momentum=V2_BN_MOMENTUM)

        def stem(x: jax.Array) -> jax.Array:
            return kl.relu6(bn(kl.conv(x, make_divisible(32 * self.alpha), 3, 2, use_bias=False, name="stem_conv"),
                               name="stem_bn"))

        def head(x: jax.Array) -> jax.Array:
            last = make_divisible(1280 * self.alpha) if self.alpha > 1.0 else 1280
            return kl.relu6(bn(kl.conv(x, last, 1, use_bias=False, name="head_conv"), name="head_bn"))

        blocks = [V2Block(make_divisible(int(filters * self.alpha)), stride, expansion, name=f"block{i}")
                  for i, (filters, stride, expansion) in enumerate(V2_BLOCKS)]
        layers = [("stem", stem), *((b.name, functools.partial(b, train=train)) for b in blocks), ("head", head)]
        out = run_layers(layers, x, taps=taps, until=until)
        x = out["features"]
        if self.num_classes and until in (None, "head"):
            out["logits"] = nn.Dense(self.num_classes, name="classifier")(kl.global_avg_pool(x))
        return out


def v2_body_map() -> tuple[LayerSpec, ...]:
    """Keras V2 layer names -> Flax paths (``block_3_expand_BN`` -> ``block3/expand_bn``)."""
    specs = [LayerSpec("Conv1", ("stem_conv",), "conv"), LayerSpec("bn_Conv1", ("stem_bn",), "bn")]
    for i, (_, _, expansion) in enumerate(V2_BLOCKS):
        prefix = f"block_{i}_" if i else "expanded_conv_"
        parts = (("expand", "conv"), ("depthwise", "dwconv"), ("project", "conv"))
        for part, kind in parts[0 if expansion != 1 else 1 :]:
            specs.append(LayerSpec(f"{prefix}{part}", (f"block{i}", part), kind))
            specs.append(LayerSpec(f"{prefix}{part}_BN", (f"block{i}", f"{part}_bn"), "bn"))
    specs += [LayerSpec("Conv_1", ("head_conv",), "conv"), LayerSpec("Conv_1_bn", ("head_bn",), "bn")]
    return tuple(specs)


V2_TOP_MAP = (LayerSpec("predictions", ("classifier",), "dense"),)

# ------------------------------------------------------------------------------------------ registry

V1_ALPHAS = {"mobilenet_v1": 1.0, "mobilenet_v1_075": 0.75, "mobilenet_v1_050": 0.5, "mobilenet_v1_025": 0.25}
V2_ALPHAS = {
    "mobilenet_v2": 1.0, "mobilenet_v2_035": 0.35, "mobilenet_v2_050": 0.5, "mobilenet_v2_075": 0.75,
    "mobilenet_v2_130": 1.3, "mobilenet_v2_140": 1.4,
}


def convert_v1(config: BackboneConfig, weights: KerasWeights) -> dict:
    """Flax variables for a registered MobileNet V1 from Keras weights (the classifier too when present)."""
    build = functools.partial(MobileNetV1, V1_ALPHAS[config.name])
    return convert_family(weights, lambda n: build(num_classes=n), v1_body_map(), V1_TOP_MAP, 224, config.name)


def convert_v2(config: BackboneConfig, weights: KerasWeights) -> dict:
    """Flax variables for a registered MobileNet V2 from Keras weights (the classifier too when present)."""
    build = functools.partial(MobileNetV2, V2_ALPHAS[config.name])
    return convert_family(weights, lambda n: build(num_classes=n), v2_body_map(), V2_TOP_MAP, 224, config.name)


def v1_imagenet_file(config: BackboneConfig) -> ImagenetFile:
    """keras.applications' V1 notop file at 224 px (``mobilenet_7_5_224_tf_no_top.h5`` for alpha 0.75)."""
    alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[V1_ALPHAS[config.name]]
    file = f"mobilenet_{alpha_text}_224_tf_no_top.h5"
    return ImagenetFile(file, f"{BASE_URL}mobilenet/{file}")


def v2_imagenet_file(config: BackboneConfig) -> ImagenetFile:
    """keras.applications' V2 notop file at 224 px."""
    file = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{V2_ALPHAS[config.name]}_224_no_top.h5"
    return ImagenetFile(file, f"{BASE_URL}mobilenet_v2/{file}")


for _name, _alpha in V1_ALPHAS.items():
    register(
        BackboneConfig(
            name=_name,
            build=functools.partial(MobileNetV1, _alpha),
            preprocessing=TF_MODE,
            feature_channels=int(1024 * _alpha),
            weights=keras_loaders(convert_v1, v1_imagenet_file),
            blocks=("stem_conv", "stem_bn", *(f"block{i}" for i in range(1, 14))),
            taps=v1_taps(),
        )
    )
for _name, _alpha in V2_ALPHAS.items():
    register(
        BackboneConfig(
            name=_name,
            build=functools.partial(MobileNetV2, _alpha),
            preprocessing=TF_MODE,
            feature_channels=make_divisible(1280 * _alpha) if _alpha > 1.0 else 1280,
            weights=keras_loaders(convert_v2, v2_imagenet_file),
            blocks=("stem_conv", "stem_bn", *(f"block{i}" for i in range(17)), "head_conv", "head_bn"),
            taps=v2_taps(),
        )
    )
