"""The jitted heart of the sweep: one group's optimiser, member step, epoch, evaluation and init programs.

A group is a set of members of one program structure. Its epoch is a ``shard_map`` over ``Mesh(("members",
"data"))``: members are sharded first, the batch takes the devices left over (gradients and batch-norm statistics
are summed over "data"). Inside a device, members run either all at once (``jax.vmap``) or in chunks of k that each
run a whole epoch before the next (``map_batch``), and every step is a ``lax.scan`` over index batches gathered from
the device-resident features. Learning rate, weight decay (``optax.inject_hyperparams``), dropout and seed are
per-member arrays; hidden widths are padded to the group's widest and masked, so a padded member computes exactly
what its standalone head computes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxheads import heads, metrics, parallel
from jaxheads.heads import HeadSpec

Array = jax.Array


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
class ProgramKey:
    """Static description of one compiled group program (hashable: its jitted functions are cached on it)."""

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
    per_member_batches: bool = False  # folds: every member gathers its own batches (its fold's training rows)


def _one_vmap(map_batch: int | str, members: int) -> bool:
    """Whether ``map_batch`` batches all ``members`` in one vmap (no chunking)."""
    return map_batch == "vmap" or map_batch >= members


def _map_members(f: Callable, xs: Any, map_batch: int | str) -> Any:
    """Apply ``f`` to every member of ``xs``: vmap, or lax.map with ``batch_size=map_batch`` (bounded memory)."""
    if _one_vmap(map_batch, jax.tree.leaves(xs)[0].shape[0]):
        return jax.vmap(f)(xs)
    return lax.map(f, xs, batch_size=int(map_batch))


def update_members(f: Callable, state: Any, rest: Any, map_batch: int | str) -> tuple[Any, Any]:
    """``f(state_i, rest_i) -> (new_state_i, out_i)`` for every member, as :func:`_map_members` batches them; with
    ``lax.map(batch_size=k)``-style chunks the stacked ``state`` is updated in place in a loop carry.

    Why not ``lax.map``: its stacked outputs made XLA copy the whole group's state several times per call (the
    count: experiments/README.md, "Figures moved out of code comments"). A ``fori_loop`` over chunks that slices
    the carry and writes each chunk back in place copies nothing
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
    transposes it at every step (its size: experiments/README.md, "Figures moved out of code comments")."""
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


def member_step(prog: ProgramKey, global_batch: int, xb: Array, yb: Array, step: Array, member: tuple) -> tuple:
    """One optimiser step of one member on its local slice of the batch (gradients summed over "data")."""
    spec, tx = prog.structure, make_optimizer(prog.optimizer)
    (variables, opt_state, diverged), consts, active = member
    rng = heads.fold(consts.keys, step)
    row_offset = lax.axis_index(parallel.DATA) * xb.shape[0]  # dropout masks follow global rows, not shards

    def loss_fn(params: Any) -> tuple[Array, Any]:
        variables_now = {"params": swap_first_kernel(params, spec), "batch_stats": variables["batch_stats"]}
        logits, stats = heads.forward(variables_now, xb, spec, train=True, rng=rng,
                                      dropout_rate=consts.dropout if prog.dropout else None,
                                      input_dropout_rate=consts.input_dropout if prog.input_dropout else None,
                                      masks=consts.masks, axis_name=parallel.DATA, row_offset=row_offset,
                                      depth=consts.depth if prog.gated else None)
        return jnp.sum(heads.example_losses(logits, yb, spec)) / global_batch, stats

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


def _local_epoch(prog: ProgramKey, state: GroupState, consts: MemberConsts, active: Array, x: Array, y: Array,
                 idx: Array, step0: Array) -> tuple[GroupState, Array]:
    """One device's share of an epoch, member-major: chunks of k of its members (:func:`update_members`), each
    chunk a vmapped ``lax.scan`` over the epoch's index batches (k = all members is ``vmap``, i.e. step-major).

    Members are independent for a whole epoch (early stopping and halving look at epoch ends), so a chunk of k
    members can run every step before the next chunk starts: its weights and optimiser state stay in cache for
    the epoch instead of the whole group's state streaming through memory at every step. Batches are gathered
    from the device-resident features inside the scan: ``idx`` is (steps, batch), the same for every member, or
    with ``per_member_batches`` (members, steps, batch), each member's own (its fold's training rows)."""
    data_shards = prog.mesh.shape[parallel.DATA]
    global_batch = idx.shape[-1] * data_shards
    steps = jnp.arange(idx.shape[-2], dtype=jnp.int32)

    def member_epoch(member_state: GroupState, member: tuple) -> tuple[GroupState, Array]:
        member_consts, member_active, member_idx = member

        def body(carry: GroupState, inp: tuple[Array, Array]) -> tuple[GroupState, Array]:
            s, ids = inp
            return member_step(prog, global_batch, member_input(x, member_consts)[ids], y[ids], step0 + s,
                                (carry, member_consts, member_active))

        return lax.scan(body, member_state, (steps, idx if member_idx is None else member_idx))

    member_idx = idx if prog.per_member_batches else None
    return update_members(member_epoch, state, (consts, active, member_idx), prog.map_batch)  # losses: (M, S)


def member_input(x: Array, consts: MemberConsts) -> Array:
    """The member's input array out of the group's stack ``x`` (S, N, ...). With one source every member reads
    the same array (kept unbatched under vmap: the first layer is then one product for all members)."""
    return x[0] if x.shape[0] == 1 else x[consts.source]


def local_predict(prog: ProgramKey, variables: Any, consts: MemberConsts, x: Array, rows: Array) -> Array:
    """Every member's logits on ``x`` or, with ``per_member_batches`` (folds), on its own ``rows`` of ``x``."""
    def one(member: tuple) -> Array:
        v, c, r = member
        v = dict(v, params=swap_first_kernel(v["params"], prog.structure))
        inputs = member_input(x, c)
        return heads.forward(v, inputs[r] if prog.per_member_batches else inputs, prog.structure, train=False,
                             masks=c.masks, depth=c.depth if prog.gated else None)[0]

    return _map_members(one, (variables, consts, rows), prog.map_batch)


