"""The tiny things the tests run on: one tiny backbone (registered on import, under its name and two relatives'),
image folders, a saved head and a synthetic feature cache.

Not a test module: conftest.py imports it (so the backbone is registered before any test runs) and hands its names
and helpers to tests as fixtures; a child process started by a test imports it with the tests folder on sys.path."""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxheads import backbones, heads
from jaxheads.backbones import BackboneConfig, Preprocessing
from jaxheads.backbones.base import run_layers
from jaxheads.features import store
from jaxheads.features.lazy import lazy_gather
from jaxheads.features.split import FeatureSplit
from jaxheads.heads import io as heads_io

NAME = "tiny"
OTHER_WEIGHTS = "tiny_other_weights"  # the same network with other weights
OTHER_PREPROCESSING = "tiny_other_preprocessing"  # the same network and weights, another input normalisation
WEIGHTS_ID = "tiny-v1"
TAPPED = "tiny_taps"  # the same network and weights, naming its four blocks as taps
TINY_BLOCKS = (("stem", 8, 2), ("block0", 8, 1), ("block1", 16, 2), ("head", 16, 1))


class _ConvBN(nn.Module):
    """3x3 conv -> batch norm -> relu: one named block of the tiny backbone."""

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(self.features, (3, 3), strides=self.stride, use_bias=False, name="conv")(x)
        return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))


class TinyBackbone(nn.Module):
    """(N, S, S, 3) -> {"features": (N, S/4, S/4, 16)} through four named blocks with batch norm."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, taps: bool = False,
                 until: str | None = None) -> dict[str, jax.Array]:
        blocks = [(name, _ConvBN(width, stride, name=name)) for name, width, stride in TINY_BLOCKS]
        return run_layers([(name, lambda y, b=block: b(y, train)) for name, block in blocks], x, taps=taps,
                          until=until)


def _weights(seed: int, weights_id: str):
    """A weights loader: deterministic "pretrained" weights drawn with NumPy (no jax.random: its compile costs
    seconds here)."""

    def load(config: BackboneConfig, weights: object) -> tuple[dict, str]:
        shapes = jax.eval_shape(TinyBackbone().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        rng = np.random.default_rng(seed)

        def fill(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
            name = path[-1].key
            if name == "kernel":
                return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
            if name == "var":
                return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
            if name == "mean":
                return rng.normal(0, 0.1, leaf.shape).astype(np.float32)
            return np.ones(leaf.shape, np.float32) if name == "scale" else np.zeros(leaf.shape, np.float32)

        return jax.tree_util.tree_map_with_path(fill, shapes), weights_id

    return load


def _register(name: str, seed: int, weights_id: str, std: float = 127.5, taps: tuple[str, ...] = ()) -> None:
    backbones.register(BackboneConfig(
        name=name, build=lambda num_classes=0: TinyBackbone(), feature_channels=16,
        preprocessing=Preprocessing(32, mean=(127.5,) * 3, std=(std,) * 3), blocks=("stem", "block0", "block1", "head"),
        weights={"tiny": _weights(seed, weights_id)}, default_weights="tiny", weights_ids={"tiny": weights_id},
        taps=taps,
    ))  # fmt: skip


_register(NAME, 0, WEIGHTS_ID)
_register(OTHER_WEIGHTS, 1, "tiny-seed1")
_register(OTHER_PREPROCESSING, 0, WEIGHTS_ID, std=64.0)
_register(TAPPED, 0, WEIGHTS_ID, taps=tuple(name for name, _, _ in TINY_BLOCKS))


def make_folder(root: Path, per_class: int, classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    """Real PNG/JPEG files of varied sizes and modes (grayscale, RGBA, RGB), one folder per class."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            mode = ("RGB", "L", "RGBA")[i % 3]
            shape = (20 + i, 30 + c) + ((3,) if mode == "RGB" else (4,) if mode == "RGBA" else ())
            image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
            image.save(root / name / f"{i}.{'jpg' if mode == 'L' else 'png'}")
    return root


