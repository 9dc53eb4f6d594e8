"""The sweep: train a whole grid of heads at once on cached features and rank them with noise.

Public entry::

    run_sweep(sweep: SweepSpec, splits: dict[str, FeatureSplit], *, num_classes: int, task: str = "multiclass",
              mesh: Mesh | None = None, progress: Callable[[dict], None] | None = None,
              label_names: Sequence[str] | None = None) -> SweepResult
    compile_sweep(sweep, abstract_splits(sizes, pooled=..., maps=...), *, num_classes, task, mesh) -> dict
                                      # the same programs, compiled from shapes before the features exist

``splits`` needs ``"train"`` and ``"val"``; ``"test"`` is optional. Members are grouped by structure (pooling,
conv stack, depth, normalisation, activation, loss options, optimiser, batch size); each group is one jitted
program: an epoch is a ``lax.scan`` over shuffled index batches of the device-resident features, and each step
updates every member of the group (``jax.vmap`` or ``lax.map(batch_size=k)`` over members, see
``SweepSpec.map_batch``) inside a ``shard_map`` over ``Mesh(("members", "data"))``: members are sharded first, the batch
takes the devices left over (gradients and batch-norm statistics are summed over "data"). Hidden widths are padded
to the group's widest and masked. With ``SweepSpec.depth_grouping="gated"`` members that differ only in depth (all
depth >= 1) share a group too: every hidden layer is padded to the group's widest width and its deepest stack, and
a member's layers beyond its own depth are gated to an exact identity (``heads.forward(depth=...)``). Learning
rate, weight decay (``optax.inject_hyperparams``), dropout and seed are
per-member arrays. Early stopping (patience on the validation metric, best weights kept), a NaN/Inf guard that
freezes only the diverged member, and successive halving run between epochs on the host from (M,) arrays.

SweepResult JSON schema (``SweepResult.to_json()``; version 1, stable — add fields, never rename)::

    {
      "schema": "jaxheads.sweep_result/1",
      "task": "multiclass" | "multilabel",
      "num_classes": int,
      "label_names": [str] | null,
      "metric": str,                  # the validation metric members are ranked by (higher is better):
                                      #   "accuracy" (multiclass) or "macro_average_precision" (multilabel)
      "feature_shapes": {"pooled": [C] | null, "maps": [H, W, C] | null},
      "sweep": {...},                 # SweepSpec.to_dict()
      # metric_name: multiclass "accuracy", "top5", "macro_f1", "loss" (cross-entropy, no smoothing);
      #   multilabel "macro_roc_auc", "macro_average_precision", "macro_f1" (final only: thresholds tuned on
      #   val), "loss" (binary cross-entropy). NaN is written as null.
      "members": [                    # one per trained member (dummies excluded), in member order
        {
          "member": int,              # index into this list
          "config": str,              # id of the member's spec without its seed: members sharing it are replicas
          "group": int,               # index into "groups"
          "spec": {                   # MemberSpec.to_dict()
            "head": {HeadSpec fields: num_classes, task, pooling, conv: [{features, kernel, stride, pool}],
                     hidden: [int], activation, dropout, input_dropout, norm, label_smoothing, pos_weight,
                     class_weights},
            "learning_rate": float, "weight_decay": float, "optimizer": str, "batch_size": int, "seed": int},
          "params": int,              # trainable parameters of the unpadded head
          "epochs_run": int,          # epochs this member trained before stopping / halving / divergence
          "best_epoch": int,          # 1-based epoch whose weights are kept (0: never improved on init)
          "diverged": bool,           # NaN/Inf seen: frozen at its last finite weights
          "stopped": "completed" | "early_stopping" | "halving" | "diverged",
          "curves": {"train_loss": [float per epoch], "val": {metric_name: [float per epoch]}},
          "val": {metric_name: float},   # at best_epoch (scalar metrics only; see below)
          "test": {metric_name: float} | null,
          "per_class": {"val": {name: [float]}, "test": {name: [float]} | null},  # multilabel: roc_auc,
                                      #   average_precision, f1 (with thresholds tuned on val); else {}
          "thresholds": [float] | null  # multilabel decision thresholds tuned on val
        }
      ],
      "leaderboard": [                # one row per config, sorted by val mean of "metric", best first
        {
          "config": str, "group": int, "members": [int], "spec": {...MemberSpec without seed...},
          "params": int, "n_seeds": int, "diverged": int (members of this config that diverged),
          "epochs_run": float (mean),
          "val": {metric_name: {"mean": float, "std": float, "sem": float}},
          "test": {metric_name: {"mean": float, "std": float, "sem": float}} | null
        }
      ],
      "recommended": str | null,      # config of the smallest-params row whose val mean is within one SEM of
                                      #   the best row's mean (the best row's SEM)
      "ridge": [                      # closed-form ridge linear probe on pooled features, one row per L2
        {"l2": float, "params": int, "val": {metric_name: float}, "test": {metric_name: float} | null,
         "best": bool (the L2 chosen on val by "select_metric"), "select_metric": str}
      ],                              # [] when the sweep has no pooled features or ridge_l2 == ()
      "groups": [
        {"group": int, "structure": {...HeadSpec of the program...},  # conv-free heads: pooling "none" (pre-pooled)
         "poolings": [str],           # the members' poolings; each reads its own pre-pooled input
         "optimizer": str, "batch_size": int,
         "members": [int], "padded_members": int (slots at the start), "padded_hidden": [int],
         "gated_depths": [int] | null,  # depth_grouping="gated" with several depths: the members' true depths
         "mesh": {"members": int, "data": int},
         "map_batch": int | "vmap",    # how members are batched inside a device: lax.map(batch_size=k) or vmap
         "map_batch_probe": {str(k): seconds per step} | null,   # the timing probe that chose it
         "steps_per_epoch": int, "epochs": int,
         "slots_per_epoch": [int],     # member slots computed each epoch: shrinks as stopped members are
                                       #   compacted away (halving / early stopping / divergence)
         "timings": {"init_s", "compile_s", "probe_s", "train_s", "eval_s"}}  # main-thread wall seconds:
                                       #   init and the evaluation compiles overlap compile_s in threads
      ],
      "timings": {"total_s": float, "ridge_s": float}
    }

Replicas (``seeds``) differ in initialisation and dropout noise; all members of a group see the same batch order
(one shuffle per epoch and group), which keeps the shared-input matmuls batched across members.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxheads import heads as H
from jaxheads import parallel
from jaxheads.heads import ConvStage, HeadSpec
from jaxheads.splits import FeatureSplit

Array = jax.Array
OPTIMIZERS = ("adamw", "adam", "sgd")
DEPTH_GROUPINGS = ("separate", "gated")
# SweepSpec.depth_grouping's default: the faster of the two in experiments/bench_depth.py on our shared 2-core CPU
# (depths 1-3 × widths 64/256 × 4 seeds, 1280-d, batch 64, 3 alternating rounds): "separate" trains in 10.3 s
# (best; median 10.4) against 12.7 s (median 14.3) gated, since gated computes every member's padded layers. Gated
# only saves compilation (one program instead of three: cold first call 28 s vs 35 s at 4 epochs), which stops
# paying after a handful of epochs.
DEPTH_GROUPING_DEFAULT = "separate"
MAP_BATCH_MODES = ("auto", "probe", "vmap")
# Parameters per member from which map_batch="auto" trains a CPU's members one after another inside the program
# (lax.map, k=1: a member's weights and optimiser state stay in cache through its steps, and its products are as
# large as a standalone head's) instead of vmapped (all members' state streams through memory at every step).
# Jitted epochs of 64 members of 1280 -> w -> 10 on the idle 2-core CPU (/ = batch), k=1 vs vmap: w 512/256
# 0.96x vs 0.82x the sequential loop (experiments/bench_sweep.py); seconds per epoch: 512/64 3.9 vs 5.0,
# 256/128 1.6 vs 1.9, 128/64 1.42 vs 1.39, 64/256 0.44 vs 0.36, 64/64 vmap 1.40x vs k=1 1.07x the loop.
CPU_MEMBER_MAJOR_PARAMS = 250_000
SCHEMA = "jaxheads.sweep_result/1"


# ================================================================================================= specs
@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """One trained member: a head and how it is trained. Everything but ``seed`` identifies its config."""

    head: HeadSpec
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.head, Mapping):
            object.__setattr__(self, "head", HeadSpec.from_dict(self.head))
        if not (self.learning_rate >= 0):
            raise ValueError(f"MemberSpec.learning_rate: must be >= 0, got {self.learning_rate!r}")
        if not (self.weight_decay >= 0):
            raise ValueError(f"MemberSpec.weight_decay: must be >= 0, got {self.weight_decay!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"MemberSpec.optimizer: {self.optimizer!r} is not one of {OPTIMIZERS}")
        if int(self.batch_size) < 1:
            raise ValueError(f"MemberSpec.batch_size: must be >= 1, got {self.batch_size!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["head"] = self.head.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MemberSpec":
        return cls(**dict(d))

    def config_id(self) -> str:
        """Stable short id of everything except the seed (replicas share it)."""
        d = self.to_dict()
        d.pop("seed")
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def _tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """The grid, as data. Every tuple field is an axis; the grid is their cross product (times ``seeds``).

    Head axes: ``pooling``, ``conv`` (a tuple of conv stacks, each a tuple of :class:`ConvStage`), ``hidden``
    (explicit width tuples) or, when ``hidden`` is None, ``widths`` × ``depth`` (every layer of a member has the
    same width; depth 0 is the linear probe), ``activation``, ``dropout``, ``norm``. Training axes:
    ``learning_rate``, ``weight_decay``, ``optimizer`` (adamw | adam | sgd with momentum 0.9), ``batch_size``.
    Scalars: ``epochs``, ``seeds`` (replicas of every config, for noise), ``input_dropout``, ``label_smoothing``,
    ``pos_weight``/``class_weights`` (passed to every head), ``patience`` (epochs without val improvement before a
    member stops; None = never), ``halving_every``/``halving_fraction`` (successive halving: every k epochs drop
    that fraction of the still-training members, weakest first; None = off), ``sample`` (train a random subset of
    that many configs, drawn with ``sample_seed``), ``members`` (explicit MemberSpecs, used instead of the grid
    when given), ``ridge_l2`` (L2 strengths of the ridge-probe baseline; None = ``probe.DEFAULT_L2_GRID``, () = no
    baseline), ``map_batch``
    ("auto" = vmap unless the memory cap bounds it or, on a CPU, members are large (``CPU_MEMBER_MAJOR_PARAMS``);
    "probe" = the fastest of a few timed candidates; "vmap"; or an int k for ``lax.map(batch_size=k)``),
    ``member_memory_mb`` (cap on the
    activation memory of the members batched together on one device; bounds k), ``data_seed``.
    ``depth_grouping``: ``"separate"`` (one group per depth) or ``"gated"`` (members differing only in depth,
    depth >= 1, share one group padded to its maximum depth and width; shallower members' extra layers are an
    exact identity). Measured in ``experiments/bench_depth.py``: see ``DEPTH_GROUPING_DEFAULT``.
    """

    pooling: tuple[str, ...] = ("avg",)
    conv: tuple[tuple[ConvStage, ...], ...] = ((),)
    hidden: tuple[tuple[int, ...], ...] | None = None
    widths: tuple[int, ...] = (64,)
    depth: tuple[int, ...] = (1,)
    activation: tuple[str, ...] = ("relu",)
    dropout: tuple[float, ...] = (0.0,)
    norm: tuple[str, ...] = ("none",)
    learning_rate: tuple[float, ...] = (1e-3,)
    weight_decay: tuple[float, ...] = (0.0,)
    optimizer: tuple[str, ...] = ("adamw",)
    batch_size: tuple[int, ...] = (64,)
    epochs: int = 20
    seeds: int = 1
    input_dropout: float = 0.0
    label_smoothing: float = 0.0
    pos_weight: float | tuple[float, ...] | None = None
    class_weights: tuple[float, ...] | None = None
    patience: int | None = 5
    halving_every: int | None = None
    halving_fraction: float = 0.5
    sample: int | None = None
    sample_seed: int = 0
    members: tuple[MemberSpec, ...] = ()
    ridge_l2: tuple[float, ...] | None = None
    map_batch: str | int = "auto"
    member_memory_mb: float = 1024.0
    data_seed: int = 0
    depth_grouping: str = DEPTH_GROUPING_DEFAULT

    def __post_init__(self) -> None:
        for f in ("pooling", "widths", "depth", "activation", "dropout", "norm", "learning_rate", "weight_decay",
                  "optimizer", "batch_size"):
            object.__setattr__(self, f, _tuple(getattr(self, f)))
        object.__setattr__(self, "conv", tuple(
            tuple(s if isinstance(s, ConvStage) else ConvStage(**s) for s in stack) for stack in self.conv))
        if self.ridge_l2 is not None:
            object.__setattr__(self, "ridge_l2", _tuple(self.ridge_l2))
        if self.hidden is not None:
            object.__setattr__(self, "hidden", tuple(tuple(h) for h in self.hidden))
        object.__setattr__(self, "members", tuple(
            m if isinstance(m, MemberSpec) else MemberSpec.from_dict(m) for m in self.members))
        if int(self.epochs) < 1:
            raise ValueError(f"SweepSpec.epochs: must be >= 1, got {self.epochs!r}")
        if int(self.seeds) < 1:
            raise ValueError(f"SweepSpec.seeds: must be >= 1, got {self.seeds!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"SweepSpec.patience: must be >= 1 or None, got {self.patience!r}")
        if not (0.0 < self.halving_fraction < 1.0):
            raise ValueError(f"SweepSpec.halving_fraction: must be in (0, 1), got {self.halving_fraction!r}")
        if self.depth_grouping not in DEPTH_GROUPINGS:
            raise ValueError(f"SweepSpec.depth_grouping: {self.depth_grouping!r} is not one of {DEPTH_GROUPINGS}")
        if not (self.map_batch in MAP_BATCH_MODES or (isinstance(self.map_batch, int) and self.map_batch >= 1)):
            raise ValueError(f"SweepSpec.map_batch: one of {MAP_BATCH_MODES} or an int >= 1, got {self.map_batch!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["members"] = [m.to_dict() for m in self.members]
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SweepSpec":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        return H.from_known_fields(cls, d)

    def expand(self, num_classes: int, task: str) -> list[MemberSpec]:
        """Every member: explicit ``members``, else the (sampled) grid, each config repeated for every seed."""
        if self.members:
            return [m if m.head.num_classes == num_classes and m.head.task == task else dataclasses.replace(
                m, head=m.head.replace(num_classes=num_classes, task=task)) for m in self.members]
        hidden = self.hidden if self.hidden is not None else tuple(
            dict.fromkeys((w,) * d for d in self.depth for w in self.widths))
        configs = []
        for pool, conv, hid, act, drop, norm, lr, wd, opt, bs in itertools.product(
                self.pooling, self.conv, hidden, self.activation, self.dropout, self.norm, self.learning_rate,
                self.weight_decay, self.optimizer, self.batch_size):
            head = HeadSpec(num_classes=num_classes, task=task, pooling=pool, conv=conv, hidden=hid,
                            activation=act, dropout=drop, input_dropout=self.input_dropout, norm=norm,
                            label_smoothing=self.label_smoothing, pos_weight=self.pos_weight,
                            class_weights=self.class_weights)
            configs.append(MemberSpec(head, lr, wd, opt, bs))
        if self.sample is not None and self.sample < len(configs):
            configs = random.Random(self.sample_seed).sample(configs, self.sample)
        return [dataclasses.replace(c, seed=s) for c in configs for s in range(self.seeds)]


# ================================================================================================= optimiser
def _decay_mask(params: Any) -> Any:
    """Weight decay on kernels only (not biases or norm scales)."""
    return jax.tree.map(lambda x: x.ndim > 1, params)


def _adamw(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    return optax.adamw(learning_rate, weight_decay=weight_decay, mask=_decay_mask)


def _adam(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(weight_decay, _decay_mask), optax.adam(learning_rate))


def _sgd(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(weight_decay, _decay_mask), optax.sgd(learning_rate, 0.9))


def make_optimizer(name: str, learning_rate: Any = 0.0, weight_decay: Any = 0.0) -> optax.GradientTransformation:
    """``name`` with its learning rate and weight decay injected into the state (so they can be per-member arrays
    under vmap; ``update`` reads them from the state, not from these arguments)."""
    factory = {"adamw": _adamw, "adam": _adam, "sgd": _sgd}[name]
    return optax.inject_hyperparams(factory)(learning_rate=learning_rate, weight_decay=weight_decay)


# ================================================================================================= engine
class GroupState(NamedTuple):
    """Everything a group's epoch updates; every leaf has the member axis first."""

    variables: Any
    opt_state: Any
    diverged: Array  # (M,) bool


