"""A head as a pure function of its spec: init, forward (pool, conv stage, dense stack), losses and sizes."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxheads.heads.rng import fold, hash_uniform, seed_words, truncated_normal
from jaxheads.heads.spec import (ACTIVATIONS, NORMS, POOLINGS, TASKS, ConvStage, HeadSpec, check_input,
                                flops_per_example, from_known_fields, pooled_dim)

__all__ = [
    "ACTIVATIONS", "BN_MOMENTUM", "NORMS", "NORM_EPS", "POOLINGS", "TASKS", "ConvStage", "HeadSpec", "Variables",
    "apply_head", "check_input", "dropout", "example_losses", "flops_per_example", "fold", "forward",
    "from_known_fields", "hash_uniform", "init_head", "param_count", "pool", "pooled_dim", "seed_words",
    "unpad_variables",
]

Array = jax.Array
Variables = dict[str, Any]

BN_MOMENTUM = 0.9
NORM_EPS = 1e-5


# ---- shapes of the variables -------------------------------------------------------------------------------------
def _variable_shapes(spec: HeadSpec, feature_shape: tuple[int, ...]) -> Any:
    """Shapes of ``init_head``'s variables: a function of the spec's layers alone (not its rates), traced once
    per distinct layout (a sweep asks for every member). A conv-free head's shapes depend on its input only through
    the pooled width, so every pooling of the same width shares one trace."""
    if not spec.conv:
        feature_shape, spec = (pooled_dim(spec, feature_shape),), spec.replace(pooling="none")
    return _traced_shapes(dataclasses.replace(spec, dropout=0.0, input_dropout=0.0, label_smoothing=0.0),
                          feature_shape)


@functools.lru_cache(maxsize=256)
def _traced_shapes(spec: HeadSpec, feature_shape: tuple[int, ...]) -> Any:
    return jax.eval_shape(lambda k: init_head(k, spec, feature_shape), jax.random.key(0))


def param_count(spec: HeadSpec, feature_shape: Sequence[int]) -> int:
    """Trainable parameters of ``spec`` on features of ``feature_shape`` (a function of the spec alone)."""
    shapes = _variable_shapes(spec, tuple(feature_shape))
    return int(sum(math.prod(s.shape) for s in jax.tree.leaves(shapes["params"])))


# ---- init ------------------------------------------------------------------------------------------------------
def _dense_init(words: Array, salt: Array | int, fan_in: int, fan_out: int, true_in: Array | int | None = None,
                true_out: Array | int | None = None) -> dict[str, Array]:
    """LeCun-normal kernel (variance 1/fan_in, truncated at 2σ as Flax does) and zero bias.

    Drawn at (fan_in, fan_out) with the scale of the true fan-in ``true_in`` (may be traced) and zero beyond
    ``true_in`` rows / ``true_out`` columns: a padded member's kernel holds the standalone kernel exactly."""
    true_in = fan_in if true_in is None else true_in
    true_out = fan_out if true_out is None else true_out
    std = lax.rsqrt(jnp.asarray(true_in, jnp.float32)) / 0.87962566103423978  # stddev of the ±2σ truncated normal
    keep = (jnp.arange(fan_in)[:, None] < true_in) & (jnp.arange(fan_out)[None, :] < true_out)
    kernel = jnp.where(keep, truncated_normal(words, salt, (fan_in, fan_out)) * std, 0.0)
    return {"kernel": kernel.astype(jnp.float32), "bias": jnp.zeros((fan_out,), jnp.float32)}


def _init_convs(words: Array, salts: Any, spec: HeadSpec, channels: int) -> list[dict[str, Array]]:
    """The conv stages' kernels (k, k, in, out) and biases, drawing one salt of ``salts`` per stage."""
    convs = []
    for stage in spec.conv:
        fan_in = stage.kernel * stage.kernel * channels
        d = _dense_init(words, next(salts), fan_in, stage.features)
        convs.append({"kernel": d["kernel"].reshape(stage.kernel, stage.kernel, channels, stage.features),
                      "bias": d["bias"]})
        channels = stage.features
    return convs


