"""What every backbone is: a Flax module, its preprocessing as data, and where its weights come from.

A backbone module maps preprocessed images (N, H, W, 3) float32 to a dict with at least
``"features"``: the last feature map (N, h, w, C); modules built with ``num_classes > 0`` also return
``"logits"`` (N, num_classes). Batch-norm statistics live in ``variables["batch_stats"]``.

Taps (timm's ``features_only``, big_vision's ``out`` dict): a zoo module names the output of its stem and of each
block, in order, and lists the names in ``BackboneConfig.taps`` (the last is ``"features"``). Called with
``taps=True`` it also returns ``"taps"``: {name: (N, h, w, C) map} of every layer it ran; with ``until=name`` it
stops after that layer, whose map is then ``"features"``: the backbone truncated there (no logits).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Variables = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How raw RGB pixels in [0, 255] become the model's input: optional RGB->BGR, then (x - mean) / std.

    This one affine form covers Keras's "tf" ([-1, 1]), "torch" (ImageNet mean/std), "caffe" (BGR mean)
    modes and EfficientNet-Lite's (x - 127) / 128.
    """

    input_size: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bgr: bool = False

    def __call__(self, images: jax.Array | np.ndarray) -> jax.Array:
        x = jnp.asarray(images, jnp.float32)
        if self.bgr:
            x = x[..., ::-1]
        shape = (1,) * (x.ndim - 1) + (3,)  # explicit broadcast (tests run with rank promotion disallowed)
        mean = jnp.asarray(self.mean, jnp.float32).reshape(shape)
        return (x - mean) / jnp.asarray(self.std, jnp.float32).reshape(shape)

    def key(self) -> str:
        """A short string that changes whenever the preprocessing does (for feature-cache keys)."""
        return hashlib.sha256(repr(dataclasses.astuple(self)).encode()).hexdigest()[:12]


WeightsLoader = Callable[["BackboneConfig", Any], tuple[Variables, str]]
"""Returns (Flax variables, weights id) for a weights argument; the id keys every cache built on them."""


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """A registered backbone: architecture constructor, preprocessing, and weight sources (timm's PretrainedCfg)."""

    name: str
    build: Callable[..., nn.Module]
    """``build(num_classes=0) -> nn.Module``; ``num_classes=0`` gives the feature extractor alone."""
    preprocessing: Preprocessing
    feature_channels: int
    weights: Mapping[str, WeightsLoader] = dataclasses.field(default_factory=dict)
    """Named weight sources (e.g. ``"imagenet"``); a path argument is handled by the ``"file"`` loader."""
    blocks: tuple[str, ...] = ()
    """Top-level parameter collections in input->output order; fine-tuning unfreezes a suffix of these."""
    default_weights: str | None = "imagenet"
    weights_ids: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """The weights id of each named source whose content is pinned (e.g. a sha256 prefix), known without loading
    it, so a feature-cache hit never has to build the backbone."""
    taps: tuple[str, ...] = ()
    """The module's named intermediate outputs, input to output; the last is the ``features`` map. Empty: a module
    that cannot return taps."""


class Backbone(NamedTuple):
    """A built backbone with its variables. ``weights_id`` identifies the weights (a file hash or a seed)."""

    config: BackboneConfig
    module: nn.Module
    variables: Variables
    weights_id: str

    def apply(self, images: jax.Array, *, preprocess: bool = True) -> dict[str, jax.Array]:
        """Inference forward pass (batch-norm in eval mode); ``images`` are RGB in [0, 255] unless preprocess=False."""
        x = self.config.preprocessing(images) if preprocess else images
        return self.module.apply(self.variables, x, train=False)


Layer = tuple[str, Callable[[jax.Array], jax.Array]]
"""A named step of a module's forward: its output is the tap of that name."""


def run_layers(layers: Sequence[Layer], x: jax.Array, *, taps: bool, until: str | None) -> dict[str, Any]:
    """``x`` through ``layers`` in order, stopping after the one named ``until`` (all by default): ``features`` is
    the last output, and with ``taps`` every output by name (a module's ``__call__`` body, shared by the zoo)."""
    names = [name for name, _ in layers]
    if until is not None and until not in names:
        raise ValueError(f"unknown tap {until!r}; taps: {', '.join(names)}")
    outputs: dict[str, jax.Array] = {}
    for name, layer in layers:
        x = outputs[name] = layer(x)
        if name == until:
            break
    return {"features": x, "taps": outputs} if taps else {"features": x}