class MemberConsts(NamedTuple):
    """Per-member constants of a group (member axis first)."""

    dropout: Array  # (M,)
    input_dropout: Array  # (M,)
    keys: Array  # (M, 2) uint32 raw key data
    masks: tuple[Array, ...]  # (M, W_i) per hidden layer
    depth: Array  # (M,) int32 true depth (used by depth-gated groups only)
    source: Array  # (M,) int32 which of the group's input arrays the member reads (its pooling)


@dataclasses.dataclass(frozen=True)
class _Program:
    """Static description of one compiled group program (hashable: jitted functions are cached on it)."""

    structure: HeadSpec
    optimizer: str
    batch_size: int
    mesh: Mesh
    map_batch: int | str
    gated: bool = False  # members of several depths: hidden layers beyond a member's depth are an identity
    # Whether any member drops units (hidden layers / the input): when none does, the step has no dropout at all.
    # Input dropout matters most: with it the shared input becomes a per-member array (M copies of every batch),
    # and the first layer a batched product instead of one product of the shared input with every member.
    dropout: bool = True
    input_dropout: bool = True
    task: str = "multiclass"  # which metrics the evaluation program computes


def _one_vmap(map_batch: int | str, members: int) -> bool:
    """Whether ``map_batch`` batches all ``members`` in one vmap (no chunking)."""
    return map_batch == "vmap" or map_batch >= members


