"""A group on the devices: its init program run in the background, its programs compiled, its ``map_batch`` chosen.

The init program (every member's padded head and optimiser state, under vmap) is traced on the calling thread and
compiled and run in a pool, while the calling thread compiles the epoch program from the traced shapes; the
evaluation programs compile in the pool too. Nothing here trains: :mod:`.loop` owns the training state.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from jaxheads import parallel

from . import plan as planning
from .inputs import GroupInputs, eval_selection
from .plan import GroupPlan
from .program import GroupState, MemberConsts, compiled_programs, copy_tree, group_init_program, keep_best

VIEW_STREAM = 0x5649  # salts the view draws' seed, apart from the batch order's


class LiveMembers(NamedTuple):
    """The training state of a group's device slots (member axis first on every array)."""

    state: GroupState
    consts: MemberConsts
    best: Any  # the kept best-epoch variables
    slots: np.ndarray  # device slot -> the member's position in the group (-1: padding)


class PendingInit(NamedTuple):
    """The init program, running; the abstract state and constants the other programs compile against."""

    future: concurrent.futures.Future
    plan: GroupPlan
    abstract_state: GroupState
    abstract_consts: MemberConsts
    sharding: NamedSharding  # the member axis over "members"
    abstract: bool  # compile only: there is no data


class Programs(NamedTuple):
    epoch: Callable  # (state, consts, active, x, y, idx, step0) -> (state, losses); donates the state
    evaluate: Callable  # (variables, consts, x, y, mask) -> (metrics, logits) per member
    evaluation_compiled: concurrent.futures.Future
    map_batch: int | str


def start_init(plan: GroupPlan, pool: concurrent.futures.Executor, abstract: bool) -> PendingInit:
    """Trace the group's init program here; compile (and, with data, run) it in ``pool``."""
    args = plan.init_args()
    traced = group_init_program(plan.structure, plan.input_shape, plan.padded, plan.optimizer, plan.gated).trace(*args)
    run = (lambda: traced.lower().compile()) if abstract else (lambda: traced.lower().compile()(*args))
    future = pool.submit(run)
    abstract_variables, abstract_opt_state, abstract_keys = traced.out_info
    sharding = parallel.member_sharding(plan.mesh)
    shaped = lambda tree: jax.tree.map(  # noqa: E731
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)
    state = GroupState(abstract_variables, abstract_opt_state, jax.ShapeDtypeStruct((plan.slots,), np.dtype(bool)))
    return PendingInit(future, plan, shaped(state), shaped(plan.host_consts(abstract_keys)), sharding, abstract)


def collect_init(pending: PendingInit) -> LiveMembers | None:
    """The init program's result placed on the mesh (None when compiling only)."""
    result = pending.future.result()
    if pending.abstract:
        return None
    variables, opt_state, keys = result
    plan = pending.plan
    state = jax.device_put(GroupState(variables, opt_state, np.zeros(plan.slots, bool)), pending.sharding)
    consts = jax.device_put(plan.host_consts(keys), pending.sharding)
    slots = np.where(np.arange(plan.slots) < len(plan.ids), np.arange(plan.slots), -1)
    return LiveMembers(state, consts, copy_tree(state.variables), slots)


def _compile_evaluation(pending: PendingInit, inputs: GroupInputs, evaluate: Callable,
                        pool: concurrent.futures.Executor) -> concurrent.futures.Future:
    """Compile the evaluation, keep-best and copy programs in ``pool`` (they wait for the first epoch)."""
    variables, improved = pending.abstract_state.variables, pending.abstract_state.diverged  # (M,) bool flags
    plan = pending.plan
    rows, mask = eval_selection(plan, inputs, "val", np.zeros(plan.slots, np.int64), abstract=True)

    def compile_all() -> None:
        evaluate.lower(variables, pending.abstract_consts, inputs.x["val"], inputs.y["val"], rows, mask).compile()
        keep_best.lower(variables, variables, improved).compile()
        copy_tree.lower(variables).compile()

    return pool.submit(compile_all)


def compile_programs(pending: PendingInit, inputs: GroupInputs, map_batch: int | str, task: str,
                     pool: concurrent.futures.Executor) -> Programs:
    """The group's programs for ``map_batch``: the epoch compiled on this thread from the traced shapes while the
    init program runs and the evaluation programs compile in ``pool``."""
    plan = pending.plan
    epoch, evaluate = compiled_programs(plan.program_key(map_batch, task))
    evaluation_compiled = _compile_evaluation(pending, inputs, evaluate, pool)
    shape = ((plan.slots,) if plan.per_member_batches else ()) + (plan.steps_per_epoch, plan.batch)
    idx = jax.ShapeDtypeStruct(shape, np.dtype(np.int32), sharding=inputs.idx_sharding)
    member_flags = pending.abstract_state.diverged  # (M,) bool on the members' sharding, like `active`
    epoch.lower(pending.abstract_state, pending.abstract_consts, member_flags, inputs.x["train"],
                inputs.y["train"], idx, jnp.asarray(0, jnp.int32)).compile()
    return Programs(epoch, evaluate, evaluation_compiled, map_batch)


