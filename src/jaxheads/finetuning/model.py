"""A backbone + head model: its inference forward pass, the :class:`Model` a fine-tune saves, and :func:`load_model`."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads import backbones, checkpoint, heads, ranking
from jaxheads.backbones import Preprocessing
from jaxheads.heads import HeadSpec

__all__ = ["MODEL_KIND", "Model", "Variables", "feature_shape", "load_model", "model_logits", "pool_for_head",
           "predict_fn"]

MODEL_KIND = "jaxheads.model"

Variables = dict[str, Any]
"""``{"backbone": {"params", "batch_stats"}, "head": {"params", "batch_stats"}}``."""


def pool_for_head(fmap: jax.Array, spec: HeadSpec) -> jax.Array:
    """The backbone's map as the head takes it: pooled (N, C) for ``pooling="none"`` heads, else the map."""
    return fmap.astype(jnp.float32).mean(axis=(1, 2)) if spec.pooling == "none" else fmap.astype(jnp.float32)


def model_logits(variables: Variables, images: jax.Array, *, module: Any, preprocessing: Preprocessing,
                 spec: HeadSpec) -> jax.Array:
    """Inference logits of backbone + head for RGB images in [0, 255] (N, S, S, 3): BN with running statistics,
    no dropout. ``variables = {"backbone": {"params", "batch_stats"}, "head": {"params", "batch_stats"}}``."""
    fmap = module.apply(variables["backbone"], preprocessing(images), train=False)["features"]
    return heads.apply_head(variables["head"], pool_for_head(fmap, spec), spec)


def feature_shape(module: Any, backbone_variables: Any, image_size: int) -> tuple[int, ...]:
    """The backbone's feature map shape (H, W, C) for one image of ``image_size`` (traced, not run)."""
    return tuple(jax.eval_shape(lambda v, x: module.apply(v, x, train=False)["features"], backbone_variables,
                                jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)).shape[1:])


@functools.lru_cache(maxsize=8)
def predict_fn(module: Any, preprocessing: Preprocessing, spec: HeadSpec) -> Callable[[Variables, Any], jax.Array]:
    """One jitted :func:`model_logits` per (module, preprocessing, spec), shared by fine-tunes and loaded models."""
    return jax.jit(functools.partial(model_logits, module=module, preprocessing=preprocessing, spec=spec))


@dataclasses.dataclass(frozen=True)
class Model:
    """A fine-tuned (or any backbone + head) model. ``predict``/``logits`` take uint8 RGB images
    (N, image_size, image_size, 3) and run one jitted program; :meth:`predict_files` reads and resizes files."""

    backbone: str
    spec: HeadSpec
    image_size: int
    label_names: tuple[str, ...]
    variables: Variables
    meta: Mapping[str, Any]
    module: Any
    preprocessing: Preprocessing

    def logits(self, images: np.ndarray | jax.Array) -> np.ndarray:
        """(N, num_classes) float32 logits."""
        return np.asarray(predict_fn(self.module, self.preprocessing, self.spec)(self.variables, images))

    def predict(self, images: np.ndarray | jax.Array) -> np.ndarray:
        """(N, num_classes) probabilities: softmax (multiclass) or per-class sigmoid (multilabel)."""
        return ranking.probabilities(self.logits(images), self.spec.task)

    def predict_files(self, paths: Sequence[str | os.PathLike[str]], *, top: int = 3,
                      batch_size: int = 32) -> list[ranking.Ranked]:
        """For each image file, its ``top`` (label, probability) pairs (resized and centre-cropped like val)."""
        return ranking.top_labels_of_files(paths, self.image_size, self.predict, self.label_names, top=top,
                                           batch_size=batch_size)


def load_model(path: str | os.PathLike[str]) -> Model:
    """The model saved by :func:`jaxheads.finetuning.finetune` in ``path`` (``OUT/model``)."""
    tree, meta = checkpoint.load(path)
    if meta.get("kind") != MODEL_KIND:
        raise ValueError(f"{path} is not a jaxheads model checkpoint (meta kind {meta.get('kind')!r})")
    config = backbones.get_config(meta["backbone"])
    spec = HeadSpec.from_dict(meta["spec"])
    preprocessing = dataclasses.replace(config.preprocessing, input_size=int(meta["image_size"]))
    variables = jax.tree.map(jnp.asarray, tree)
    return Model(meta["backbone"], spec, int(meta["image_size"]), tuple(meta["label_names"]), variables, meta,
                 config.build(num_classes=0), preprocessing)
