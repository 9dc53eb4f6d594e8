"""The fine-tune's optimiser: AdamW or SGD with momentum per part (``optax.multi_transform``), the rates decaying
layer by layer down the unfrozen blocks, and the warm-up / cosine factor the step applies to every update."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxheads.backbones import Preprocessing
from jaxheads.finetuning.config import FinetuneConfig
from jaxheads.finetuning.model import Variables
from jaxheads.heads import HeadSpec

__all__ = ["FinetuneSetup", "block_rates", "lr_scale", "finetune_optimizer", "schedule_steps"]


@dataclasses.dataclass(frozen=True)
class FinetuneSetup:
    """The static (hashable) setup of one fine-tune: what its compiled train step and val predictions depend on."""

    module: Any
    preprocessing: Preprocessing
    spec: HeadSpec
    trainable: tuple[str, ...]
    config: FinetuneConfig
    image_size: int


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
    """``[warm-up steps, total steps]`` (float32) of a fine-tune with ``steps_per_epoch`` optimiser updates per
    epoch: the step's argument."""
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


def _part(config: FinetuneConfig, rate: float) -> optax.GradientTransformation:
    """One part's optimiser at its peak ``rate``: AdamW (decoupled decay), or SGD with (heavy-ball) momentum and
    weight decay added to the gradient, as the published two-stage recipes use it."""
    if config.optimizer == "sgd":
        return optax.chain(optax.add_decayed_weights(config.weight_decay),
                           optax.sgd(rate, momentum=config.momentum or None))
    return optax.adamw(rate, weight_decay=config.weight_decay)


def finetune_optimizer(setup: FinetuneSetup, params: Variables) -> optax.GradientTransformation:
    """Each part's optimiser at its peak rate (:func:`block_rates`), set_to_zero for the frozen blocks. The schedule
    is applied by the step, as a factor on the updates (both updates are linear in their rate, and momentum
    accumulates the unscaled gradients, as a scheduled learning rate does in PyTorch's SGD)."""
    parts = {name: _part(setup.config, rate) for name, rate in block_rates(setup).items()}
    parts["frozen"] = optax.set_to_zero()
    return optax.multi_transform(parts, _param_labels(params, setup.trainable))