def make_colour_folder(root: Path, per_class: int = 12, size: tuple[int, int] = (44, 40)) -> Path:
    """Two classes of noisy colour images (PNG), easy enough that a few steps move the validation loss."""
    rng = np.random.default_rng(0)
    for name, colour in (("red", (200, 50, 40)), ("blue", (40, 60, 200))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.asarray(colour) + rng.normal(0, 60, (size[1], size[0], 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:02d}.png")
    return root


def save_head(path: Path, classes: tuple[str, ...], *, seed: int = 0) -> Path:
    """A pooled-feature head for the tiny backbone, with the provenance `jaxheads sweep` writes."""
    spec = heads.HeadSpec(num_classes=len(classes), pooling="none", hidden=(8,), dropout=0.1)
    variables = heads.init_head(seed, spec, (16,))
    extra = {"backbone": NAME, "weights": "default", "weights_id": WEIGHTS_ID}
    return heads_io.save_head(path, spec, variables, (16,), label_names=classes, extra=extra)


def write_cache(folder: Path, n: int = 160, shard: int = 16, seed: int = 0) -> tuple[store.Plan, np.ndarray]:
    """A tiny feature set: synthetic (3, 3, 8) float16 maps of 3 blob classes written through the cache's own shard
    writer (one image unreadable: its kept flag is False); returns the plan and every row's label."""
    rng = np.random.default_rng(seed)
    plan = store.Plan(np.asarray([f"img{i:04d}".encode() for i in range(n)], "S32"), shard)
    labels = rng.integers(0, 3, n)
    maps = (rng.normal(0, 1, (3, 3, 3, 8))[labels] + rng.normal(0, 1, (n, 3, 3, 8))).astype(np.float16)
    for a, b in plan.shards:
        kept = np.arange(a, b) != 37
        store.write_shard(folder, a, b, maps[a:b].astype(np.float32).mean((1, 2)).astype(np.float16), maps[a:b], kept)
    return plan, labels


def cache_splits(folder: Path, plan: store.Plan, labels: np.ndarray, lazy: bool,
                 seed: int = 0) -> dict[str, FeatureSplit]:
    """train / val / test (96 / 32 / 32 rows drawn at random over the shards of ``write_cache``) read lazily or into
    memory."""
    perm = np.random.default_rng(seed + 1).permutation(len(plan.rows))
    out = {}
    for name, rows in (("train", perm[:96]), ("val", perm[96:128]), ("test", perm[128:])):
        kept, pooled, maps = (lazy_gather if lazy else store.gather)(folder, plan, rows, True)
        out[name] = FeatureSplit(labels[rows][kept].astype(np.int32), pooled, maps)
    return out


def write_hub_cache(cache: Path, weights: Path, std: float) -> Path:
    """A Hugging Face cache under ``cache`` holding ``weights`` as timm's tf_efficientnet_lite0.in1k, with a config
    of mean 0.5 and ``std``; returns the cached file (point ``HF_HUB_CACHE`` at ``cache``, offline)."""
    import json

    repo = cache / "models--timm--tf_efficientnet_lite0.in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (snapshot / "model.safetensors").write_bytes(weights.read_bytes())
    (snapshot / "config.json").write_text(json.dumps({"pretrained_cfg": {"mean": [0.5] * 3, "std": [std] * 3}}))
    return snapshot / "model.safetensors"


def randomise_keras_batch_norms(model, seed: int = 0) -> None:
    """Give every Keras BatchNormalization of ``model`` random scale, offset and running statistics (a fresh model's
    are 1, 0, 0, 1, which would hide a statistics mix-up in a parity test)."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.0, g.shape), rng.normal(0, 0.1, b.shape),
                               rng.normal(0, 0.1, m.shape), rng.uniform(1.0, 2.0, v.shape)])