def _map_members(f: Callable, xs: Any, map_batch: int | str) -> Any:
    """Apply ``f`` to every member of ``xs``: vmap, or lax.map with ``batch_size=map_batch`` (bounded memory)."""
    if _one_vmap(map_batch, jax.tree.leaves(xs)[0].shape[0]):
        return jax.vmap(f)(xs)
    return lax.map(f, xs, batch_size=int(map_batch))


def _update_members(f: Callable, state: Any, rest: Any, map_batch: int | str) -> tuple[Any, Any]:
    """``f(state_i, rest_i) -> (new_state_i, out_i)`` for every member, as :func:`_map_members` batches them; with
    ``lax.map(batch_size=k)``-style chunks the stacked ``state`` is updated in place in a loop carry.

    Why not ``lax.map``: its stacked outputs made XLA copy the whole group's state several times per call (eight
    state-sized copies per epoch for 8 members of 1280 -> 512, in the compiled HLO), on a CPU several percent of
    an epoch. A ``fori_loop`` over chunks that slices the carry and writes each chunk back in place copies nothing
    (the epoch donates ``state``)."""
    m = jax.tree.leaves(state)[0].shape[0]
    if _one_vmap(map_batch, m):
        return jax.vmap(f)(state, rest)
    k, chunk_f = int(map_batch), jax.vmap(f)

    def take(tree: Any, start: Array | int, size: int) -> Any:
        return jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, start, size, 0), tree)

    def put(tree: Any, part: Any, start: Array | int) -> Any:
        return jax.tree.map(lambda x, y: lax.dynamic_update_slice_in_dim(x, y, start, 0), tree, part)

    def chunk(start: Array | int, size: int, carry: tuple[Any, Any]) -> tuple[Any, Any]:
        new_state, out = chunk_f(take(carry[0], start, size), take(rest, start, size))
        return put(carry[0], new_state, start), put(carry[1], out, start)

    out_shape = jax.eval_shape(chunk_f, take(state, 0, k), take(rest, 0, k))[1]
    outs = jax.tree.map(lambda o: jnp.zeros((m,) + o.shape[1:], o.dtype), out_shape)
    carry = lax.fori_loop(0, m // k, lambda i, c: chunk(i * k, k, c), (state, outs))
    return chunk(m - m % k, m % k, carry) if m % k else carry


def _tree_where(pred: Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def swap_first_kernel(params: Any, structure: HeadSpec) -> Any:
    """``params`` with the first dense kernel's last two axes swapped, (in, out) <-> (out, in); an involution.

    Inside a group the first dense layer (of a head without conv stages) reads the input every member shares, so
    under vmap its weight gradient is one product of the batch with all members' output gradients, which XLA
    lays out (M·out, in). Stored (M, out, in) the kernel takes that result as it is; stored (M, in, out) XLA
    transposes it at every step (0.17 GB per step for 64 members of 1280 -> 512, seen in the compiled HLO)."""
    if structure.conv:
        return params
    params = dict(params)
    if structure.hidden:
        hidden = list(params["hidden"])
        hidden[0] = dict(hidden[0], kernel=hidden[0]["kernel"].swapaxes(-1, -2))  # numpy stays on the host
        params["hidden"] = hidden
    else:
        params["out"] = dict(params["out"], kernel=params["out"]["kernel"].swapaxes(-1, -2))
    return params


def _member_step(prog: _Program, global_batch: int, xb: Array, yb: Array, step: Array, member: tuple) -> tuple:
    """One optimiser step of one member on its local slice of the batch (gradients summed over "data")."""
    spec, tx = prog.structure, make_optimizer(prog.optimizer)
    (variables, opt_state, diverged), consts, active = member
    rng = H.fold(consts.keys, step)
    row_offset = lax.axis_index(parallel.DATA) * xb.shape[0]  # dropout masks follow global rows, not shards

    def loss_fn(params: Any) -> tuple[Array, Any]:
        logits, stats = H.forward({"params": swap_first_kernel(params, spec),
                                   "batch_stats": variables["batch_stats"]}, xb, spec,
                                  train=True, rng=rng, dropout_rate=consts.dropout if prog.dropout else None,
                                  input_dropout_rate=consts.input_dropout if prog.input_dropout else None,
                                  masks=consts.masks,
                                  axis_name=parallel.DATA, row_offset=row_offset,
                                  depth=consts.depth if prog.gated else None)
        return jnp.sum(H.example_losses(logits, yb, spec)) / global_batch, stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    loss, grads = lax.psum((loss, grads), parallel.DATA)
    updates, new_opt = tx.update(grads, opt_state, variables["params"])
    # The guard: a member whose loss is not finite is flagged and frozen from this step on. Its update is
    # selected away inside the (fused) parameter add, never by a second pass over params and optimiser state:
    # on a CPU that extra memory traffic costs more than the guard is worth. The optimiser state of a frozen
    # member may go on changing (or turn NaN); it is never used again.
    ok = jnp.isfinite(loss)
    keep = active & ~diverged & ok
    params = jax.tree.map(lambda p, u: p + jnp.where(keep, u, jnp.zeros((), u.dtype)), variables["params"], updates)
    stats = _tree_where(keep, stats, variables["batch_stats"])
    state = GroupState({"params": params, "batch_stats": stats}, new_opt, diverged | (active & ~diverged & ~ok))
    return state, loss


def _local_epoch(prog: _Program, state: GroupState, consts: MemberConsts, active: Array, x: Array, y: Array,
                 idx: Array, step0: Array) -> tuple[GroupState, Array]:
    """One device's share of an epoch, member-major: chunks of k of its members (:func:`_update_members`), each
    chunk a vmapped ``lax.scan`` over the epoch's index batches (k = all members is ``vmap``, i.e. step-major).

    Members are independent for a whole epoch (early stopping and halving look at epoch ends), so a chunk of k
    members can run every step before the next chunk starts: its weights and optimiser state stay in cache for
    the epoch instead of the whole group's state streaming through memory at every step. Every member sees the
    same batches (gathered from the device-resident features inside the scan)."""
    data_shards = prog.mesh.shape[parallel.DATA]
    global_batch = idx.shape[1] * data_shards
    steps = jnp.arange(idx.shape[0], dtype=jnp.int32)

    def member_epoch(member_state: GroupState, member: tuple) -> tuple[GroupState, Array]:
        member_consts, member_active = member

        def body(carry: GroupState, inp: tuple[Array, Array]) -> tuple[GroupState, Array]:
            s, ids = inp
            return _member_step(prog, global_batch, _member_input(x, member_consts)[ids], y[ids], step0 + s,
                                (carry, member_consts, member_active))

        return lax.scan(body, member_state, (steps, idx))

    return _update_members(member_epoch, state, (consts, active), prog.map_batch)  # losses: (M_local, S)


def _member_input(x: Array, consts: MemberConsts) -> Array:
    """The member's input array out of the group's stack ``x`` (S, N, ...). With one source every member reads
    the same array (kept unbatched under vmap: the first layer is then one product for all members)."""
    return x[0] if x.shape[0] == 1 else x[consts.source]


def _local_predict(prog: _Program, variables: Any, consts: MemberConsts, x: Array) -> Array:
    def one(member: tuple) -> Array:
        v, c = member
        v = dict(v, params=swap_first_kernel(v["params"], prog.structure))
        return H.forward(v, _member_input(x, c), prog.structure, train=False, masks=c.masks,
                         depth=c.depth if prog.gated else None)[0]

    return _map_members(one, (variables, consts), prog.map_batch)


def _local_evaluate(prog: _Program, variables: Any, consts: MemberConsts, x: Array, y: Array,
                    mask: Array) -> tuple[dict[str, Array], Array]:
    """Per-member metrics and logits of one evaluation split (rows where ``mask`` is false are padding)."""
    logits = _local_predict(prog, variables, consts, x)
    return jax.vmap(functools.partial(_member_metrics, prog.task), in_axes=(0, None, None))(logits, y, mask), logits


@functools.lru_cache(maxsize=64)
def _programs(prog: _Program) -> tuple[Callable, Callable]:
    """The jitted (train_epoch, evaluate) of a group, sharded over ``prog.mesh``; cached so that identical groups
    (and the sequential baseline in the benchmark) compile once. ``evaluate(variables, consts, x, y, mask)``
    returns (metrics, logits) per member; val and test are padded to one length, so it compiles once."""
    mesh, m, d = prog.mesh, P(parallel.MEMBERS), parallel.DATA
    epoch = jax.shard_map(functools.partial(_local_epoch, prog), mesh=mesh,
                          in_specs=(m, m, m, P(), P(), P(None, d), P()), out_specs=(m, m), check_vma=False)
    evaluate = jax.shard_map(functools.partial(_local_evaluate, prog), mesh=mesh,
                             in_specs=(m, m, P(), P(), P()), out_specs=(m, m), check_vma=False)
    return jax.jit(epoch, donate_argnums=(0,)), jax.jit(evaluate)


@jax.jit
def _copy_tree(tree: Any) -> Any:
    """A copy of every leaf in one program (the epoch donates the state, the kept-best weights must not alias it)."""
    return jax.tree.map(jnp.copy, tree)


@jax.jit
def _keep_best(best: Any, current: Any, improved: Array) -> Any:
    return jax.tree.map(lambda b, c: jnp.where(improved.reshape((-1,) + (1,) * (c.ndim - 1)), c, b), best, current)


# ================================================================================================= metrics
def _member_metrics(task: str, logits: Array, labels: Array, mask: Array) -> dict[str, Array]:
    """One member's metrics of (N, K) logits (the shared jaxheads.metrics functions) and its unsmoothed loss, over
    the rows where ``mask`` is true."""
    from jaxheads import metrics

    valid = mask.astype(logits.dtype)
    if task == "multiclass":
        out = metrics.multiclass_metrics(logits, labels, mask)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], 1)[:, 0]
        out["loss"] = jnp.sum(nll * valid) / jnp.sum(valid)
        return out
    out = metrics.multilabel_metrics(jax.nn.sigmoid(logits), labels, mask)
    y = labels.astype(logits.dtype)
    bce = -(y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits))
    out["loss"] = jnp.sum(bce * valid[:, None]) / (jnp.sum(valid) * logits.shape[1])
    return out


