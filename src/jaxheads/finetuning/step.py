"""The fine-tune's jitted training step: on-device augmentation, the forward pass with frozen blocks behind
``stop_gradient`` (unfrozen ones optionally rematerialised), the class-weighted loss, gradients accumulated over
micro-batches, the optimiser (:mod:`jaxheads.finetuning.optim`) scaled by the schedule, the update and the moving
average of the weights."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxheads import heads
from jaxheads.finetuning.augment import augment_batch
from jaxheads.finetuning.model import Variables, pool_for_head
from jaxheads.finetuning.optim import FinetuneSetup, block_rates, finetune_optimizer, lr_scale, schedule_steps
from jaxheads.finetuning.remat import remat_blocks

__all__ = ["Batch", "FinetuneSetup", "TrainState", "block_rates", "lr_scale", "finetune_optimizer", "schedule_steps",
           "train_step", "weighted_mean"]


class TrainState(NamedTuple):
    """Everything the jitted step updates: the step counter (keys the augmentation and the schedule), the
    trainable tree ``{"backbone": params, "head": params}``, the statistics tree ``{"backbone": ..., "head": ...}``,
    the optimiser state, and the moving average ``(params, stats)`` of the two trees (``()`` without one)."""

    step: jax.Array
    params: Variables
    stats: Variables
    opt_state: Any
    ema: Any = ()


class Batch(NamedTuple):
    """One micro-batch: uint8 images, labels, the mask of real rows (padding copies 0), each row's loss weight
    (its class weight times its mask) and the whole update's weight total (what every micro-batch divides by)."""

    images: jax.Array
    labels: jax.Array
    mask: jax.Array
    weights: jax.Array
    total: jax.Array


def weighted_mean(losses: jax.Array, weights: jax.Array, total: jax.Array) -> jax.Array:
    """``sum(losses * weights) / total``: with weights that are the mask (all class weights 1) and ``total`` the
    number of real rows, the plain masked mean."""
    return jnp.sum(losses * weights) / total


def _features(params: Variables, stats: Variables, x: jax.Array, setup: FinetuneSetup) -> tuple[jax.Array, Any]:
    """The backbone's map and its new statistics; frozen blocks behind ``stop_gradient``, unfrozen ones under
    ``jax.checkpoint`` when ``remat`` is set."""
    backbone_params = {name: (sub if name in setup.trainable else jax.lax.stop_gradient(sub))
                       for name, sub in params["backbone"].items()}
    variables = {"params": backbone_params, "batch_stats": stats["backbone"]}
    scope = remat_blocks(setup.trainable) if setup.config.remat else contextlib.nullcontext()
    with scope:
        if setup.config.freeze_bn:
            return setup.module.apply(variables, x, train=False)["features"], stats["backbone"]
        out, updates = setup.module.apply(variables, x, train=True, mutable=["batch_stats"])
    return out["features"], updates["batch_stats"]


def _loss(params: Variables, stats: Variables, batch: Batch, words: jax.Array,
          setup: FinetuneSetup) -> tuple[jax.Array, tuple[Variables, jax.Array]]:
    """This micro-batch's share of the update's weighted training loss (label-smoothed as configured), the new
    statistics and the sum of the head's own (unweighted, unsmoothed) losses over its real rows."""
    cfg = setup.config
    x = setup.preprocessing(augment_batch(batch.images, heads.fold(words, 0), setup.image_size, cfg.augment,
                                          cfg.affine_jitter))
    fmap, backbone_stats = _features(params, stats, x, setup)
    head_vars = {"params": params["head"], "batch_stats": stats["head"]}
    logits, head_stats = heads.forward(head_vars, pool_for_head(fmap, setup.spec), setup.spec, train=True,
                                       rng=heads.fold(words, 1))
    own = heads.example_losses(logits, batch.labels, setup.spec)
    losses = own
    if setup.spec.task == "multiclass" and cfg.label_smoothing != setup.spec.label_smoothing:
        losses = heads.example_losses(logits, batch.labels, dataclasses.replace(setup.spec,
                                                                                label_smoothing=cfg.label_smoothing))
    loss = weighted_mean(losses, batch.weights, batch.total)
    return loss, ({"backbone": backbone_stats, "head": head_stats}, jnp.sum(own * batch.mask))


