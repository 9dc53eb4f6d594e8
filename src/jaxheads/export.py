"""The deployable artifact: one ``jax.export`` file that maps uint8 images to class probabilities.

Why one file: a user who deploys the chosen head needs the whole image -> label program, not features -> logits
(``head.jaxexport``), and should not need jaxheads to run it. :func:`export_model` serialises preprocessing, the
backbone (for a head reading taps: only up to the deepest tap it reads), the pooling and float16 rounding the
feature cache applies, a tap head's standardisation and column selection, and the head (a bag of fold models: the
mean of their probabilities), with every weight baked in as a constant and a symbolic batch size. Beside it,
``<file>.json`` names the classes, the task, the image side and where the model came from.

In a process without jaxheads (only jax and numpy)::

    exported = jax.export.deserialize(bytearray(open("model.jaxexport", "rb").read()))
    probs = exported.call(images)   # (N, S, S, 3) uint8 RGB, resized and centre-cropped to S -> (N, K) float32
    names = json.load(open("model.jaxexport.json"))["label_names"]

:func:`image_model` builds the same program from a saved directory (a sweep's ``OUT/head`` or a fine-tune's
``OUT/model``, told apart by their meta kind): ``jaxheads predict`` runs it jitted, the export serialises it, so
the two cannot drift apart. Images are resized and centre-cropped outside the program (as the val split is:
:func:`jaxheads.data.resize_center_crop`), since decoding files is not an array program.

Test-time augmentation is not in the program: a sweep run with ``--tta`` scored its test figure on the mean over
K views of each test image, while the saved model reads the plain image once (view 0, what val selected on); the
head's meta (``test_views``, ``bag_scored_as``) and the sidecar's ``source.test_views`` say so.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads import backbones, checkpoint, metrics
from jaxheads.features.taps import pool_tap
from jaxheads.heads import io as heads_io

__all__ = ["EXPORT_KIND", "ImageModel", "export_model", "export_saved", "finetuned_model", "head_model",
           "image_model", "load_export", "sidecar_path"]

EXPORT_KIND = "jaxheads.model_export"
"""The sidecar's ``kind``."""

Params = Any
"""The weights an :class:`ImageModel`'s function reads (a pytree of arrays)."""


@dataclasses.dataclass(frozen=True)
class ImageModel:
    """An image -> probabilities program: ``fn(params, images)`` takes (N, image_size, image_size, 3) uint8 RGB
    and returns (N, K) float32 probabilities (softmax, or a sigmoid per class for multilabel). The weights are an
    argument so ``predict`` jits it once and runs batches; the export closes over them as constants."""

    fn: Callable[[Params, jax.Array], jax.Array]
    params: Params
    image_size: int
    label_names: tuple[str, ...]
    task: str
    source: dict[str, Any]
    """What it was built from (written into the sidecar): kind, backbone, weights id, bag size, representation."""

    @functools.cached_property
    def _jitted(self) -> Callable[[Params, jax.Array], jax.Array]:
        return jax.jit(self.fn)

    def predict(self, images: np.ndarray | jax.Array) -> np.ndarray:
        """(N, K) probabilities of uint8 images, jitted (one compilation per batch shape)."""
        return np.asarray(self._jitted(self.params, jnp.asarray(images, jnp.uint8)))


def _cache_rounded(x: jax.Array) -> jax.Array:
    """Through float16 and back, as the feature cache stores features: the head sees the values it trained on."""
    return x.astype(jnp.float16).astype(jnp.float32)


def _feature_fn(head: heads_io.SweptHead, backbone: backbones.Backbone) -> Callable[[Params, jax.Array], jax.Array]:
    """``features(backbone_variables, uint8 images)``: the head's input exactly as the cache and the sweep made it."""
    module, preprocessing, spec, tap = backbone.module, backbone.config.preprocessing, head.spec, head.tap_input
    if tap is not None:
        order = backbone.config.taps
        deepest = max(tap.taps, key=order.index)  # the backbone runs this far and no further
        mean, scale = jnp.asarray(tap.mean, jnp.float32)[None], jnp.asarray(tap.scale, jnp.float32)[None]
        keep = None if tap.keep is None else jnp.asarray(tap.keep, jnp.int32)

        def tapped(variables: Params, images: jax.Array) -> jax.Array:
            out = module.apply(variables, preprocessing(images), train=False, taps=True, until=deepest)["taps"]
            x = (jnp.concatenate([_cache_rounded(pool_tap(out[name])) for name in tap.taps], axis=-1) - mean) / scale
            return x if keep is None else jnp.take(x, keep, axis=-1)

        return tapped

    def last(variables: Params, images: jax.Array) -> jax.Array:
        fmap = module.apply(variables, preprocessing(images), train=False)["features"].astype(jnp.float32)
        return _cache_rounded(fmap.mean(axis=(1, 2)) if spec.pooling == "none" else fmap)

    return last