def epoch_args(plan: GroupPlan, live: LiveMembers, inputs: GroupInputs, active: np.ndarray, idx: np.ndarray,
               step0: int) -> tuple:
    """The epoch program's arguments: ``active`` flags per slot, ``idx`` the epoch's batches from step ``step0``."""
    flags = jax.device_put(active, parallel.member_sharding(plan.mesh))
    return (live.state, live.consts, flags, inputs.x["train"], inputs.y["train"],
            jax.device_put(idx, inputs.idx_sharding), jnp.asarray(step0, jnp.int32))


def epoch_batches(plan: GroupPlan, inputs: GroupInputs, rngs: Sequence[np.random.Generator],
                  slots: np.ndarray, view_rng: np.random.Generator | None = None) -> np.ndarray:
    """One epoch's batch indices: (steps, batch) shared by every member, or with folds (slots, steps, batch), each
    slot drawing from its fold's training rows. Every fold shuffles with its own copy of the group's generator,
    so a fold member sees the batches a standalone sweep on that fold's rows would see. With augmented views
    each example of a batch reads a view drawn from ``view_rng`` (:func:`view_generator`); the shuffle is the
    one without views, and nothing is drawn when there is one view."""
    if inputs.train_rows is None:
        return _pick_views(shuffled_batches(rngs[0], plan.n_train, plan.batch), inputs, view_rng)
    steps, batch = plan.steps_per_epoch, plan.batch
    per_fold = [rows[rng.permutation(len(rows))[: steps * batch]].reshape(steps, batch)
                for rows, rng in zip(inputs.train_rows, rngs, strict=True)]
    idx = np.stack([per_fold[plan.specs[max(j, 0)].fold] for j in slots]).astype(np.int32)
    return _pick_views(idx, inputs, view_rng)


def view_generator(data_seed: int, gid: int, epoch: int) -> np.random.Generator:
    """The generator of an epoch's view draws: its own stream, so the batch order is the one without views."""
    return np.random.default_rng([data_seed, gid, epoch, VIEW_STREAM])


def _pick_views(idx: np.ndarray, inputs: GroupInputs, view_rng: np.random.Generator | None) -> np.ndarray:
    """Row ``i`` of a batch becomes row ``v * N + i`` of the view-major training input, ``v`` drawn per position
    (every slot shares the draw: with folds the rows at a position differ, so their views are still random)."""
    if inputs.views == 1 or view_rng is None:
        return idx
    view = view_rng.integers(0, inputs.views, idx.shape[-2:])
    return (idx + view * inputs.view_rows).astype(np.int32)


def shuffled_batches(rng: np.random.Generator, n: int, batch: int) -> np.ndarray:
    """(steps, batch) int32 indices of one shuffled epoch; the last partial batch is dropped (BN sees full
    batches; every example is seen within two epochs on average)."""
    batch = min(batch, n)
    steps = n // batch
    return rng.permutation(n)[: steps * batch].reshape(steps, batch).astype(np.int32)


def _time_epoch(epoch: Callable, args: tuple, repeats: int = 1) -> float:
    """Seconds per call after a warm-up (compile) call. The epoch donates its state, so every call gets a copy
    and the probe leaves the live state untouched."""
    best = math.inf
    for r in range(repeats + 1):
        fresh = (jax.tree.map(jnp.copy, args[0]),) + args[1:]
        jax.block_until_ready(fresh)
        t = time.perf_counter()
        jax.block_until_ready(epoch(*fresh))
        if r:
            best = min(best, time.perf_counter() - t)
    return best


def probe_map_batch(plan: GroupPlan, inputs: GroupInputs, live: LiveMembers,
                    rng: np.random.Generator) -> tuple[int | str, dict[str, float] | None]:
    """``map_batch="probe"``: the fastest candidate timed on two steps of real data, and the timings. Timings on
    a shared machine are noisy, so vmap (no per-chunk loop) is kept unless beaten by more than 10%."""
    candidates = planning.probe_candidates(plan)
    if len(candidates) == 1:
        return candidates[0], None
    slots = np.where(np.arange(plan.slots) < len(plan.ids), np.arange(plan.slots), -1)
    idx = epoch_batches(plan, inputs, [rng] * len(inputs.train_rows or [0]), slots)[..., :2, :]
    active = slots >= 0
    seconds = {}
    for k in candidates:
        epoch, _ = compiled_programs(plan.program_key(k, "multiclass"))  # the epoch does not depend on the task
        seconds[str(k)] = _time_epoch(epoch, epoch_args(plan, live, inputs, active, idx, 0)) / 2
    fastest = min(candidates, key=lambda k: seconds[str(k)])
    keep_vmap = "vmap" in candidates and seconds["vmap"] <= 1.1 * seconds[str(fastest)]
    return ("vmap" if keep_vmap else fastest), seconds