def _thresholded(scores_val: Array, y_val: Array, scores_test: Array | None, y_test: Array | None) -> tuple:
    from jaxheads import metrics

    mask_v = jnp.ones((scores_val.shape[0],), bool)
    thr = metrics.tune_thresholds(scores_val, y_val, mask_v)
    f1_val = metrics.multilabel_f1(scores_val, y_val, mask_v, thr)
    f1_test = None
    if scores_test is not None:
        f1_test = metrics.multilabel_f1(scores_test, y_test, jnp.ones((scores_test.shape[0],), bool), thr)
    return thr, f1_val, f1_test


def _split_scalars(m: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """One member's metrics split into scalars and per-class lists."""
    scalars, per_class = {}, {}
    for k, v in m.items():
        v = np.asarray(v)
        if v.ndim == 0:
            scalars[k] = float(v)
        else:
            per_class[k] = [float(a) for a in v]
    return scalars, per_class


# ================================================================================================= result
def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "sem": float("nan")}
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {"mean": float(a.mean()), "std": std, "sem": std / math.sqrt(a.size)}


@dataclasses.dataclass
class SweepResult:
    """What a sweep found. ``to_json()`` gives the documented schema (module docstring); ``variables`` holds the
    kept (best-epoch) weights of every member, unpadded, for :meth:`head` / saving — not part of the JSON."""

    task: str
    num_classes: int
    metric: str
    sweep: SweepSpec
    members: list[dict[str, Any]]
    leaderboard: list[dict[str, Any]]
    recommended: str | None
    ridge: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    timings: dict[str, float]
    feature_shapes: dict[str, list[int] | None]
    label_names: list[str] | None = None
    variables: list[Any] = dataclasses.field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "task": self.task, "num_classes": self.num_classes,
                "label_names": self.label_names, "metric": self.metric, "feature_shapes": self.feature_shapes,
                "sweep": self.sweep.to_dict(), "members": self.members, "leaderboard": self.leaderboard,
                "recommended": self.recommended, "ridge": self.ridge, "groups": self.groups,
                "timings": self.timings}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(_json_safe(self.to_dict()), indent=indent)

    def recommended_member(self) -> int | None:
        """Index of the recommended config's best replica (highest val metric)."""
        if self.recommended is None:
            return None
        ids = [m["member"] for m in self.members if m["config"] == self.recommended]
        return max(ids, key=lambda i: _nan_low(self.members[i]["val"].get(self.metric)))

    def head(self, member: int | None = None) -> tuple[HeadSpec, Any]:
        """(HeadSpec, unpadded variables) of a member (default: the recommended one), ready for save_head."""
        member = self.recommended_member() if member is None else member
        if member is None:
            raise ValueError("no member to return: the sweep recommended nothing")
        return MemberSpec.from_dict(self.members[member]["spec"]).head, self.variables[member]


def _nan_low(x: float | None) -> float:
    return -math.inf if x is None or not math.isfinite(x) else x


def _json_safe(obj: Any) -> Any:
    """NaN/inf → null so the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def leaderboard(members: list[dict[str, Any]], metric: str) -> tuple[list[dict[str, Any]], str | None]:
    """Aggregate replicas by config (mean/std/sem over seeds) and pick the recommended config: the smallest by
    parameter count whose mean val ``metric`` is within one SEM (the best row's) of the best mean."""
    rows: dict[str, dict[str, Any]] = {}
    for m in members:
        rows.setdefault(m["config"], {"members": []})["members"].append(m)
    board = []
    for config, row in rows.items():
        ms = row["members"]
        spec = dict(ms[0]["spec"])
        spec.pop("seed", None)
        names = sorted({k for x in ms for k in x["val"]})
        test = None
        if all(x["test"] is not None for x in ms):
            test = {k: _stats([x["test"].get(k, float("nan")) for x in ms]) for k in sorted(ms[0]["test"])}
        board.append({"config": config, "group": ms[0]["group"], "members": [x["member"] for x in ms],
                      "spec": spec, "params": ms[0]["params"], "n_seeds": len(ms),
                      "diverged": sum(bool(x["diverged"]) for x in ms),
                      "epochs_run": float(np.mean([x["epochs_run"] for x in ms])),
                      "val": {k: _stats([x["val"].get(k, float("nan")) for x in ms]) for k in names},
                      "test": test})
    board.sort(key=lambda r: (-_nan_low(r["val"].get(metric, {}).get("mean")), r["params"]))
    recommended = None
    if board and math.isfinite(_nan_low(board[0]["val"].get(metric, {}).get("mean"))):
        best = board[0]["val"][metric]
        floor = best["mean"] - (best["sem"] if math.isfinite(best["sem"]) else 0.0)
        ok = [r for r in board if _nan_low(r["val"][metric]["mean"]) >= floor]
        recommended = min(ok, key=lambda r: (r["params"], -r["val"][metric]["mean"]))["config"]
    return board, recommended


# ================================================================================================= run
def _features(split: FeatureSplit, spec: HeadSpec, name: str) -> np.ndarray:
    x = split.pooled if spec.pooling == "none" else split.maps
    if x is None:
        kind = "pooled" if spec.pooling == "none" else "maps"
        raise ValueError(f"HeadSpec.pooling: {spec.pooling!r} needs split {name!r} to carry `{kind}` features")
    return x


def _program_structure(head: HeadSpec) -> HeadSpec:
    """What a group's program computes: a head without conv stages reads features pooled once before training
    (``heads.pool``, one array per pooling in the group), so its program starts at the dense layers."""
    structure = head.structure()
    return structure if structure.conv else structure.replace(pooling="none")


def _program_input(split: FeatureSplit, head: HeadSpec, name: str) -> np.ndarray | jax.ShapeDtypeStruct:
    """float32 input of ``head``'s group program on ``split``: the cached features, pooled here once on the host
    (conv-free heads) instead of at every training step. Abstract features give the input's shape."""
    x = _features(split, head, name)
    if isinstance(x, jax.ShapeDtypeStruct):
        pooled = x if head.conv else jax.eval_shape(functools.partial(H.pool, head), x)
        return jax.ShapeDtypeStruct(pooled.shape, np.float32)
    x = np.asarray(x, np.float32)
    return x if head.conv else np.asarray(H.pool(head, x, xp=np), np.float32)


def _stack(arrays: Sequence[Any]) -> Any:
    """``np.stack`` of the group's input arrays (or of their shapes)."""
    if isinstance(arrays[0], jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(arrays),) + arrays[0].shape, arrays[0].dtype)
    return np.stack(arrays)


def _pad_rows(x: Any, rows: int, axis: int) -> Any:
    """``x`` zero-padded to ``rows`` along ``axis`` (or its shape)."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape[:axis] + (rows,) + x.shape[axis + 1:], x.dtype)
    return parallel.pad_to(np.asarray(x), rows, axis=axis)[0]


def _put(x: Any, sharding: NamedSharding) -> Any:
    """``jax.device_put``, or for a shape the abstract array the program will be given (same dtype rules)."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, jax.dtypes.canonicalize_dtype(x.dtype), sharding=sharding)
    return jax.device_put(np.asarray(x), sharding)


