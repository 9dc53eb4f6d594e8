"""Backbone registry: names -> :class:`BackboneConfig`, and :func:`load` to build one with its weights.

Each family module registers its names where it defines them (:func:`register` at import, as timm does); that is
the only list of names. The registry knows only which modules hold families: asking for a name imports them in
order until one has registered it (the default, EfficientNet-Lite, comes first, so a sweep on it imports no
other family), and :func:`list_backbones` imports them all.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import jax

from jaxheads.backbones import timm_convert
from jaxheads.backbones.base import Backbone, BackboneConfig, Preprocessing, sha256_file

__all__ = ["Backbone", "BackboneConfig", "Preprocessing", "get_config", "list_backbones", "load", "register",
           "sha256_file"]

# The modules that define backbone families, in the order a name is looked for.
_FAMILY_MODULES = (
    "jaxheads.backbones.efficientnet_lite",
    "jaxheads.backbones.vgg",
    "jaxheads.backbones.mobilenet",
    "jaxheads.backbones.resnet",
    "jaxheads.backbones.efficientnet",
    "jaxheads.backbones.xception",
)
_REGISTRY: dict[str, BackboneConfig] = {}


def register(config: BackboneConfig) -> BackboneConfig:
    """Add a config to the registry (called by family modules at import)."""
    _REGISTRY[config.name] = config
    return config


def _import_families(until: str | None = None) -> None:
    """Import the family modules (each registers its names), stopping once ``until`` is registered."""
    for module in _FAMILY_MODULES:
        if until is not None and until in _REGISTRY:
            return
        importlib.import_module(module)


def list_backbones() -> list[str]:
    """Every registered backbone name (every family's, and any registered by the caller; no ``keras:`` model)."""
    _import_families()
    return sorted(n for n in _REGISTRY if not n.startswith("keras:"))


def get_config(name: str) -> BackboneConfig:
    """The config registered under ``name``; a clear error lists the known names otherwise."""
    if name not in _REGISTRY and name.startswith("keras:"):  # a user's saved Keras model: its base, identified
        from jaxheads.backbones import keras_model

        return register(keras_model.config_for(name))
    if name not in _REGISTRY:
        _import_families(until=name)
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}")
    return _REGISTRY[name]


def load(name: str, weights: Any = "default", *, num_classes: int = 0, seed: int = 0) -> Backbone:
    """Build backbone ``name`` with ``weights``: ``"default"``/``"imagenet"``/another named source, a file path,
    a source object where the family has an ``"object"`` loader (a Keras model), ``None`` for a random init, or
    timm's weights (``timm:NAME``, a ``.safetensors`` file, a timm ``.pth``: :mod:`timm_convert`, with timm's mean/std).
    ``num_classes > 0`` keeps the pretrained classifier (if the source has one).
    """
    config = get_config(name)
    module = config.build(num_classes=num_classes)
    if weights == "default":
        weights = config.default_weights
    if weights is None:
        size = config.preprocessing.input_size
        variables = module.init(jax.random.key(seed), jax.numpy.zeros((1, size, size, 3)), train=False)
        return Backbone(config, module, variables, f"random-seed{seed}")
    if timm_convert.claims(config, weights):  # timm:NAME, a .safetensors file, a .pth in timm's key layout
        config = dataclasses.replace(config, preprocessing=timm_convert.preprocessing(config, weights))
        loader = timm_convert.load
    elif isinstance(weights, (str, Path)) and str(weights) in config.weights:
        loader = config.weights[str(weights)]
    elif isinstance(weights, (str, Path)) and Path(weights).exists() and "file" in config.weights:
        loader = config.weights["file"]
    elif isinstance(weights, (str, Path)) and not Path(weights).exists() and "/" in str(weights):
        raise FileNotFoundError(f"backbone {name!r}: weights file {weights} does not exist")
    elif not isinstance(weights, (str, Path)) and "object" in config.weights:
        loader = config.weights["object"]  # an in-memory source object, e.g. a Keras model
    else:
        raise ValueError(
            f"backbone {name!r}: unknown weights {weights!r}; expected None, a file path, or one of "
            f"{sorted(k for k in config.weights if k != 'file')}"
        )
    variables, weights_id = loader(config, weights)
    if num_classes == 0:
        variables = {k: _drop_classifier(v) for k, v in variables.items()}
    return Backbone(config, module, variables, weights_id)


def _drop_classifier(tree: Any) -> Any:
    """Remove a top-level ``classifier`` entry, so feature-only modules accept variables converted with the top."""
    if isinstance(tree, dict) and "classifier" in tree:
        return {k: v for k, v in tree.items() if k != "classifier"}
    return tree
