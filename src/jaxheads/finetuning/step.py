"""The fine-tune's jitted training step: augmentation, the forward pass with frozen blocks behind ``stop_gradient``,
the optimiser (``optax.multi_transform``: AdamW per part, the rates decaying layer by layer down the unfrozen
blocks, all scaled by the warm-up/cosine schedule), the update and the moving average of the weights."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxheads import heads
from jaxheads.backbones import Preprocessing
from jaxheads.finetuning.config import FinetuneConfig
from jaxheads.finetuning.model import Variables, pool_for_head
from jaxheads.heads import HeadSpec

__all__ = ["FinetuneSetup", "TrainState", "augment", "block_rates", "lr_scale", "make_optimizer", "schedule_steps",
           "train_step"]


class TrainState(NamedTuple):
    """Everything the jitted step updates: the step counter (keys the augmentation and the schedule), the
    trainable tree ``{"backbone": params, "head": params}``, the statistics tree ``{"backbone": ..., "head": ...}``,
    the optimiser state, and the moving average ``(params, stats)`` of the two trees (``()`` without one)."""

    step: jax.Array
    params: Variables
    stats: Variables
    opt_state: Any
    ema: Any = ()


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


def block_rates(setup: FinetuneSetup) -> dict[str, float]:
    """Peak learning rate of the head (``"head"``) and of every unfrozen block (``"backbone/<block>"``: a backbone
    may name its top block "head" too): ``backbone_learning_rate`` for the top block, times ``layer_decay`` for
    each block further down."""
    cfg = setup.config
    rates = {"head": cfg.learning_rate}
    for depth, name in enumerate(reversed(setup.trainable)):
        rates[f"backbone/{name}"] = cfg.backbone_learning_rate * cfg.layer_decay ** depth
    return rates


def schedule_steps(config: FinetuneConfig, steps_per_epoch: int) -> np.ndarray:
    """``[warm-up steps, total steps]`` (float32) of a fine-tune with ``steps_per_epoch``: the step's argument."""
    return np.asarray([round(config.warmup_epochs * steps_per_epoch), config.epochs * steps_per_epoch], np.float32)


def lr_scale(step: jax.Array, steps: jax.Array, schedule: str) -> jax.Array:
    """The factor on every peak rate at (0-based) ``step``: ``(step + 1) / warm-up`` during the warm-up, then 1
    (``"constant"``) or a cosine from 1 down to 0 at the last step (``"warmup_cosine"``); ``steps`` is
    :func:`schedule_steps`."""
    t = jnp.asarray(step, jnp.float32)
    warmup, total = steps[0], steps[1]
    rising = jnp.minimum((t + 1.0) / jnp.maximum(warmup, 1.0), 1.0)
    if schedule == "constant":
        return rising
    progress = jnp.clip((t - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    return jnp.where(t < warmup, rising, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))


def _param_labels(params: Variables, trainable: Sequence[str]) -> Variables:
    """multi_transform labels: ``head`` for the head, ``backbone/<block>`` for an unfrozen block, ``frozen``
    otherwise."""
    backbone = {name: jax.tree.map(lambda _, n=name: f"backbone/{n}" if n in trainable else "frozen", sub)
                for name, sub in params["backbone"].items()}
    return {"backbone": backbone, "head": jax.tree.map(lambda _: "head", params["head"])}


def make_optimizer(setup: FinetuneSetup, params: Variables) -> optax.GradientTransformation:
    """AdamW at each part's peak rate (:func:`block_rates`), set_to_zero for the frozen blocks. The schedule is
    applied by the step, as a factor on the updates (AdamW's update is linear in its rate)."""
    cfg = setup.config
    parts: dict[str, optax.GradientTransformation] = {
        name: optax.adamw(rate, weight_decay=cfg.weight_decay) for name, rate in block_rates(setup).items()}
    parts["frozen"] = optax.set_to_zero()
    return optax.multi_transform(parts, _param_labels(params, setup.trainable))


def _loss(params: Variables, stats: Variables, images: jax.Array, labels: jax.Array, mask: jax.Array,
          words: jax.Array, setup: FinetuneSetup) -> tuple[jax.Array, Variables]:
    """Masked mean training loss (label-smoothed as configured), the new statistics and the head's own loss (as the
    sweep and the val loss measure it). Frozen blocks sit behind ``stop_gradient``."""
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
    total = jnp.maximum(jnp.sum(mask), 1.0)
    plain = jnp.sum(heads.example_losses(logits, labels, setup.spec) * mask) / total
    loss = plain
    if setup.spec.task == "multiclass" and cfg.label_smoothing != setup.spec.label_smoothing:
        smoothed = dataclasses.replace(setup.spec, label_smoothing=cfg.label_smoothing)
        loss = jnp.sum(heads.example_losses(logits, labels, smoothed) * mask) / total
    return loss, ({"backbone": new_backbone_stats, "head": new_head_stats}, plain)


def train_step(setup: FinetuneSetup) -> Callable[..., tuple[TrainState, jax.Array]]:
    """The jitted step of ``setup``, shared by every fine-tune whose settings differ only in what the step does
    not see (epochs, patience, batch size, crop scale and warm-up are shapes, loop settings or the ``steps``
    argument; the seed is an argument)."""
    loop_only = {"unfreeze": 0, "epochs": 0, "batch_size": 1, "patience": None, "image_size": None,
                 "crop_scale": 1.0, "seed": 0, "warmup_epochs": 0.0, "metric": None}
    return _compiled_step(dataclasses.replace(setup, config=dataclasses.replace(setup.config, **loop_only)))


@functools.lru_cache(maxsize=8)
def _compiled_step(setup: FinetuneSetup) -> Callable[..., tuple[TrainState, jax.Array]]:
    """The jitted step: augment, forward, backward through the unfrozen part, multi-transform update scaled by
    the schedule, moving average."""
    cfg = setup.config

    def step(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array, seed_words: jax.Array,
             steps: jax.Array) -> tuple[TrainState, jax.Array]:
        """``seed_words``: (2,) uint32 of the run's seed; each step's randomness folds in the step counter.
        ``steps``: :func:`schedule_steps`. Returns the new state and the head's unsmoothed training loss."""
        words = heads.fold(seed_words, state.step)
        (_, (stats, plain)), grads = jax.value_and_grad(_loss, has_aux=True)(
            state.params, state.stats, images, labels, mask, words, setup)
        tx = make_optimizer(setup, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        scale = lr_scale(state.step, steps, cfg.schedule)
        params = optax.apply_updates(state.params, jax.tree.map(lambda u: u * scale.astype(u.dtype), updates))
        ema = state.ema
        if cfg.ema_decay is not None:
            d = cfg.ema_decay
            ema = jax.tree.map(lambda avg, new: d * avg + (1.0 - d) * new, state.ema, (params, stats))
        return TrainState(state.step + 1, params, stats, opt_state, ema), plain

    return jax.jit(step, donate_argnums=0)