def _group_members(members: Sequence[MemberSpec], feature_shapes: Mapping[str, tuple[int, ...]],
                   depth_grouping: str = "separate") -> list[list[int]]:
    """Member indices per compiled group: equal program structure (``HeadSpec.structure`` without the pooling of
    conv-free heads, whose pooled width must agree), optimiser and batch size. ``"gated"`` also merges members
    whose structures differ only in depth, when that depth is >= 1 (linear probes stay in their own group: a gated
    layer 0 could not be an identity between different widths)."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        structure = _program_structure(m.head)
        depth: Any = len(m.head.hidden)
        if depth_grouping == "gated" and m.head.hidden:
            structure, depth = structure.replace(hidden=()), "any depth >= 1"
        width = None
        if not m.head.conv:
            width = H.pooled_dim(m.head, feature_shapes["pooled" if m.head.pooling == "none" else "maps"])
        groups.setdefault((structure, depth, width, m.optimizer, m.batch_size), []).append(i)
    return list(groups.values())


@functools.lru_cache(maxsize=64)
def _group_init(structure: HeadSpec, feature_shape: tuple[int, ...], padded: tuple[int, ...],
                optimizer: str, gated: bool = False) -> Callable:
    """One jitted program that initialises a whole group under vmap: each member is its standalone head (true
    widths and fan-in, see ``init_head(true_hidden=...)``) zero-padded to the group's widths (and, ``gated``, its
    depth: extra layers all zero, see ``init_head(true_depth=...)``), plus the optimiser state with per-member
    hyper-parameters and the members' dropout keys."""
    spec = structure.replace(hidden=padded)

    def one(seed: Array, true_hidden: Array, depth: Array, lr: Array, wd: Array) -> tuple[Any, Any, Array]:
        words = jnp.stack([seed, jnp.uint32(0)])  # == heads.seed_words(seed)
        variables = H.init_head(H.fold(words, 0), spec, feature_shape, true_hidden=true_hidden,
                                true_depth=depth if gated else None)
        variables = dict(variables, params=swap_first_kernel(variables["params"], structure))
        opt_state = make_optimizer(optimizer, lr, wd).init(variables["params"])
        return variables, opt_state, H.fold(words, 1)

    return jax.jit(jax.vmap(one))


def _member_bytes(spec: HeadSpec, feature_shape: tuple[int, ...], batch: int, padded: Sequence[int]) -> int:
    """Rough activation bytes of one member's step (forward + backward), for the memory cap on k."""
    per_example = H.pooled_dim(spec, feature_shape) + sum(padded) * 3 + spec.num_classes * 2
    if spec.conv:
        h, w, c = feature_shape
        for s in spec.conv:
            h, w = math.ceil(h / s.stride), math.ceil(w / s.stride)
            per_example += 3 * h * w * s.features
            h, w = h // s.pool, w // s.pool
    return 4 * batch * per_example * 2


def _shuffled_batches(rng: np.random.Generator, n: int, batch: int) -> np.ndarray:
    """(steps, batch) int32 indices of one shuffled epoch; the last partial batch is dropped (BN sees full
    batches; every example is seen within two epochs on average)."""
    batch = min(batch, n)
    steps = n // batch
    return rng.permutation(n)[: steps * batch].reshape(steps, batch).astype(np.int32)


def _time_epoch(epoch_fn: Callable, args: tuple, repeats: int = 1) -> float:
    """Seconds per call after a warm-up (compile) call. The epoch donates its state, so every call gets a copy
    and the probe leaves the live state untouched."""
    best = math.inf
    for r in range(repeats + 1):
        fresh = (jax.tree.map(jnp.copy, args[0]),) + args[1:]
        jax.block_until_ready(fresh)
        t = time.perf_counter()
        jax.block_until_ready(epoch_fn(*fresh))
        if r:
            best = min(best, time.perf_counter() - t)
    return best


def _candidates(local_members: int, cap: int) -> list[int | str]:
    """lax.map batch sizes worth probing: 1, 4, 16 and the whole local member set (vmap), capped by memory."""
    ks: list[int | str] = [k for k in (1, 4, 16) if k < local_members and k <= cap]
    if local_members <= cap:
        ks.append("vmap")
    return ks or [1]


