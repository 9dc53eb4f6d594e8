"""Keras weights -> Flax variables: one reader for every Keras weight source, one converter driven by a name map.

Sources (:func:`read_keras_weights`):

* a Keras model object (``keras.applications.VGG16(weights=None)`` or any model holding those layers);
* a legacy ``.h5`` file as ``keras.applications`` downloads them (``*_notop.h5``) or ``model.save("m.h5")``
  writes them (weights under ``model_weights``; a nested model's layers are found by their own names);
* a Keras 3 ``.weights.h5`` (``model.save_weights``) or ``.keras`` archive. These do not store layer names:
  a layer is addressed by its class and position (``layers/conv2d_3/vars/0``), or by an attribute name in
  subclassed models (``block1/layers/conv2d``). They are matched *by order within each layer class*, which
  is the order of the name map (tested against ``model.layers``).

A family's name map (:class:`LayerSpec` records: Keras layer name, Flax path, kind) is data; :func:`convert`
walks it, checks every array's shape against the Flax module's own (from ``jax.eval_shape``), and fails on the
first Keras layer that is missing or does not fit, naming it. Every Flax variable must be filled exactly once.

:func:`keras_loaders` gives a family its registry weight sources (``"imagenet"``, ``"file"``, ``"object"``).
Converted variables are saved once with :mod:`jaxheads.checkpoint` under
``checkpoint.cache_dir()/backbones/<name>-<hash>`` and later runs read them back without Keras or the source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads import checkpoint
from jaxheads.backbones.base import BackboneConfig, WeightsLoader, sha256_file


class LayerSpec(NamedTuple):
    """One Keras layer of a family's name map: where its weights go in the Flax variables and how."""

    keras: str
    """Keras layer name (as in ``model.get_layer(name)`` and legacy ``.h5`` files), or ``*label`` for a layer
    Keras names by a global counter (Xception's shortcut ``conv2d_N``): the next unclaimed layer of its class."""
    path: tuple[str, ...]
    """Flax module path under ``params`` (and ``batch_stats`` for batch norm)."""
    kind: str
    """``conv``, ``dwconv``, ``sepconv``, ``bn`` or ``dense`` (see ``_KINDS``)."""


# Kind -> Keras 3 class name used for positional names in ``.weights.h5``/``.keras`` files.
_KERAS_CLASS = {"conv": "conv2d", "dwconv": "depthwise_conv2d", "sepconv": "separable_conv2d",
                "bn": "batch_normalization", "dense": "dense"}
ANONYMOUS = "*"
"""Prefix of a name-map label whose Keras layer has no fixed name (matched by class order, see ``LayerSpec``)."""
# Canonical order of Keras variable names inside one layer (build order).
_VAR_RANK = {
    name: i
    for i, name in enumerate(
        ("kernel", "depthwise_kernel", "pointwise_kernel", "gamma", "beta", "bias", "moving_mean", "moving_variance",
         "mean", "variance", "count")
    )
}


class KerasWeightsError(ValueError):
    """A Keras weight source that does not fit a backbone; the message names the first layer that does not."""


@dataclasses.dataclass(frozen=True)
class KerasWeights:
    """Arrays of a Keras weight source, per layer, each layer's arrays in Keras build order.

    ``named`` is True when keys are real Keras layer names; False for Keras 3 files, whose keys are
    positional paths (``layers/conv2d_3``), matched by class and order.
    """

    layers: Mapping[str, list[np.ndarray]]
    named: bool
    source: str


# --------------------------------------------------------------------------------------------------- reading


def read_keras_weights(source: Any) -> KerasWeights:
    """Read a Keras model object, a legacy ``.h5``, a Keras 3 ``.weights.h5`` or a ``.keras`` archive."""
    if hasattr(source, "layers") and hasattr(source, "get_weights"):
        return KerasWeights(_read_model(source), True, f"<keras model {getattr(source, 'name', '?')}>")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"Keras weights file {path} does not exist")
    import h5py

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read("model.weights.h5")
            with h5py.File(io.BytesIO(data), "r") as f:
                return KerasWeights(_read_keras3(f), False, str(path))
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" in group.attrs:
                return KerasWeights(_read_legacy(group), True, str(path))
            return KerasWeights(_read_keras3(f), False, str(path))
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise KerasWeightsError(
            f"cannot read {path} as Keras weights (truncated, or not a Keras .h5/.keras file): {e}"
        ) from e


