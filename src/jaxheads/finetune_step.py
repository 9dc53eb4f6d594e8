"""The fine-tune's jitted training step: augmentation, the forward pass with frozen blocks behind ``stop_gradient``,
the two-learning-rate optimiser (``optax.multi_transform``) and the update."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxheads import heads
from jaxheads.backbones import Preprocessing
from jaxheads.finetune_config import FinetuneConfig
from jaxheads.finetune_model import Variables, pool_for_head
from jaxheads.heads import HeadSpec

__all__ = ["FinetuneSetup", "TrainState", "augment", "make_optimizer", "train_step"]


class TrainState(NamedTuple):
    """Everything the jitted step updates: the step counter (keys the augmentation), the trainable tree
    ``{"backbone": params, "head": params}``, the statistics tree ``{"backbone": ..., "head": ...}`` and the
    optimiser state."""

    step: jax.Array
    params: Variables
    stats: Variables
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class FinetuneSetup:
    """The static (hashable) setup of one fine-tune: what its compiled train step and val predictions depend on."""

    module: Any
    preprocessing: Preprocessing
    spec: HeadSpec
    trainable: tuple[str, ...]
    config: FinetuneConfig
    image_size: int


def augment(images: jax.Array, words: jax.Array, size: int, flip: bool) -> jax.Array:
    """Random ``size`` x ``size`` crops (one offset per image) and random horizontal flips of uint8 images.

    Draws come from :func:`jaxheads.heads.hash_uniform` (a value per (seed words, salt, row)): cheap to compile
    (jax.random's threefry costs seconds of XLA compile per call site on a small CPU) and the same whatever the
    sharding of the batch."""
    n, h, w = images.shape[:3]
    u = heads.hash_uniform(words, 101, (n, 3))
    ys = jnp.floor(u[:, 0] * (h - size + 1)).astype(jnp.int32)
    xs = jnp.floor(u[:, 1] * (w - size + 1)).astype(jnp.int32)
    crop = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (size, size, 3)))(images, ys, xs)
    if flip:
        crop = jnp.where((u[:, 2] < 0.5)[:, None, None, None], crop[:, :, ::-1, :], crop)
    return crop


def _param_labels(params: Variables, trainable: Sequence[str]) -> Variables:
    """multi_transform labels: ``head`` for the head, ``backbone`` for unfrozen blocks, ``frozen`` otherwise."""
    backbone = {name: jax.tree.map(lambda _, n=name: "backbone" if n in trainable else "frozen", sub)
                for name, sub in params["backbone"].items()}
    return {"backbone": backbone, "head": jax.tree.map(lambda _: "head", params["head"])}


def make_optimizer(setup: FinetuneSetup, params: Variables) -> optax.GradientTransformation:
    """AdamW at the head's and at the backbone's rate, set_to_zero for the frozen blocks."""
    cfg = setup.config
    return optax.multi_transform(
        {"head": optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay),
         "backbone": optax.adamw(cfg.backbone_learning_rate, weight_decay=cfg.weight_decay),
         "frozen": optax.set_to_zero()},
        _param_labels(params, setup.trainable))


def _loss(params: Variables, stats: Variables, images: jax.Array, labels: jax.Array, mask: jax.Array,
          words: jax.Array, setup: FinetuneSetup) -> tuple[jax.Array, Variables]:
    """Masked mean training loss and the new statistics. Frozen blocks sit behind ``stop_gradient``."""
    cfg = setup.config
    backbone_params = {name: (sub if name in setup.trainable else jax.lax.stop_gradient(sub))
                       for name, sub in params["backbone"].items()}
    x = setup.preprocessing(augment(images, heads.fold(words, 0), setup.image_size, cfg.flip))
    variables = {"params": backbone_params, "batch_stats": stats["backbone"]}
    if cfg.freeze_bn:
        out, new_backbone_stats = setup.module.apply(variables, x, train=False), stats["backbone"]
    else:
        out, updates = setup.module.apply(variables, x, train=True, mutable=["batch_stats"])
        new_backbone_stats = updates["batch_stats"]
    head_vars = {"params": params["head"], "batch_stats": stats["head"]}
    logits, new_head_stats = heads.forward(head_vars, pool_for_head(out["features"], setup.spec), setup.spec,
                                           train=True, rng=heads.fold(words, 1))
    per_example = heads.example_losses(logits, labels, setup.spec)
    loss = jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, {"backbone": new_backbone_stats, "head": new_head_stats}


def train_step(setup: FinetuneSetup) -> Callable[..., tuple[TrainState, jax.Array]]:
    """The jitted step of ``setup``, shared by every fine-tune whose settings differ only in what the step does
    not see (epochs, patience, batch size and crop scale are shapes or loop settings; the seed is an argument)."""
    loop_only = {"unfreeze": 0, "epochs": 0, "batch_size": 1, "patience": None, "image_size": None,
                 "crop_scale": 1.0, "seed": 0}
    return _compiled_step(dataclasses.replace(setup, config=dataclasses.replace(setup.config, **loop_only)))


@functools.lru_cache(maxsize=8)
def _compiled_step(setup: FinetuneSetup) -> Callable[..., tuple[TrainState, jax.Array]]:
    """The jitted step: augment, forward, backward through the unfrozen part, multi-transform update."""

    def step(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array,
             seed_words: jax.Array) -> tuple[TrainState, jax.Array]:
        """``seed_words``: (2,) uint32 of the run's seed; each step's randomness folds in the step counter."""
        words = heads.fold(seed_words, state.step)
        (loss, stats), grads = jax.value_and_grad(_loss, has_aux=True)(
            state.params, state.stats, images, labels, mask, words, setup)
        tx = make_optimizer(setup, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, stats, opt_state), loss

    return jax.jit(step, donate_argnums=0)