def _local_evaluate(prog: ProgramKey, variables: Any, consts: MemberConsts, x: Array, y: Array, rows: Array,
                    mask: Array) -> tuple[dict[str, Array], Array]:
    """Per-member metrics and logits of one evaluation split. ``rows`` (members, R) are the rows each member is
    scored on when members have their own (folds: its own fold, so a member computes only those), else unused;
    ``mask`` (members, R or rows) is false on padding rows."""
    logits = local_predict(prog, variables, consts, x, rows)
    metric = functools.partial(member_metrics, prog.task)
    if prog.per_member_batches:
        return jax.vmap(metric)(logits, y[rows], mask), logits
    return jax.vmap(metric, in_axes=(0, None, 0))(logits, y, mask), logits


@functools.lru_cache(maxsize=64)
def compiled_programs(prog: ProgramKey) -> tuple[Callable, Callable]:
    """The jitted (train_epoch, evaluate) of a group, sharded over ``prog.mesh``; cached so that identical groups
    (and the sequential baseline in the benchmark) compile once. ``evaluate(variables, consts, x, y, rows, mask)``
    returns (metrics, logits) per member (see :func:`_local_evaluate`); val and test are padded to one length, so
    it compiles once."""
    mesh, m, d = prog.mesh, P(parallel.MEMBERS), parallel.DATA
    idx = P(parallel.MEMBERS, None, d) if prog.per_member_batches else P(None, d)
    epoch = jax.shard_map(functools.partial(_local_epoch, prog), mesh=mesh,
                          in_specs=(m, m, m, P(), P(), idx, P()), out_specs=(m, m), check_vma=False)
    evaluate = jax.shard_map(functools.partial(_local_evaluate, prog), mesh=mesh,
                             in_specs=(m, m, P(), P(), m, m), out_specs=(m, m), check_vma=False)
    return jax.jit(epoch, donate_argnums=(0,)), jax.jit(evaluate)


@jax.jit
def copy_tree(tree: Any) -> Any:
    """A copy of every leaf in one program (the epoch donates the state, the kept-best weights must not alias it)."""
    return jax.tree.map(jnp.copy, tree)


@jax.jit
def keep_best(best: Any, current: Any, improved: Array) -> Any:
    return jax.tree.map(lambda b, c: jnp.where(improved.reshape((-1,) + (1,) * (c.ndim - 1)), c, b), best, current)


def member_metrics(task: str, logits: Array, labels: Array, mask: Array) -> dict[str, Array]:
    """One member's metrics of (N, K) logits (the shared jaxheads.metrics functions) and its unsmoothed loss, over
    the rows where ``mask`` is true."""
    valid = mask.astype(logits.dtype)
    if task == "multiclass":
        out = metrics.multiclass_metrics(logits, labels, mask)
        out["balanced_accuracy"] = metrics.balanced_accuracy(logits, labels, mask)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], 1)[:, 0]
        out["loss"] = jnp.sum(nll * valid) / jnp.sum(valid)
        return out
    out = metrics.multilabel_metrics(jax.nn.sigmoid(logits), labels, mask)
    y = labels.astype(logits.dtype)
    bce = -(y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits))
    out["loss"] = jnp.sum(bce * valid[:, None]) / (jnp.sum(valid) * logits.shape[1])
    return out


@functools.lru_cache(maxsize=64)
def group_init_program(structure: HeadSpec, feature_shape: tuple[int, ...], padded: tuple[int, ...],
                       optimizer: str, gated: bool = False) -> Callable:
    """One jitted program that initialises a whole group under vmap: each member is its standalone head (true
    widths and fan-in, see ``init_head(true_hidden=...)``) zero-padded to the group's widths (and, ``gated``, its
    depth: extra layers all zero, see ``init_head(true_depth=...)``), plus the optimiser state with per-member
    hyper-parameters and the members' dropout keys."""
    spec = structure.replace(hidden=padded)

    def one(seed: Array, true_hidden: Array, depth: Array, lr: Array, wd: Array) -> tuple[Any, Any, Array]:
        words = jnp.stack([seed, jnp.uint32(0)])  # == heads.seed_words(seed)
        variables = heads.init_head(heads.fold(words, 0), spec, feature_shape, true_hidden=true_hidden,
                                    true_depth=depth if gated else None)
        variables = dict(variables, params=swap_first_kernel(variables["params"], structure))
        opt_state = make_optimizer(optimizer, lr, wd).init(variables["params"])
        return variables, opt_state, heads.fold(words, 1)

    return jax.jit(jax.vmap(one))