def _gradients(state: TrainState, batch: Batch, words: jax.Array,
               setup: FinetuneSetup) -> tuple[Variables, Variables, jax.Array]:
    """Gradients of the whole update's loss, the new statistics and the summed own loss. With ``accumulate`` k, the
    batch's rows ``b * k + a`` form micro-batch ``a`` (so each is spread over every device), computed one after the
    other; their gradients add up to those of the whole batch's weighted mean."""
    grad_fn = jax.grad(_loss, has_aux=True)
    k = setup.config.accumulate
    if k == 1:
        grads, (stats, own) = grad_fn(state.params, state.stats, batch, words, setup)
        return grads, stats, own
    micro = jax.tree.map(lambda a: jnp.moveaxis(a.reshape(a.shape[0] // k, k, *a.shape[1:]), 1, 0),
                         batch._replace(total=jnp.zeros((batch.images.shape[0],), jnp.float32)))

    def one(carry: tuple[Variables, Variables, jax.Array], xs: tuple[Batch, jax.Array]) -> tuple[Any, None]:
        acc, stats, own_sum = carry
        part, index = xs
        g, (stats, own) = grad_fn(state.params, stats, part._replace(total=batch.total), heads.fold(words, index + 2),
                                  setup)
        return (jax.tree.map(jnp.add, acc, g), stats, own_sum + own), None

    start = (jax.tree.map(jnp.zeros_like, state.params), state.stats, jnp.zeros((), jnp.float32))
    (grads, stats, own), _ = jax.lax.scan(one, start, (micro, jnp.arange(k, dtype=jnp.int32)))
    return grads, stats, own


def train_step(setup: FinetuneSetup) -> Callable[..., tuple[TrainState, jax.Array]]:
    """The jitted step of ``setup``, shared by every fine-tune whose settings differ only in what the step does
    not see (epochs, patience, batch size, crop scale, warm-up and class weights are shapes, loop settings or
    arguments; the seed is an argument)."""
    loop_only = {"unfreeze": 0, "epochs": 0, "batch_size": 1, "patience": None, "image_size": None,
                 "crop_scale": 1.0, "seed": 0, "warmup_epochs": 0.0, "metric": None, "class_weights": "none",
                 "sampling": "shuffle"}
    return _compiled_step(dataclasses.replace(setup, config=dataclasses.replace(setup.config, **loop_only)))


@functools.lru_cache(maxsize=8)
def _compiled_step(setup: FinetuneSetup) -> Callable[..., tuple[TrainState, jax.Array]]:
    """The jitted step: gradients (augmented, accumulated), multi-transform update scaled by the schedule, moving
    average."""
    cfg = setup.config

    def step(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array, class_weights: jax.Array,
             seed_words: jax.Array, steps: jax.Array) -> tuple[TrainState, jax.Array]:
        """``class_weights``: (classes,) float32, each class's loss weight (multiclass; ignored otherwise).
        ``seed_words``: (2,) uint32 of the run's seed; each step's randomness folds in the step counter.
        ``steps``: :func:`schedule_steps`. Returns the new state and the head's unsmoothed training loss."""
        words = heads.fold(seed_words, state.step)
        weights = class_weights[labels] * mask if setup.spec.task == "multiclass" else mask
        total = jnp.sum(weights)
        batch = Batch(images, labels, mask, weights, jnp.where(total > 0, total, 1.0))
        grads, stats, own = _gradients(state, batch, words, setup)
        updates, opt_state = finetune_optimizer(setup, state.params).update(grads, state.opt_state, state.params)
        scale = lr_scale(state.step, steps, cfg.schedule)
        params = optax.apply_updates(state.params, jax.tree.map(lambda u: u * scale.astype(u.dtype), updates))
        ema = state.ema
        if cfg.ema_decay is not None:
            d = cfg.ema_decay  # the increment form leaves an average equal to the weights exactly unchanged
            ema = jax.tree.map(lambda avg, new: avg + (1.0 - d) * (new - avg), state.ema, (params, stats))
        return TrainState(state.step + 1, params, stats, opt_state, ema), own / jnp.maximum(jnp.sum(mask), 1.0)

    return jax.jit(step, donate_argnums=0)