def init_head(key: Array, spec: HeadSpec, feature_shape: Sequence[int], *,
              true_hidden: Array | Sequence[int] | None = None, true_depth: Array | int | None = None) -> Variables:
    """Fresh variables of a head: ``{"params": {...}, "batch_stats": {...}}``.

    ``key`` is a jax PRNG key (or raw key data / an int seed; see :func:`seed_words`).
    ``feature_shape`` is one example's shape: (C,) for ``pooling="none"``, else (H, W, C). Kernels are drawn with
    their true fan-in. ``true_hidden`` (the sweep's padded members; may be a traced (L,) array, so a group inits
    under one vmap) gives the member's real widths when ``spec.hidden`` holds the group's padded ones: the result
    is then the standalone head of those widths, zero-padded. ``true_depth`` (may be traced; the sweep's
    depth-gated groups) is the member's real depth when ``spec.hidden`` is the group's deeper stack: layers
    ``i >= true_depth`` must have ``true_hidden[i] == 0`` (all-zero parameters), and the output layer is drawn as
    the standalone depth-``true_depth`` head draws it (its salt and fan-in follow the true depth).
    """
    check_input(spec, feature_shape)
    true = spec.hidden if true_hidden is None else true_hidden
    words = seed_words(key)
    salts = iter(range(1, len(spec.conv) + len(spec.hidden) + 2))
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    if spec.conv:
        params["conv"] = _init_convs(words, salts, spec, feature_shape[-1])
    fan_in = pooled_dim(spec, feature_shape)
    true_in: Any = fan_in
    dense, norms, bn = [], [], []
    for i, width in enumerate(spec.hidden):
        layer = _dense_init(words, next(salts), fan_in, width, true_in, true[i])
        if spec.norm == "batch":
            # Batch norm subtracts any bias; kept, its ~0 gradient would be blown up to full steps by Adam and
            # make the running mean chase noise.
            del layer["bias"]
        dense.append(layer)
        ones = (jnp.arange(width) < true[i]).astype(jnp.float32)  # all ones unless padded
        if spec.norm != "none":
            norms.append({"scale": ones, "bias": jnp.zeros((width,), jnp.float32)})
        if spec.norm == "batch":
            bn.append({"mean": jnp.zeros((width,), jnp.float32), "var": ones})
        fan_in, true_in = width, true[i]
    params["hidden"] = dense
    if norms:
        params["norm"] = norms
    if bn:
        stats["norm"] = bn
    out_salt: Any = next(salts)
    if true_depth is not None:  # the standalone head's output salt and fan-in, not those of the padded stack
        depth = jnp.asarray(true_depth, jnp.int32)
        out_salt = len(spec.conv) + depth + 1
        true_in = jnp.where(depth > 0, jnp.asarray(true, jnp.int32)[jnp.maximum(depth - 1, 0)], pooled_dim(
            spec, feature_shape))
    params["out"] = _dense_init(words, out_salt, fan_in, spec.num_classes, true_in)
    return {"params": params, "batch_stats": stats}


def unpad_variables(variables: Variables, spec: HeadSpec, feature_shape: Sequence[int]) -> Variables:
    """Slice a member padded to its group's shapes (zeros at the end of each hidden-width axis) back to the shapes
    of ``spec``'s standalone head. A member of a depth-gated group carries more hidden layers than ``spec``: the
    gated (identity) ones are dropped, so the result holds only the true depth's layers."""
    shapes = _variable_shapes(spec, tuple(feature_shape))
    depth = len(spec.hidden)
    variables = {coll: {name: (list(v)[:depth] if name in ("hidden", "norm") else v) for name, v in tree.items()}
                 for coll, tree in variables.items()}
    return jax.tree.map(lambda x, s: x[tuple(slice(0, n) for n in s.shape)], variables, shapes)


# ---- forward ---------------------------------------------------------------------------------------------------
def dropout(x: Array, rate: Array | float, key: Array | None, *, salt: int = 0,
            row_offset: Array | int = 0) -> Array:
    """Inverted dropout on (N, D) ``x`` whose ``rate`` may be a traced array (per sweep member); rate 0 is an exact
    identity. The mask of entry (i, j) depends on (key, salt, row_offset + i, j) only (see :func:`hash_uniform`)."""
    if key is None:
        return x
    rate = jnp.asarray(rate, x.dtype)
    keep = hash_uniform(seed_words(key), salt, x.shape, row_offset) >= rate
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