# Images per backbone call inside one forward pass: on XLA's CPU backend lax.map over micro-batches of 8 beats the
# whole batch (activations stay in cache). Figures: experiments/README.md, "Backbone forward"
# (experiments/features/bench_backbones.py -> experiments/results/bench_backbones.json).
MICRO_BATCH = 8
# Images per call through a module's leading ``high_res_layers``, whose large maps only stay in cache one image at a
# time. Figures: experiments/README.md, "Feature-pass speed" (experiments/features/bench_feature_pass.py).
HIGH_RES_MICRO_BATCH = 1


def _in_chunks(fn: Callable[[jax.Array], jax.Array], x: jax.Array, micro_batch: int) -> jax.Array:
    """``fn`` over ``x``'s rows ``micro_batch`` at a time (``lax.map``; all at once when the count does not divide)."""
    n = x.shape[0]
    k = micro_batch if 0 < micro_batch < n and n % micro_batch == 0 else n
    out = jax.lax.map(fn, x.reshape(n // k, k, *x.shape[1:]))
    return out.reshape(n, *out.shape[2:])


def feature_maps(module: nn.Module, variables: Variables, images: jax.Array, preprocessing: Preprocessing,
                 micro_batch: int = MICRO_BATCH, high_res_micro_batch: int = HIGH_RES_MICRO_BATCH) -> jax.Array:
    """(N, h, w, C) float32 last feature map of RGB ``images`` in [0, 255], computed ``micro_batch`` images at a
    time (``lax.map``; the whole batch when N does not divide). A module with ``high_res_layers`` > 0 (whose call
    takes ``start``/``stop`` layer indices) runs those leading layers ``high_res_micro_batch`` images at a time;
    ``high_res_micro_batch=0`` runs the whole network at ``micro_batch``. Pure: jit, shard_map and vmap compose."""
    split = getattr(module, "high_res_layers", 0) if high_res_micro_batch > 0 else 0

    def high_res(chunk: jax.Array) -> jax.Array:
        return module.apply(variables, preprocessing(chunk), train=False, stop=split)["features"]

    def rest(chunk: jax.Array) -> jax.Array:
        return module.apply(variables, chunk, train=False, start=split)["features"].astype(jnp.float32)

    if not split:
        return _in_chunks(lambda chunk: module.apply(variables, preprocessing(chunk), train=False)["features"]
                          .astype(jnp.float32), images, micro_batch)
    return _in_chunks(rest, _in_chunks(high_res, images, high_res_micro_batch), micro_batch)


def tapped_features(module: nn.Module, variables: Variables, images: jax.Array, preprocessing: Preprocessing,
                    pool: Callable[[jax.Array], jax.Array],
                    taps: Sequence[str]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """:func:`feature_maps` and, from the same forward, ``pool`` (N, h, w, C) -> (N, D) of each tap in ``taps``,
    pooled inside each micro-batch so no tap's whole-batch map is ever held."""
    split = getattr(module, "high_res_layers", 0) if HIGH_RES_MICRO_BATCH > 0 else 0
    wanted = frozenset(taps)

    def segment(preprocess: bool, **bounds: int) -> Callable[[jax.Array], tuple[jax.Array, dict[str, jax.Array]]]:
        def run(chunk: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
            out = module.apply(variables, preprocessing(chunk) if preprocess else chunk, train=False, taps=True,
                               **bounds)
            return out["features"].astype(jnp.float32), {n: pool(m) for n, m in out["taps"].items() if n in wanted}

        return run

    if not split:
        return _tree_in_chunks(segment(True), images, MICRO_BATCH)
    early, early_taps = _tree_in_chunks(segment(True, stop=split), images, HIGH_RES_MICRO_BATCH)
    maps, late_taps = _tree_in_chunks(segment(False, start=split), early, MICRO_BATCH)
    return maps, {**early_taps, **late_taps}


def _tree_in_chunks(fn: Callable[[jax.Array], Any], x: jax.Array, micro_batch: int) -> Any:
    """:func:`_in_chunks` for an ``fn`` that returns a pytree of per-row arrays."""
    n = x.shape[0]
    k = micro_batch if 0 < micro_batch < n and n % micro_batch == 0 else n
    out = jax.lax.map(fn, x.reshape(n // k, k, *x.shape[1:]))
    return jax.tree.map(lambda a: a.reshape(n, *a.shape[2:]), out)


def flat_shapes(tree: Mapping[str, Any]) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{(collection, *path): shape} for every leaf of a variables tree (concrete or from ``jax.eval_shape``)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in leaves}


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """Nested dicts from {(k1, k2, ...): value}: the variables tree a converter's flat name map fills."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return tree


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