def head_model(head: heads_io.SweptHead, backbone: backbones.Backbone) -> ImageModel:
    """The image program of a sweep's saved head on its backbone (:func:`jaxheads.heads.io.load_swept_head`):
    the backbone's features as the cache holds them, then the bag's mean probability."""
    features, spec = _feature_fn(head, backbone), head.spec

    def fn(params: Params, images: jax.Array) -> jax.Array:
        return heads_io.bag_probabilities(params["head"], features(params["backbone"], images), spec)

    meta = head.meta
    source = {"kind": heads_io.KIND, "backbone": meta["backbone"], "weights_id": meta["weights_id"],
              "bag": head.bag_size, "members": meta.get("members"),
              "representation": meta.get("representation") or "last",
              "taps": list(head.tap_input.taps) if head.tap_input is not None else None,
              "test_views": meta.get("test_views", 1)}
    return ImageModel(fn, {"backbone": backbone.variables, "head": head.bag}, head.input_size(backbone),
                      tuple(head.label_names), spec.task, source)


def finetuned_model(model: Any) -> ImageModel:
    """The image program of a fine-tuned :class:`jaxheads.finetuning.Model`: its own forward
    (:func:`jaxheads.finetuning.model.model_logits`, no float16 rounding: it was trained end to end without the
    cache), then softmax or sigmoid."""
    from jaxheads.finetuning.model import model_logits

    module, preprocessing, spec = model.module, model.preprocessing, model.spec

    def fn(params: Params, images: jax.Array) -> jax.Array:
        logits = model_logits(params, images, module=module, preprocessing=preprocessing, spec=spec)
        return metrics.probabilities(logits, spec.task)

    source = {"kind": model.meta.get("kind"), "backbone": model.backbone, "weights_id": model.meta.get("weights_id"),
              "bag": 1, "representation": "last"}
    return ImageModel(fn, model.variables, model.image_size, tuple(model.label_names), spec.task, source)


def image_model(path: str | Path) -> ImageModel:
    """The image program of a saved directory: a sweep's head (``OUT/head``) or a fine-tuned model
    (``OUT/model``), told apart by the meta kind; anything else is a one-line error naming the path."""
    from jaxheads.finetuning.model import MODEL_KIND, load_model

    try:
        kind = checkpoint.load_meta(path).get("kind")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a saved head or fine-tuned model directory ({e})") from None
    if kind == MODEL_KIND:
        return finetuned_model(load_model(path))
    if kind != heads_io.KIND:
        raise ValueError(f"{path}: meta kind {kind!r}; expected a head written by `jaxheads sweep` "
                         f"({heads_io.KIND!r}) or a model written by `jaxheads finetune` ({MODEL_KIND!r})")
    return head_model(*heads_io.load_swept_head(path, taps=True))


def sidecar_path(path: str | Path) -> Path:
    """Where the export's description lives: ``<file>.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def export_model(model: ImageModel, path: str | Path) -> Path:
    """Serialise ``model`` with its weights as constants and a symbolic batch size to ``path`` (atomically), and
    its description to :func:`sidecar_path`; returns ``path``."""
    params = jax.tree.map(jnp.asarray, model.params)
    (batch,) = jax.export.symbolic_shape("b")
    arg = jax.ShapeDtypeStruct((batch, model.image_size, model.image_size, 3), jnp.uint8)
    exported = jax.export.export(jax.jit(lambda images: model.fn(params, images)))(arg)
    path = Path(path)
    checkpoint.write_bytes_atomic(path, exported.serialize())
    checkpoint.write_json_atomic(sidecar_path(path), checkpoint.json_ready({
        "kind": EXPORT_KIND, "label_names": list(model.label_names), "task": model.task,
        "image_size": model.image_size, "input": "uint8 RGB (batch, image_size, image_size, 3): the shorter side "
        "resized to image_size (bilinear), then the centred square crop", "output": "float32 (batch, classes) "
        "probabilities" + (" (a sigmoid per class)" if model.task == "multilabel" else ""), "source": model.source}))
    return path


def export_saved(saved: str | Path, path: str | Path) -> Path:
    """:func:`export_model` of :func:`image_model` of a saved directory."""
    return export_model(image_model(saved), path)


def load_export(path: str | Path) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """(``images -> probabilities``, the sidecar) of a file :func:`export_model` wrote; what a user without
    jaxheads writes in three lines (see the module doc)."""
    exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
    meta = json.loads(sidecar_path(path).read_text())
    return (lambda images: np.asarray(exported.call(np.asarray(images, np.uint8)))), meta
