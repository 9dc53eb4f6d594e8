"""What every backbone is: a Flax module, its preprocessing as data, and where its weights come from.

A backbone module maps preprocessed images (N, H, W, 3) float32 to a dict with at least
``"features"``: the last feature map (N, h, w, C); modules built with ``num_classes > 0`` also return
``"logits"`` (N, num_classes). Batch-norm statistics live in ``variables["batch_stats"]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

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


# Images per backbone call inside one forward pass: on XLA's CPU backend lax.map over micro-batches of 8 beats the
# whole batch (activations stay in cache). Figures: experiments/README.md, "Backbone forward"
# (experiments/bench_backbones.py -> experiments/results/bench_backbones.json).
MICRO_BATCH = 8
# Images per call through a module's leading ``high_res_layers``, whose large maps only stay in cache one image at a
# time. Figures: experiments/README.md, "Feature-pass speed" (experiments/bench_feature_pass.py).
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


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