class _Group:
    """One structure group being trained: device state, host-side bookkeeping, and its compiled program.

    Built from abstract splits (arrays given as ``jax.ShapeDtypeStruct``) it only holds shapes: enough to compile
    its programs (``compile_sweep``), nothing to train."""

    def __init__(self, gid: int, ids: list[int], members: Sequence[MemberSpec], splits: Mapping[str, FeatureSplit],
                 sweep: SweepSpec, mesh: Mesh | None, pool: concurrent.futures.Executor):
        t0 = time.perf_counter()
        self.pool = pool
        self.gid, self.ids = gid, ids
        first = max((members[i] for i in ids), key=lambda m: len(m.head.hidden))  # the deepest (gated groups)
        self.structure, self.optimizer = _program_structure(first.head), first.optimizer
        # The cached features each pooling reads ("none": pooled vectors; the others: maps), for the members' own
        # shapes (unpadding, parameter counts).
        self.feature_shapes = {m.head.pooling: tuple(_features(splits["train"], m.head, "train").shape[1:])
                               for m in (members[i] for i in ids)}
        # One input array per pooling in the group (conv heads pool inside the program: their one "pooling" is
        # the map itself); every member reads the array of its own pooling.
        self.sources = tuple(dict.fromkeys(members[i].head.pooling for i in ids))
        by_source = {members[i].head.pooling: members[i].head for i in ids}
        self.x = {k: _stack([_program_input(s, by_source[p], k) for p in self.sources]) for k, s in splits.items()}
        self.abstract = isinstance(self.x["train"], jax.ShapeDtypeStruct)
        self.n_train = n_train = len(splits["train"])
        self.batch = min(first.batch_size, n_train)
        self.mesh = mesh if mesh is not None else parallel.sweep_mesh(len(ids), self.batch)
        if self.batch % self.mesh.shape[parallel.DATA]:
            raise ValueError(f"batch size {self.batch} does not split over the mesh's data axis "
                             f"({self.mesh.shape[parallel.DATA]} devices)")
        self.m_pad = parallel.padded_members(len(ids), self.mesh)
        specs = [members[i] for i in ids] + [members[ids[0]]] * (self.m_pad - len(ids))
        self.specs = specs
        depths = [len(s.head.hidden) for s in specs]
        # Gated: several depths share the group; every layer takes the widest width so that a gated layer can
        # pass its input through unchanged, and a member's missing layers have true width 0.
        self.gated = len(set(depths)) > 1
        true_hidden = np.zeros((len(specs), max(depths)), np.int32)
        for r, s in enumerate(specs):
            true_hidden[r, :len(s.head.hidden)] = s.head.hidden
        self.padded = ((int(true_hidden.max()),) * max(depths) if self.gated
                       else tuple(int(w) for w in true_hidden.max(axis=0)))
        self.depths = depths[:len(ids)]
        init_args = (np.asarray([sp.seed for sp in specs], np.uint32), true_hidden, np.asarray(depths, np.int32),
                     np.asarray([sp.learning_rate for sp in specs], np.float32),
                     np.asarray([sp.weight_decay for sp in specs], np.float32))
        # Traced here once; compiled and run in the background while this thread compiles the epoch program
        # from the traced shapes (``compile_epoch``); ``wait_init`` collects the result.
        traced = _group_init(self.structure, tuple(self.x["train"].shape[2:]), self.padded, self.optimizer,
                             self.gated).trace(*init_args)
        compiled = (lambda: traced.lower().compile()) if self.abstract else (
            lambda: traced.lower().compile()(*init_args))
        self._init: concurrent.futures.Future | None = pool.submit(compiled)
        abstract_variables, abstract_opt_state, abstract_keys = traced.out_info
        self._host_consts = MemberConsts(
            dropout=np.asarray([s.head.dropout for s in specs], np.float32),
            input_dropout=np.asarray([s.head.input_dropout for s in specs], np.float32),
            keys=abstract_keys,  # the init program's output: filled in by wait_init
            masks=tuple(np.stack([(np.arange(p) < true_hidden[r, i]).astype(np.float32) for r in range(len(specs))])
                        for i, p in enumerate(self.padded)),
            depth=np.asarray(depths, np.int32),
            source=np.asarray([self.sources.index(s.head.pooling) for s in specs], np.int32))
        self.msh = msh = parallel.member_sharding(self.mesh)
        shaped = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=msh),  # noqa: E731
                                           tree)
        self.abstract_state = shaped(GroupState(abstract_variables, abstract_opt_state,
                                                jax.ShapeDtypeStruct((self.m_pad,), np.dtype(bool))))
        self.abstract_consts = shaped(self._host_consts)
        rep = parallel.replicated(self.mesh)
        # Evaluation splits are padded to one length (padding rows masked out of the metrics): one compile.
        self.n_eval = {k: len(s) for k, s in splits.items() if k != "train"}
        rows = max(self.n_eval.values())
        self.dev_x = {k: _put(v if k == "train" else _pad_rows(v, rows, axis=1), rep) for k, v in self.x.items()}
        self.dev_y = {k: _put(s.labels if k == "train" else _pad_rows(s.labels, rows, axis=0), rep)
                      for k, s in splits.items()}
        self.dev_mask = {k: _put(np.arange(rows) < n, rep) for k, n in self.n_eval.items()}
        self.active = np.arange(self.m_pad) < len(ids)
        self.idx_sharding = NamedSharding(self.mesh, P(None, parallel.DATA))
        local = self.m_pad // self.mesh.shape[parallel.MEMBERS]
        cap = max(1, int(sweep.member_memory_mb * 2**20 // max(1, _member_bytes(
            first.head, self.feature_shapes[first.head.pooling], self.batch // self.mesh.shape[parallel.DATA],
            self.padded))))
        self.local_members, self.cap = local, cap
        self.timings = {"init_s": time.perf_counter() - t0, "compile_s": 0.0, "probe_s": 0.0, "train_s": 0.0,
                        "eval_s": 0.0}
        self.probe: dict[str, float] | None = None
        self.slots_per_epoch: list[int] = []
        self.map_batch: int | str = "vmap"

    def describe(self, epochs: int) -> dict[str, Any]:
        """The group's entry in ``SweepResult.groups`` (schema in the module docstring)."""
        return {"group": self.gid, "structure": self.structure.to_dict(), "poolings": list(self.sources),
                "optimizer": self.optimizer, "batch_size": self.batch, "members": self.ids,
                "padded_members": self.m_pad, "padded_hidden": list(self.padded),
                "gated_depths": self.depths if self.gated else None,
                "mesh": {k: int(v) for k, v in self.mesh.shape.items()}, "map_batch": self.map_batch,
                "map_batch_probe": self.probe, "steps_per_epoch": self.n_train // self.batch, "epochs": epochs,
                "slots_per_epoch": self.slots_per_epoch, "timings": self.timings}

    def wait_init(self) -> None:
        """Place the background init program's result on the mesh (state, constants, the kept-best copy)."""
        if self._init is None:
            return
        result, self._init = self._init.result(), None
        if self.abstract:  # only compiled
            return
        variables, opt_state, keys = result
        self.state = jax.device_put(GroupState(variables, opt_state, np.zeros(self.m_pad, bool)), self.msh)
        self.consts = jax.device_put(self._host_consts._replace(keys=keys), self.msh)
        self.best = _copy_tree(self.state.variables)

    def program(self, map_batch: int | str, task: str) -> tuple[Callable, Callable]:
        return _programs(_Program(self.structure, self.optimizer, self.batch, self.mesh, map_batch, self.gated,
                                  dropout=any(s.head.dropout for s in self.specs),
                                  input_dropout=any(s.head.input_dropout for s in self.specs), task=task))

    def compile_epoch(self, epoch_fn: Callable) -> None:
        """Compile the epoch program from the traced shapes (no need to wait for the init program)."""
        idx = jax.ShapeDtypeStruct((self.n_train // self.batch, self.batch), np.dtype(np.int32),
                                   sharding=self.idx_sharding)
        member_flags = self.abstract_state.diverged  # (M,) bool on the members' sharding, like `active`
        epoch_fn.lower(self.abstract_state, self.abstract_consts, member_flags, self.dev_x["train"],
                       self.dev_y["train"], idx, jnp.asarray(0, jnp.int32)).compile()

    def compile_evaluation(self, evaluate: Callable) -> concurrent.futures.Future:
        """Compile the evaluation, keep-best and copy programs in the background (they wait for the first epoch)."""
        variables, improved = self.abstract_state.variables, self.abstract_state.diverged  # (M,) bool flags

        def compile_all() -> None:
            evaluate.lower(variables, self.abstract_consts, self.dev_x["val"], self.dev_y["val"],
                           self.dev_mask["val"]).compile()
            _keep_best.lower(variables, variables, improved).compile()
            _copy_tree.lower(variables).compile()

        return self.pool.submit(compile_all)

    def compile(self, task: str) -> tuple[Callable, Callable, concurrent.futures.Future]:
        """Compile the group's programs for its chosen ``map_batch``: the epoch on this thread while init runs and
        the evaluation programs compile in the pool; returns (epoch_fn, evaluate, the evaluation compile's future).
        Waits for the init program (a real group's state is then on the mesh)."""
        epoch_fn, evaluate = self.program(self.map_batch, task)
        evaluation_compiled = self.compile_evaluation(evaluate)
        self.compile_epoch(epoch_fn)
        self.wait_init()
        return epoch_fn, evaluate, evaluation_compiled

    def epoch_args(self, idx: np.ndarray, step0: int) -> tuple:
        return (self.state, self.consts, jax.device_put(self.active, self.msh),
                self.dev_x["train"], self.dev_y["train"], jax.device_put(idx, self.idx_sharding),
                jnp.asarray(step0, jnp.int32))

    def choose_map_batch(self, setting: str | int, rng: np.random.Generator) -> None:
        """Fix how members are batched on a device. ``auto``: all local members in one ``vmap`` when their
        activations fit ``member_memory_mb``, else ``lax.map`` in chunks of as many as fit; on a CPU, members of at
        least ``CPU_MEMBER_MAJOR_PARAMS`` parameters run one after another (``lax.map``, k=1). No timing: timing
        candidates costs several compiles (5-28 s per group here, see experiments/bench_sweep.py). ``probe``: the
        fastest of a few candidates timed on two steps of real data (worth it only for long sweeps). An int is
        capped by the memory bound too."""
        if setting == "auto":
            self.map_batch = "vmap" if self.local_members <= self.cap else self.cap
            params = H.param_count(self.structure.replace(hidden=self.padded), self.x["train"].shape[2:])
            if self.mesh.devices.flat[0].platform == "cpu" and params >= CPU_MEMBER_MAJOR_PARAMS:
                self.map_batch = 1
            return
        if setting != "probe":
            self.map_batch = setting if setting == "vmap" else min(int(setting), self.cap)
            return
        self.wait_init()
        cands = _candidates(self.local_members, self.cap)
        if len(cands) == 1:
            self.map_batch = cands[0]
            return
        t0 = time.perf_counter()
        idx = _shuffled_batches(rng, self.n_train, self.batch)[:2]
        self.probe = {}
        for k in cands:
            epoch_fn, _ = self.program(k, "multiclass")
            self.probe[str(k)] = _time_epoch(epoch_fn, self.epoch_args(idx, 0)) / len(idx)
        fastest = min(cands, key=lambda k: self.probe[str(k)])
        # Timings on a shared machine are noisy: keep vmap (no per-chunk loop) unless beaten by more than 10%.
        self.map_batch = "vmap" if "vmap" in cands and self.probe["vmap"] <= 1.1 * self.probe[str(fastest)] \
            else fastest
        self.timings["probe_s"] = time.perf_counter() - t0


def run_sweep(
    sweep: SweepSpec,
    splits: Mapping[str, FeatureSplit],
    *,
    num_classes: int,
    task: str = "multiclass",
    mesh: Mesh | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    label_names: Sequence[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> SweepResult:
    """Train every member of ``sweep`` on ``splits["train"]``, select on ``splits["val"]``, report on
    ``splits["test"]`` (optional), and rank. ``mesh`` defaults to a per-group ``parallel.sweep_mesh`` over all
    devices; pass ``Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("members", "data"))`` for one device.
    ``progress`` is called with a small dict after every epoch of every group.

    ``checkpoint_dir`` (single-process runs): each finished group's records and variables are saved there, and a
    re-run of the same sweep on the same features loads them instead of training the group again, so a killed
    sweep resumes at its first unfinished group and ends with the same result (timings aside). The directory is
    removed when the sweep completes."""
    t_start = time.perf_counter()
    if "train" not in splits or "val" not in splits:
        raise ValueError(f"run_sweep: splits need 'train' and 'val', got {sorted(splits)}")
    members = sweep.expand(num_classes, task)
    if not members:
        raise ValueError("run_sweep: the sweep has no members")
    _check_inputs(members, splits)
    metric = "accuracy" if task == "multiclass" else "macro_average_precision"
    records: list[dict[str, Any] | None] = [None] * len(members)
    variables: list[Any] = [None] * len(members)
    groups_json = []
    store = _GroupStore(checkpoint_dir, sweep, splits, num_classes, task, label_names)
    # The ridge baseline is independent of the heads: on one process it is computed (mostly compiled: XLA
    # compiles on one core) in a thread while the groups train; across processes it runs after them.
    ridge_job = _Deferred(_timed_ridge_rows, sweep, splits, num_classes, metric,
                          background=jax.process_count() == 1)
    shapes = _feature_shapes(splits["train"])
    # Compiles (and each group's init) run on this pool while the main thread compiles the epoch program.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="jaxheads-compile") as pool:
        for gid, ids in enumerate(_group_members(members, shapes, sweep.depth_grouping)):
            if store.restore(gid, ids, records, variables, groups_json):
                continue
            g = _Group(gid, ids, members, splits, sweep, mesh, pool)
            _train_group(g, sweep, splits, metric, task, records, variables, members, progress)
            groups_json.append(g.describe(sweep.epochs))
            store.save(gid, ids, records, variables, groups_json[-1])
            del g
    ridge, ridge_s = ridge_job.result()
    board, rec = leaderboard(records, metric)
    store.clear()
    return SweepResult(task=task, num_classes=num_classes, metric=metric, sweep=sweep, members=records,
                       leaderboard=board, recommended=rec, ridge=ridge, groups=groups_json,
                       timings={"total_s": time.perf_counter() - t_start, "ridge_s": ridge_s},
                       feature_shapes={k: None if v is None else list(v) for k, v in shapes.items()},
                       label_names=list(label_names) if label_names else None,
                       variables=variables)


def abstract_splits(sizes: Mapping[str, int], *, pooled: Sequence[int] | None = None,
                    maps: Sequence[int] | None = None, label_shape: Sequence[int] = (),
                    label_dtype: Any = np.int32) -> dict[str, FeatureSplit]:
    """The shapes of the features a sweep will get, as :class:`FeatureSplit`s of ``jax.ShapeDtypeStruct``:
    ``sizes`` examples per split, pooled (C,) and/or map (H, W, C) feature shapes, and per-example label shape
    (``()`` multiclass, ``(K,)`` multilabel). What :func:`compile_sweep` takes."""

    def one(n: int) -> FeatureSplit:
        sds = lambda shape, dtype: None if shape is None else jax.ShapeDtypeStruct((n, *shape), dtype)  # noqa: E731
        return FeatureSplit(labels=sds(tuple(label_shape), label_dtype), pooled=sds(pooled, np.float32),
                            maps=sds(maps, np.float32))

    return {name: one(n) for name, n in sizes.items()}


def compile_sweep(sweep: SweepSpec, splits: Mapping[str, FeatureSplit], *, num_classes: int,
                  task: str = "multiclass", mesh: Mesh | None = None) -> dict[str, Any]:
    """Compile every group program :func:`run_sweep` will run, from the features' shapes alone (``splits`` from
    :func:`abstract_splits`), so that they compile while the features are still being computed: the later
    ``run_sweep`` on features of these shapes finds them compiled. Features of other shapes (e.g. unreadable
    images left out) only make this wasted work. Returns what was compiled and how long it took.

    Not for ``map_batch="probe"`` (it times candidates on real data): such a sweep compiles nothing here."""
    t0 = time.perf_counter()
    members = sweep.expand(num_classes, task)
    _check_inputs(members, splits)
    shapes = _feature_shapes(splits["train"])
    groups, ridge = [], None
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="jaxheads-compile") as pool:
        if sweep.ridge_l2 != () and (shapes["pooled"] or shapes["maps"]):
            from jaxheads import probe

            grid = len(probe.DEFAULT_L2_GRID if sweep.ridge_l2 is None else sweep.ridge_l2)
            ridge = pool.submit(probe.compile_ridge_probe, splits["train"], splits["val"], splits.get("test"),
                                grid_size=grid, num_classes=num_classes)
        if sweep.map_batch != "probe":
            for gid, ids in enumerate(_group_members(members, shapes, sweep.depth_grouping)):
                g = _Group(gid, ids, members, splits, sweep, mesh, pool)
                g.choose_map_batch(sweep.map_batch, np.random.default_rng(0))
                g.compile(task)[2].result()
                groups.append({"group": gid, "members": len(ids), "map_batch": g.map_batch})
        if ridge is not None:
            ridge.result()
    return {"groups": groups, "compile_s": time.perf_counter() - t0}


def _feature_shapes(split: FeatureSplit) -> dict[str, tuple[int, ...] | None]:
    """Per-example shapes of a split's cached features: {"pooled": (C,) or None, "maps": (H, W, C) or None}."""
    return {k: None if a is None else tuple(a.shape[1:]) for k, a in (("pooled", split.pooled), ("maps", split.maps))}


def _check_inputs(members: Sequence[MemberSpec], splits: Mapping[str, FeatureSplit]) -> None:
    """Every member's head fits the features of every split (an error naming the field otherwise)."""
    for m in members:
        for name, split in splits.items():
            H.check_input(m.head, _features(split, m.head, name).shape[1:])


class _GroupStore:
    """Finished groups on disk (through :mod:`jaxheads.checkpoint`): ``<dir>/group-NNNN`` holds the group's
    members' unpadded variables, and its meta the members' records, the group's JSON entry and the run key (a
    hash of the sweep, the task and every feature array), so a checkpoint of another sweep or other features is
    never read. Inactive without a directory, and in multi-process runs (every process would have to agree)."""

    def __init__(self, root: str | os.PathLike[str] | None, sweep: SweepSpec, splits: Mapping[str, FeatureSplit],
                 num_classes: int, task: str, label_names: Sequence[str] | None):
        self.root = Path(root) if root is not None and jax.process_count() == 1 else None
        self.key = self._run_key(sweep, splits, num_classes, task, label_names) if self.root else ""

    @staticmethod
    def _run_key(sweep: SweepSpec, splits: Mapping[str, FeatureSplit], num_classes: int, task: str,
                 label_names: Sequence[str] | None) -> str:
        h = hashlib.sha256(json.dumps([sweep.to_dict(), num_classes, task, list(label_names or []),
                                       jax.device_count()], sort_keys=True).encode())
        for name in sorted(splits):
            for field in ("labels", "pooled", "maps"):
                array = getattr(splits[name], field)
                if array is not None:
                    h.update(f"{name}/{field}{np.shape(array)}{np.asarray(array).dtype}".encode())
                    for start in range(0, len(array), 4096):  # in slices: maps may be large and memory-mapped
                        h.update(np.ascontiguousarray(array[start:start + 4096]).tobytes())
        return h.hexdigest()[:24]

    def _path(self, gid: int) -> Path:
        assert self.root is not None
        return self.root / f"group-{gid:04d}"

    def save(self, gid: int, ids: Sequence[int], records: list, variables: list, group_json: dict) -> None:
        if self.root is None:
            return
        from jaxheads import checkpoint

        meta = {"run": self.key, "group": group_json, "records": [records[i] for i in ids]}
        checkpoint.save(self._path(gid), {"variables": [variables[i] for i in ids]}, meta)

    def restore(self, gid: int, ids: Sequence[int], records: list, variables: list, groups_json: list) -> bool:
        """Fill in group ``gid`` from its checkpoint; False when there is none for this run."""
        if self.root is None:
            return False
        from jaxheads import checkpoint

        if not checkpoint.exists(self._path(gid)):
            return False
        tree, meta = checkpoint.load(self._path(gid))
        if meta.get("run") != self.key or len(meta["records"]) != len(ids):
            return False
        for i, record, member_vars in zip(ids, meta["records"], tree["variables"], strict=True):
            records[i], variables[i] = record, member_vars
        groups_json.append(meta["group"])
        return True

    def clear(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def _evaluate(g: _Group, split: str, evaluate: Callable, variables: Any) -> tuple[dict, Array]:
    """Per-member metrics of ``split`` as host arrays (gathered across processes), and the device logits (padded
    to the longest evaluation split: the first ``g.n_eval[split]`` rows are real)."""
    metrics, logits = evaluate(variables, g.consts, g.dev_x[split], g.dev_y[split], g.dev_mask[split])
    return jax.tree.map(parallel.to_host, metrics), logits


class _Book:
    """Host-side bookkeeping of a group's members (indexed by member position j, not by device slot)."""

    def __init__(self, n: int):
        self.best = np.full(n, -np.inf)
        self.best_epoch = np.zeros(n, int)
        self.epochs_run = np.zeros(n, int)
        self.since = np.zeros(n, int)
        self.active = np.ones(n, bool)
        self.stopped = ["completed"] * n
        self.curves: list[dict[str, Any]] = [{"train_loss": [], "val": {}} for _ in range(n)]
        self.best_val: list[dict[str, np.ndarray] | None] = [None] * n  # val metrics at best_epoch

    def stop(self, js: np.ndarray, why: str) -> None:
        for j in js:
            self.stopped[j] = why
        self.active[js] = False


@jax.jit
def _gather_members(tree: Any, sel: Array) -> Any:
    return jax.tree.map(lambda a: a[sel], tree)


def _compact(g: _Group, slots: np.ndarray, book: _Book) -> np.ndarray:
    """Drop the slots of members that stopped (halving, early stopping, divergence) so the remaining epochs
    compute only the live ones: gather the live slots (padded with inactive copies to the mesh) into smaller
    arrays. Returns the new slot → member map. The group program retraces for the new member count."""
    live = np.flatnonzero((slots >= 0) & book.active[np.maximum(slots, 0)])
    m_new = parallel.padded_members(len(live), g.mesh)
    if len(live) == 0 or m_new >= g.m_pad:
        return slots
    sel = np.concatenate([live, np.full(m_new - len(live), live[0])])
    take = lambda tree: jax.device_put(_gather_members(tree, jnp.asarray(sel)), g.msh)  # noqa: E731
    g.state, g.consts, g.best = take(g.state), take(g.consts), take(g.best)
    g.m_pad = m_new
    g.local_members = m_new // g.mesh.shape[parallel.MEMBERS]
    new_slots = slots[sel].copy()
    new_slots[len(live):] = -1
    return new_slots


def _finalize(g: _Group, evaluate: Callable, slots: np.ndarray, which: np.ndarray, book: _Book,
              splits: Mapping[str, FeatureSplit], task: str, records: list, variables_out: list,
              members: Sequence[MemberSpec]) -> None:
    """Final val/test metrics (kept best-epoch weights) and unpadded variables of the members in slots ``which``.
    Val metrics are those recorded at each member's best epoch (the same weights and program); val is evaluated
    again only for multilabel thresholds or a member that never improved on its initial weights."""
    if len(which) == 0:
        return
    t = time.perf_counter()
    val = val_logits = None
    if task == "multilabel" or any(book.best_val[slots[s]] is None for s in which):
        val, val_logits = _evaluate(g, "val", evaluate, g.best)
    test, test_logits = (_evaluate(g, "test", evaluate, g.best) if "test" in splits else (None, None))
    n_val, n_test = g.n_eval["val"], g.n_eval.get("test", 0)
    if task == "multilabel":  # thresholds are tuned per member on the host's copy of its scores
        val_logits = parallel.to_host(val_logits)[:, :n_val]
        test_logits = None if test_logits is None else parallel.to_host(test_logits)[:, :n_test]
    host_best = jax.tree.map(parallel.to_host, g.best)
    g.timings["eval_s"] += time.perf_counter() - t
    for slot in which:
        j = int(slots[slot])
        i = g.ids[j]
        spec = members[i]
        recorded = book.best_val[j]
        v_scalars, v_per = _split_scalars(recorded if val is None else {k: v[slot] for k, v in val.items()})
        t_scalars, t_per = (_split_scalars({k: v[slot] for k, v in test.items()}) if test is not None
                            else (None, None))
        thresholds = None
        if task == "multilabel":
            thr, f1v, f1t = _thresholded(jax.nn.sigmoid(val_logits[slot]), g.dev_y["val"][:n_val],
                                         None if test is None else jax.nn.sigmoid(test_logits[slot]),
                                         None if test is None else g.dev_y["test"][:n_test])
            thresholds = [float(a) for a in np.asarray(thr)]
            v_scalars["macro_f1"], v_per["f1"] = float(f1v["macro_f1"]), [float(a) for a in np.asarray(f1v["f1"])]
            if f1t is not None:
                t_scalars["macro_f1"] = float(f1t["macro_f1"])
                t_per["f1"] = [float(a) for a in np.asarray(f1t["f1"])]
        member_vars = jax.tree.map(lambda a: a[slot], host_best)
        member_vars = dict(member_vars, params=jax.tree.map(np.asarray, swap_first_kernel(member_vars["params"],
                                                                                      g.structure)))
        shape = g.feature_shapes[spec.head.pooling]
        variables_out[i] = H.unpad_variables(member_vars, spec.head, shape)
        records[i] = {
            "member": i, "config": spec.config_id(), "group": g.gid, "spec": spec.to_dict(),
            "params": H.param_count(spec.head, shape), "epochs_run": int(book.epochs_run[j]),
            "best_epoch": int(book.best_epoch[j]), "diverged": book.stopped[j] == "diverged",
            "stopped": book.stopped[j], "curves": book.curves[j], "val": v_scalars, "test": t_scalars,
            "per_class": {"val": v_per if task == "multilabel" else {},
                          "test": (t_per if task == "multilabel" else {}) if test is not None else None},
            "thresholds": thresholds}


def _train_group(g: _Group, sweep: SweepSpec, splits: Mapping[str, FeatureSplit], metric: str, task: str,
                 records: list, variables_out: list, members: Sequence[MemberSpec],
                 progress: Callable | None) -> None:
    """Epoch loop of one group: jitted epoch, val metrics, then on the host from (M,) arrays: the NaN guard's
    flags, early stopping, successive halving, and compaction of the device arrays to the live members."""
    rng = np.random.default_rng([sweep.data_seed, g.gid])
    g.choose_map_batch(sweep.map_batch, rng)
    # Each phase's timing is this thread's wall time (compile_s includes waiting for init).
    t = time.perf_counter()
    epoch_fn, evaluate, evaluation_compiled = g.compile(task)
    g.timings["compile_s"] += time.perf_counter() - t
    n_real, n = len(g.ids), g.n_train
    slots = np.where(np.arange(g.m_pad) < n_real, np.arange(g.m_pad), -1)  # device slot -> member position
    book = _Book(n_real)
    step0 = 0
    for epoch in range(1, sweep.epochs + 1):
        if not book.active.any():
            break
        real = slots >= 0
        js = np.maximum(slots, 0)
        g.active = real & book.active[js]
        was_active = g.active.copy()
        idx = _shuffled_batches(rng, n, g.batch)
        t = time.perf_counter()
        first = epoch == 1  # booked as compile_s: the benchmarks time epochs 2.. as training
        g.state, losses = epoch_fn(*g.epoch_args(idx, step0))
        g.slots_per_epoch.append(g.m_pad)
        losses = parallel.to_host(losses)
        g.timings["compile_s" if first else "train_s"] += time.perf_counter() - t
        step0 += len(idx)
        t = time.perf_counter()
        evaluation_compiled.result()
        val, _ = _evaluate(g, "val", evaluate, g.state.variables)
        g.timings["eval_s"] += time.perf_counter() - t
        score = np.nan_to_num(np.asarray(val[metric], np.float64), nan=-np.inf)
        diverged = parallel.to_host(g.state.diverged)
        improved = was_active & ~diverged & (score > book.best[js])
        for slot in np.flatnonzero(was_active):
            j = slots[slot]
            book.epochs_run[j] = epoch
            book.curves[j]["train_loss"].append(float(np.mean(losses[slot])))
            for k, v in val.items():
                if v[slot].ndim == 0:
                    book.curves[j]["val"].setdefault(k, []).append(float(v[slot]))
            if improved[slot]:
                book.best[j], book.best_epoch[j], book.since[j] = score[slot], epoch, 0
                book.best_val[j] = {k: v[slot] for k, v in val.items()}
            else:
                book.since[j] += 1
        g.best = _keep_best(g.best, g.state.variables, jax.device_put(improved, g.msh))
        book.stop(slots[was_active & diverged], "diverged")
        if sweep.patience is not None:
            book.stop(np.flatnonzero(book.active & (book.since >= sweep.patience)), "early_stopping")
        if sweep.halving_every and epoch % sweep.halving_every == 0 and epoch < sweep.epochs:
            alive = np.flatnonzero(book.active)
            drop = alive[np.argsort(book.best[alive], kind="stable")][: int(len(alive) * sweep.halving_fraction)]
            book.stop(drop, "halving")
        if progress is not None:
            progress({"group": g.gid, "epoch": epoch, "epochs": sweep.epochs, "active": int(book.active.sum()),
                      "best": float(np.max(book.best))})
        # Free the compute of stopped members once they hold at least half of the device slots.
        if book.active.any() and np.sum(real & ~book.active[js]) >= g.m_pad // 2:
            stopped = np.asarray([s for s in _unfinished(slots, g, records) if not book.active[slots[s]]], int)
            _finalize(g, evaluate, slots, stopped, book, splits, task, records, variables_out, members)
            slots = _compact(g, slots, book)
    _finalize(g, evaluate, slots, _unfinished(slots, g, records), book, splits, task, records, variables_out,
              members)


def _unfinished(slots: np.ndarray, g: _Group, records: list) -> np.ndarray:
    """Slots of real members without a final record yet."""
    return np.asarray([s for s, j in enumerate(slots) if j >= 0 and records[g.ids[j]] is None], int)


class _Deferred:
    """``fn(*args)`` run in a background thread (``background``) or on demand; :meth:`result` returns its value
    (re-raising its exception)."""

    def __init__(self, fn: Callable, *args: Any, background: bool):
        self._fn, self._args, self._pool = fn, args, None
        if background:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxheads-ridge")
            self._future = self._pool.submit(fn, *args)

    def result(self) -> Any:
        if self._pool is None:
            return self._fn(*self._args)
        try:
            return self._future.result()
        finally:
            self._pool.shutdown()


def _timed_ridge_rows(sweep: SweepSpec, splits: Mapping[str, FeatureSplit], num_classes: int,
                      metric: str) -> tuple[list[dict[str, Any]], float]:
    t = time.perf_counter()
    rows = _ridge_rows(sweep, splits, num_classes, metric)
    return rows, time.perf_counter() - t


def _ridge_rows(sweep: SweepSpec, splits: Mapping[str, FeatureSplit], num_classes: int,
                metric: str) -> list[dict[str, Any]]:
    """The closed-form baseline: ``jaxheads.probe.ridge_probe`` on pooled features, one row per L2 strength."""
    if sweep.ridge_l2 == () or splits["train"].pooled is None:
        return []
    from jaxheads import probe

    kwargs = {} if sweep.ridge_l2 is None else {"l2_grid": sweep.ridge_l2}
    out = probe.ridge_probe(splits["train"], splits["val"], splits.get("test"), num_classes=num_classes, **kwargs)
    rows = []
    for i, l2 in enumerate(out["l2_grid"]):
        pick = lambda path: {k: float(v[i]) for k, v in path.items()}  # noqa: E731
        rows.append({"l2": float(l2), "params": out["params"], "val": pick(out["val"]),
                     "test": pick(out["test"]) if "test" in out else None, "best": i == out["best"]["index"],
                     "select_metric": out["select_metric"]})
    return rows