def _activation(name: str, x: Array) -> Array:
    return {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu, "tanh": jnp.tanh}[name](x)


def pool(spec: HeadSpec, x: Array, xp: Any = jnp) -> Array:
    """The vector each example's dense layers see when ``spec`` has no conv stages: ``spec.pooling`` of an
    (N, H, W, C) map, or ``x`` unchanged for ``"none"``. ``xp=numpy`` pools on the host (no compilation)."""
    if spec.pooling == "none":
        return x
    if spec.pooling == "flatten":
        return x.reshape(x.shape[0], -1)
    avg, mx = xp.mean(x, axis=(1, 2)), xp.max(x, axis=(1, 2))
    return {"avg": avg, "max": mx, "avgmax": 0.5 * (avg + mx),
            "catavgmax": xp.concatenate([avg, mx], axis=-1)}[spec.pooling]


def _conv_stage(p: dict[str, Array], x: Array, stage: ConvStage, activation: str) -> Array:
    if stage.kernel == 1:  # a matrix product: XLA's CPU convolution is slower, and under vmap a grouped one
        y = jnp.einsum("nhwc,co->nhwo", x[:, ::stage.stride, ::stage.stride], p["kernel"][0, 0])
    else:
        y = lax.conv_general_dilated(x, p["kernel"], (stage.stride, stage.stride), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = _activation(activation, y + p["bias"][None, None, None, :])
    if stage.pool > 1:
        window = (1, stage.pool, stage.pool, 1)
        y = lax.reduce_window(y, -jnp.inf, lax.max, window, window, "VALID")
    return y


def _masked_moments(x: Array, mask: Array, axis: int, axis_name: str | None) -> tuple[Array, Array]:
    """Mean and (biased) variance of ``x`` over ``axis`` counting only entries where ``mask`` is 1."""
    count = jnp.sum(jnp.broadcast_to(mask, x.shape), axis=axis, keepdims=True)
    total = jnp.sum(x * mask, axis=axis, keepdims=True)
    if axis_name is not None:
        count, total = lax.psum(count, axis_name), lax.psum(total, axis_name)
    mean = total / jnp.maximum(count, 1.0)
    sq = jnp.sum(jnp.square((x - mean) * mask), axis=axis, keepdims=True)
    if axis_name is not None:
        sq = lax.psum(sq, axis_name)
    return mean, sq / jnp.maximum(count, 1.0)


def _normalise(h: Array, i: int, spec: HeadSpec, params: Any, stats: Any, mask: Array, *, train: bool,
               axis_name: str | None, depth: Array | int | None) -> tuple[Array, dict[str, Array] | None]:
    """Hidden layer ``i``'s normalisation (``spec.norm``) and its affine; returns ``h`` and, when training with
    batch norm, the layer's updated running statistics (left unchanged for a gated layer ``i >= depth``)."""
    updated = None
    if spec.norm == "layer":
        mean, var = _masked_moments(h, mask, axis=-1, axis_name=None)
        h = (h - mean) * lax.rsqrt(var + NORM_EPS)
    elif spec.norm == "batch":
        bn = stats["norm"][i]
        if train:
            rows = jnp.ones((h.shape[0], 1), h.dtype)
            mean, var = _masked_moments(h, rows, axis=0, axis_name=axis_name)
            updated = {"mean": BN_MOMENTUM * bn["mean"] + (1 - BN_MOMENTUM) * mean[0] * mask[0],
                       "var": BN_MOMENTUM * bn["var"] + (1 - BN_MOMENTUM) * var[0]}
            if depth is not None and i > 0:
                updated = jax.tree.map(lambda a, b: jnp.where(i < depth, a, b), updated, bn)
        else:
            mean, var = bn["mean"][None, :], bn["var"][None, :]
        h = (h - mean) * lax.rsqrt(var + NORM_EPS)
    if spec.norm != "none":
        h = h * params["norm"][i]["scale"][None, :] + params["norm"][i]["bias"][None, :]
    return h, updated


def forward(
    variables: Variables,
    x: Array,
    spec: HeadSpec,
    *,
    train: bool,
    rng: Array | None = None,
    dropout_rate: Array | float | None = None,
    input_dropout_rate: Array | float | None = None,
    masks: Sequence[Array] | None = None,
    axis_name: str | None = None,
    row_offset: Array | int = 0,
    depth: Array | int | None = None,
) -> tuple[Array, dict[str, Any]]:
    """Logits and the (possibly updated) batch statistics: the training path behind :func:`apply_head`.

    ``dropout_rate``/``input_dropout_rate`` override the spec's rates (the sweep passes per-member arrays);
    dropout only runs when ``train`` and ``rng`` is given. ``masks`` zero a padded member's extra units.
    ``axis_name`` names a mapped batch axis over which batch-norm statistics are reduced (data parallelism);
    ``row_offset`` is this shard's first row in the whole batch, so dropout masks do not depend on the sharding.
    ``depth`` (may be traced; a depth-gated sweep member, depth >= 1) makes hidden layers ``i >= depth`` an exact
    identity: their output (and batch-norm update) is selected away, so their parameters get exactly zero
    gradient. Every hidden layer must then have the same (padded) width.
    """
    params, stats = variables["params"], variables.get("batch_stats", {})
    p_drop = spec.dropout if dropout_rate is None else dropout_rate
    p_in = spec.input_dropout if input_dropout_rate is None else input_dropout_rate
    words = seed_words(rng) if (train and rng is not None) else None
    for p, stage in zip(params.get("conv", ()), spec.conv):
        x = _conv_stage(p, x, stage, spec.activation)
    h = pool(spec, x)
    if words is not None and (spec.input_dropout or input_dropout_rate is not None):
        h = dropout(h, p_in, words, salt=0, row_offset=row_offset)
    new_bn = []
    for i, layer in enumerate(params["hidden"]):
        h_in = h
        h = h @ layer["kernel"]
        if "bias" in layer:
            h = h + layer["bias"][None, :]
        mask = masks[i][None, :] if masks is not None else jnp.ones((1, h.shape[-1]), h.dtype)
        h, updated = _normalise(h, i, spec, params, stats, mask, train=train, axis_name=axis_name, depth=depth)
        if updated is not None:
            new_bn.append(updated)
        h = _activation(spec.activation, h) * mask
        if words is not None and (spec.dropout or dropout_rate is not None):
            h = dropout(h, p_drop, words, salt=i + 1, row_offset=row_offset)
        if depth is not None and i > 0:  # gated (depth >= 1): the identity branch passes h_in through bit for bit
            h = jnp.where(i < depth, h, h_in)
    logits = h @ params["out"]["kernel"] + params["out"]["bias"][None, :]
    new_stats = {"norm": new_bn} if (train and spec.norm == "batch") else stats
    return logits, new_stats


def apply_head(variables: Variables, x: Array, spec: HeadSpec, *, train: bool = False,
               rng: Array | None = None) -> Array:
    """Logits (N, num_classes) of a standalone head for features ``x`` of shape (N, *feature_shape). Pure."""
    return forward(variables, x, spec, train=train, rng=rng)[0]


# ---- losses ----------------------------------------------------------------------------------------------------
def example_losses(logits: Array, labels: Array, spec: HeadSpec) -> Array:
    """Per-example loss (N,): softmax cross-entropy (label smoothing, class weights) for multiclass, mean over
    classes of sigmoid binary cross-entropy (``pos_weight``, class weights) for multilabel."""
    k = spec.num_classes
    cw = jnp.asarray(spec.class_weights, jnp.float32) if spec.class_weights is not None else None
    if spec.task == "multiclass":
        onehot = jax.nn.one_hot(labels, k, dtype=logits.dtype)
        target = onehot * (1.0 - spec.label_smoothing) + spec.label_smoothing / k
        loss = -jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1)
        if cw is not None:
            loss = loss * jnp.sum(onehot * cw[None, :], axis=-1)
        return loss
    y = labels.astype(logits.dtype)
    pw = jnp.asarray(1.0 if spec.pos_weight is None else spec.pos_weight, jnp.float32)
    pw = jnp.broadcast_to(pw, (k,))[None, :]
    per = -(pw * y * jax.nn.log_sigmoid(logits) + (1.0 - y) * jax.nn.log_sigmoid(-logits))
    if cw is not None:
        per = per * cw[None, :]
    return jnp.mean(per, axis=-1)