def _strs(values: Iterable[Any]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _in_build_order(variables: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A layer's arrays in Keras build order; names we do not know (Keras 1 ``*_W_1:0``) keep the file order."""
    if all(name in _VAR_RANK for name in variables):
        return [variables[name] for name in sorted(variables, key=_VAR_RANK.__getitem__)]
    return list(variables.values())


def _read_legacy(group: Any) -> dict[str, list[np.ndarray]]:
    """Legacy HDF5 layout: ``layer_names`` attribute, then per layer its ``weight_names`` datasets.

    A nested model (e.g. a MobileNetV2 inside a fine-tuned classifier) is one group whose weight names carry
    the inner layer names (``block_1_expand/kernel``); the inner names become the keys.
    """
    layers: dict[str, dict[str, np.ndarray]] = {}
    for layer_name in _strs(group.attrs["layer_names"]):
        layer_group = group[layer_name]
        for weight_name in _strs(layer_group.attrs["weight_names"]):
            parts = weight_name.split(":")[0].split("/")
            owner = parts[-2] if len(parts) >= 2 else layer_name
            layers.setdefault(owner, {})[parts[-1]] = np.asarray(layer_group[weight_name])
    return {name: _in_build_order(variables) for name, variables in layers.items()}


def _read_keras3(f: Any) -> dict[str, list[np.ndarray]]:
    """Keras 3 layout: every layer with weights is a group holding ``vars/0``, ``vars/1``, ... in build order."""
    layers: dict[str, list[np.ndarray]] = {}

    def visit(name: str, obj: Any) -> None:
        if name.endswith("/vars") and len(obj):
            layers[name[: -len("/vars")]] = [np.asarray(obj[str(i)]) for i in range(len(obj))]

    f.visititems(visit)
    return layers


def _read_model(model: Any) -> dict[str, list[np.ndarray]]:
    """A Keras model's layers by name (nested models flattened), each layer's arrays in build order."""
    layers: dict[str, list[np.ndarray]] = {}
    for layer in model.layers:
        if hasattr(layer, "layers"):
            layers.update(_read_model(layer))
        elif layer.weights:
            variables = {_var_name(w): np.asarray(w.numpy()) for w in layer.weights}
            layers[layer.name] = _in_build_order(variables)
    return layers


def _var_name(variable: Any) -> str:
    """``kernel`` from a Keras 3 variable (``name``) or a tf.keras one (``block1_conv1/kernel:0``)."""
    return str(getattr(variable, "path", variable.name)).split(":")[0].split("/")[-1]


# ------------------------------------------------------------------------------------------------ matching


def _natural_key(text: str) -> list[Any]:
    """Sort ``conv2d_2`` before ``conv2d_10`` (Keras 3 numbers same-class layers in model order)."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]


def _class_of(path: str) -> str:
    """``batch_normalization`` from ``layers/batch_normalization_12`` (positional Keras 3 names)."""
    return re.sub(r"_\d+$", "", path.rsplit("/", 1)[-1])


def select(weights: KerasWeights, name_map: Sequence[LayerSpec], model: str) -> dict[str, list[np.ndarray]]:
    """The arrays of every layer in ``name_map`` (by name, or by class and order for unnamed sources).

    Raises :class:`KerasWeightsError` at the first layer the source lacks.
    """
    buckets = _class_buckets(weights, name_map)
    chosen: dict[str, list[np.ndarray]] = {}
    for spec in name_map:
        if weights.named and not spec.keras.startswith(ANONYMOUS):
            if spec.keras not in weights.layers:
                raise KerasWeightsError(_missing(spec, weights, model))
            chosen[spec.keras] = weights.layers[spec.keras]
            continue
        queue = buckets.get(_KERAS_CLASS[spec.kind], [])
        if not queue:
            raise KerasWeightsError(_missing(spec, weights, model))
        chosen[spec.keras] = weights.layers[queue.pop(0)]
    return chosen


def _class_buckets(weights: KerasWeights, name_map: Sequence[LayerSpec]) -> dict[str, list[str]]:
    """Per Keras class, the source's layers matched by order: all of them for a positional source (in natural
    order); for a named one, those no spec claims by name (in the source's order, which is ``model.layers``')."""
    if weights.named:
        claimed = {spec.keras for spec in name_map}
        paths = [p for p in weights.layers if p not in claimed]
    else:
        paths = sorted(weights.layers, key=_natural_key)
    buckets: dict[str, list[str]] = {}
    for path in paths:
        buckets.setdefault(_class_of(path), []).append(path)
    return buckets


def has_layers(weights: KerasWeights, name_map: Sequence[LayerSpec]) -> bool:
    """True when the source holds every layer of ``name_map`` (used to detect an optional classifier)."""
    by_order = [spec for spec in name_map if not weights.named or spec.keras.startswith(ANONYMOUS)]
    if any(spec.keras not in weights.layers for spec in name_map if spec not in by_order):
        return False
    counts = {cls: len(paths) for cls, paths in _class_buckets(weights, name_map).items()}
    need: dict[str, int] = {}
    for spec in by_order:
        need[_KERAS_CLASS[spec.kind]] = need.get(_KERAS_CLASS[spec.kind], 0) + 1
    return all(counts.get(cls, 0) >= n for cls, n in need.items())


def _missing(spec: LayerSpec, weights: KerasWeights, model: str) -> str:
    found = list(weights.layers)[:4]
    by_order = not weights.named or spec.keras.startswith(ANONYMOUS)
    what = f"{spec.kind} layer {spec.keras!r} (by class order)" if by_order else f"layer {spec.keras!r}"
    return (
        f"{weights.source}: {what} of {model} not found; the source's layers begin "
        f"{', '.join(found) or '(none)'} ({len(weights.layers)} with weights) — truncated, or another architecture?"
    )


# ---------------------------------------------------------------------------------------------- converting


def _conv(arrays: list[np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    out = [("params", "kernel", arrays[0])]
    return out + [("params", "bias", arrays[1])] if len(arrays) == 2 else out


def _dwconv(arrays: list[np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    k = arrays[0]
    kernel = k.reshape(k.shape[0], k.shape[1], 1, k.shape[2] * k.shape[3])  # (k, k, C, m) -> (k, k, 1, C*m)
    return _conv([kernel, *arrays[1:]])


def _sepconv(arrays: list[np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    """SeparableConv2D (depth multiplier 1): its depthwise and pointwise kernels as two Flax convs."""
    ((_, dw_leaf, kernel),) = _dwconv(arrays[:1])
    return [("params", f"depthwise/{dw_leaf}", kernel), ("params", "pointwise/kernel", arrays[1]),
            *[("params", "pointwise/bias", b) for b in arrays[2:]]]


def _bn(arrays: list[np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    gamma, beta, mean, var = arrays
    return [("params", "scale", gamma), ("params", "bias", beta), ("batch_stats", "mean", mean),
            ("batch_stats", "var", var)]


# Kind -> (allowed number of Keras arrays, function to (collection, leaf name, array) triples).
_KINDS: dict[str, tuple[tuple[int, ...], Callable[[list[np.ndarray]], list[tuple[str, str, np.ndarray]]]]] = {
    "conv": ((1, 2), _conv),
    "dwconv": ((1, 2), _dwconv),
    "sepconv": ((2, 3), _sepconv),
    "bn": ((4,), _bn),
    "dense": ((2,), _conv),
}


def expected_shapes(module: Any, input_size: int) -> dict[str, Any]:
    """The module's variable shapes (``jax.ShapeDtypeStruct`` tree), traced without computing anything."""
    x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
    return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def convert(
    weights: KerasWeights, name_map: Sequence[LayerSpec], expected: Mapping[str, Any], model: str
) -> dict[str, Any]:
    """Flax variables from Keras arrays along ``name_map``, every array's shape checked against ``expected``."""
    arrays = select(weights, name_map, model)
    out: dict[str, dict[str, Any]] = {}
    for spec in name_map:
        counts, to_flax = _KINDS[spec.kind]
        if len(arrays[spec.keras]) not in counts:
            raise KerasWeightsError(
                f"{weights.source}: layer {spec.keras!r} of {model} has {len(arrays[spec.keras])} arrays, "
                f"expected {' or '.join(map(str, counts))} for a {spec.kind} layer"
            )
        for collection, leaf, value in to_flax(arrays[spec.keras]):
            path = (collection, *spec.path, *leaf.split("/"))  # a sepconv fills two sub-modules
            want = _lookup(expected, path)
            if want is None or tuple(value.shape) != tuple(want.shape):
                raise KerasWeightsError(
                    f"{weights.source}: layer {spec.keras!r} {leaf}: source has shape {tuple(value.shape)}, "
                    f"{model} expects {None if want is None else tuple(want.shape)} at {'/'.join(spec.path)}"
                )
            _assign(out, path, np.asarray(value, np.float32))
    missing = sorted(set(_leaf_paths(expected)) - set(_leaf_paths(out)))
    if missing:
        raise KerasWeightsError(f"{model}: the name map leaves variables unset: {missing[:5]}")
    return out


def _lookup(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _assign(tree: dict[str, Any], path: Sequence[str], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    if path[-1] in tree:
        raise KerasWeightsError(f"name map assigns {'/'.join(path)} twice")
    tree[path[-1]] = value


def _leaf_paths(tree: Any, prefix: tuple[str, ...] = ()) -> list[str]:
    if isinstance(tree, Mapping):
        return [p for k, v in tree.items() for p in _leaf_paths(v, (*prefix, k))]
    return ["/".join(prefix)]


# ------------------------------------------------------------------------------------- registry sources

Converter = Callable[[BackboneConfig, KerasWeights], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class ImagenetFile:
    """Where keras.applications keeps a model's ImageNet weights: file name (in ``~/.keras/models``) and URL."""

    file: str
    url: str


def keras_models_dir() -> Path:
    """Keras's download cache for application weights: ``$KERAS_HOME/models``, else ``~/.keras/models``."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def keras_loaders(converter: Converter, imagenet: Callable[[BackboneConfig], ImagenetFile]) -> dict[str, WeightsLoader]:
    """Registry weight sources for a Keras family: ``"imagenet"``, ``"file"`` (a path) and ``"object"`` (a model)."""

    def from_imagenet(config: BackboneConfig, _: Any) -> tuple[dict[str, Any], str]:
        spec = imagenet(config)
        weights_id = f"keras-imagenet:{spec.file}"
        return _cached(config, weights_id, lambda: converter(config, read_keras_weights(_fetch(config, spec))))

    def from_file(config: BackboneConfig, path: Any) -> tuple[dict[str, Any], str]:
        weights_id = sha256_file(path)[:16]  # what features.backbone_source keys a file by, so predict accepts it
        return _cached(config, weights_id, lambda: converter(config, read_keras_weights(path)))

    def from_object(config: BackboneConfig, model: Any) -> tuple[dict[str, Any], str]:
        weights = read_keras_weights(model)
        digest = hashlib.sha256()
        for name, arrays in weights.layers.items():
            digest.update(name.encode())
            for a in arrays:
                digest.update(np.ascontiguousarray(a).tobytes())
        return converter(config, weights), f"keras-object:sha256:{digest.hexdigest()[:16]}"

    return {"imagenet": from_imagenet, "file": from_file, "object": from_object}


def cache_path(config: BackboneConfig, weights_id: str) -> Path:
    """The orbax checkpoint directory of ``config`` converted from ``weights_id``."""
    key = hashlib.sha256(weights_id.encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", config.name)  # a keras:PATH backbone's name holds a path
    return checkpoint.cache_dir() / "backbones" / f"{name}-{key}"


def _cached(
    config: BackboneConfig, weights_id: str, produce: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], str]:
    """Read converted variables from the cache, else convert once and save them there."""
    path = cache_path(config, weights_id)
    if checkpoint.exists(path):
        variables, _ = checkpoint.load(path)
        return variables, weights_id
    variables = produce()
    checkpoint.save(path, variables, {"backbone": config.name, "weights_id": weights_id})
    return variables, weights_id


def _fetch(config: BackboneConfig, spec: ImagenetFile, timeout_s: float = 3.0) -> Path:
    """The local Keras file for ``spec``: already in Keras's cache, else downloaded by Keras if its server
    answers within ``timeout_s``, else a :class:`FileNotFoundError` saying which file to put where."""
    local = keras_models_dir() / spec.file
    if local.is_file():
        return local
    if not _reachable(spec.url, timeout_s):
        raise FileNotFoundError(
            f"backbone {config.name!r}: ImageNet weights {spec.file} are not in {keras_models_dir()} and "
            f"{spec.url.split('/')[2]} does not answer. Download {spec.url} and put it at {local} "
            f"(or pass the file's path as weights=...)."
        )
    import keras

    return Path(keras.utils.get_file(spec.file, spec.url, cache_subdir="models"))


def _reachable(url: str, timeout_s: float) -> bool:
    """Whether an HTTP ``HEAD`` of ``url`` succeeds within ``timeout_s``, DNS and TLS included (run in a daemon
    thread joined with the same timeout, so a resolver that hangs cannot hold us longer)."""
    import urllib.request

    result: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s) as r:
                result.append(200 <= r.status < 400)
        except Exception:  # noqa: BLE001  (any failure means: not reachable now)
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def top_classes(weights: KerasWeights, body: Sequence[LayerSpec], top: Sequence[LayerSpec]) -> int:
    """Number of classes of the source's classifier (the last layer of ``top``), or 0 when it has none."""
    if not top or not has_layers(weights, [*body, *top]):
        return 0
    return int(select(weights, [*body, *top], "classifier")[top[-1].keras][0].shape[-1])


def convert_family(
    weights: KerasWeights,
    build: Callable[[int], Any],
    body: Sequence[LayerSpec],
    top: Sequence[LayerSpec],
    input_size: int,
    model: str,
) -> dict[str, Any]:
    """The shared converter body: detect the classifier, trace the module's shapes, convert along the map.

    ``build(num_classes)`` returns the Flax module; ``input_size`` is one its classifier accepts.
    """
    num_classes = top_classes(weights, body, top)
    expected = expected_shapes(build(num_classes), input_size)
    return convert(weights, [*body, *(top if num_classes else ())], expected, model)
