"""A sweep group that streams its features from the cache instead of placing them on the devices.

When a group's inputs (every split, float32, on every device, as ``inputs.place_inputs`` lays them out) exceed the
device-memory budget, the group streams: its epoch is a host loop over chunks of steps. The host reads each chunk's
batches (steps_c, batch, ...) from the split (:mod:`.stream_read`: memory-mapped shards, pooled on the host for
conv-free heads), and puts chunk i+1 on the devices while chunk i trains (JAX dispatch is asynchronous; the host
waits on chunk i-1 before it reads chunk i+1, so at most two chunks are on a device). A jitted program runs the
member step of the in-memory epoch (``program.member_step``) over the given batches, with the same batch order,
the same step numbers (``step0 + s``) for the dropout keys and the same per-member logic, so its metrics equal the
in-memory sweep's. Evaluation streams too: chunks of rows -> logits, and the metrics of the logits put back in split
order (``program.member_metrics``).

The budget: ``run_sweep(device_memory_budget=...)`` bytes per device, ``jaxheads sweep --device-memory-budget
2GiB``; by default half of what the device reports it can hold (GPU/TPU ``memory_stats()["bytes_limit"]``), else
half of the host's available memory (``MemAvailable``: free plus reclaimable page cache) divided by the local
device count (a CPU's devices share it). Fixed splits only: with cross-validation folds a group that exceeds the
budget stops with an error naming the flags.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxheads import parallel
from jaxheads.features.split import FeatureSplit

from . import stream_read
from .group import PendingInit, Programs
from .inputs import GroupInputs, split_features
from .plan import GroupPlan
from .program import (GroupState, MemberConsts, ProgramKey, local_predict, member_input, member_metrics, member_step,
                      update_members)
from .spec import MemberSpec

log = logging.getLogger("jaxheads")

BUDGET_FLAG = "--device-memory-budget"
BUDGET_FRACTION = 0.5  # of the device's (or the host's per-device share of) memory: the rest is the heads' own
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """A size such as ``2GiB``, ``512MB``, ``1.5e9`` or ``1000000`` in bytes (a positive whole number)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if match is None or match[2] not in _UNITS or float(match[1]) * _UNITS[match[2]] < 1:
        raise ValueError(f"{BUDGET_FLAG}: expected a positive size such as 2GiB, 512MB or 1000000 (bytes), got "
                         f"{text!r}")
    return int(float(match[1]) * _UNITS[match[2]])


def default_budget(devices: Sequence[jax.Device] | None = None) -> int:
    """Bytes per device a group's inputs may take when no budget is given (module docstring)."""
    devices = list(devices or jax.local_devices())
    stats = devices[0].memory_stats() if hasattr(devices[0], "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(BUDGET_FRACTION * stats["bytes_limit"])
    return max(1, int(BUDGET_FRACTION * host_available_bytes() / len(devices)))


def host_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """What the host can still allocate: ``MemAvailable`` (free pages plus page cache the kernel can drop, so a
    cache just filled by the feature pass counts), else, without ``/proc/meminfo``, the free pages alone."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the kernel writes kB meaning KiB
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def resolve_budget(budget: int | str | None) -> int:
    """``run_sweep``'s ``device_memory_budget``: bytes (or a size string), None for :func:`default_budget`."""
    if budget is None:
        return default_budget()
    if isinstance(budget, str):
        return parse_bytes(budget)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"device_memory_budget ({BUDGET_FLAG}): expected a positive number of bytes, got {budget!r}")
    return int(budget)


def may_stream(examples: int, feature_shape: Sequence[int], budget: int | None) -> bool:
    """Whether a group reading ``feature_shape`` features of ``examples`` images (every split) could exceed the
    budget (what ``job.sweep_job`` asks before it reads the features lazily)."""
    return examples * int(np.prod(feature_shape)) * 4 > resolve_budget(budget)


def input_bytes(plan: GroupPlan, splits: Mapping[str, FeatureSplit]) -> int:
    """Bytes per device of the group's inputs as ``place_inputs`` places them (each split once, eval padded)."""
    rows = {id(s): len(s) for s in splits.values()}  # with folds "val" is the train pool: placed once
    longest = max(len(s) for k, s in splits.items() if k != "train")
    rows.update({id(s): longest for k, s in splits.items() if k != "train" and s is not splits["train"]})
    rows[id(splits["train"])] *= 1 + len(splits["train"].views or ())  # augmented views: K copies of train
    return sum(rows.values()) * len(plan.sources) * int(np.prod(plan.input_shape)) * 4


def streams(plan: GroupPlan, splits: Mapping[str, FeatureSplit], folds: bool, budget: int) -> bool:
    """Whether the group streams: its inputs exceed ``budget`` (bytes per device). Not with folds."""
    size = input_bytes(plan, splits)
    if size <= budget:
        return False
    if folds:
        raise ValueError(f"group {plan.gid}: its inputs take {size:,} bytes per device, over the budget of "
                         f"{budget:,} ({BUDGET_FLAG}), and a streamed sweep needs fixed splits: pass --folds none "
                         f"or a larger {BUDGET_FLAG}")
    log.info("group %d streams its features from the cache: %s bytes per device in memory, budget %s", plan.gid,
             f"{size:,}", f"{budget:,}")
    return True


def stream_inputs(plan: GroupPlan, members: Sequence[MemberSpec], splits: Mapping[str, FeatureSplit]) -> GroupInputs:
    """The group's inputs left on the host (one :class:`~.stream_read.StreamSplit` per split), in the layout of
    ``place_inputs``' without folds: labels of eval splits padded to one length, ``mask`` the real rows."""
    by_source = {members[i].head.pooling: members[i].head for i in plan.ids}
    layout = stream_read.read_layout(plan.mesh)
    n_eval = {k: len(s) for k, s in splits.items() if k != "train"}
    rows = max(n_eval.values())

    def host(name: str, split: FeatureSplit) -> stream_read.StreamSplit:
        of = lambda s: tuple(split_features(s, by_source[p], name) for p in plan.sources)  # noqa: E731
        views = tuple(of(v) for v in split.views or ()) if name == "train" else ()
        return stream_read.StreamSplit(of(split), tuple(by_source[p] for p in plan.sources), np.asarray(split.labels),
                                       stream_read.owner_blocks(of(split)[0], layout), plan.input_shape, views)

    x = {k: host(k, s) for k, s in splits.items()}
    k = 1 + len(x["train"].views)  # augmented views: "train" rows v * N + i (inputs.place_inputs' layout)
    y = {k: np.asarray(s.labels) if k == "train" else parallel.pad_to(np.asarray(s.labels), rows, 0)[0]
         for k, s in splits.items()}
    return GroupInputs(x=x, y=y, mask={k: np.arange(rows) < n for k, n in n_eval.items()}, n_eval=n_eval,
                       idx_sharding=parallel.replicated(plan.mesh), views=k, view_rows=len(splits["train"]))


def _local_chunk(prog: ProgramKey, state: GroupState, consts: MemberConsts, active: jax.Array, xs: jax.Array,
                 ys: jax.Array, step0: jax.Array) -> tuple[GroupState, jax.Array]:
    """``program._local_epoch`` over given batches: ``xs`` (steps, sources, local batch, ...), ``ys`` (steps,
    local batch, ...); every member runs the same ``member_step`` on step ``step0 + s``."""
    global_batch = ys.shape[1] * prog.mesh.shape[parallel.DATA]
    steps = jnp.arange(ys.shape[0], dtype=jnp.int32)

    def member_epoch(member_state: GroupState, member: tuple) -> tuple[GroupState, jax.Array]:
        member_consts, member_active = member

        def body(carry: GroupState, inp: tuple) -> tuple[GroupState, jax.Array]:
            s, xb, yb = inp
            return member_step(prog, global_batch, member_input(xb, member_consts), yb, step0 + s,
                                (carry, member_consts, member_active))

        return lax.scan(body, member_state, (steps, xs, ys))

    return update_members(member_epoch, state, (consts, active), prog.map_batch)


def _local_logits(prog: ProgramKey, variables: Any, consts: MemberConsts, x: jax.Array) -> jax.Array:
    """Every member's logits of a chunk of rows ``x`` (sources, local rows, ...)."""
    return local_predict(prog, variables, consts, x, None)


def _local_metrics(task: str, logits: jax.Array, y: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    return jax.vmap(functools.partial(member_metrics, task), in_axes=(0, None, 0))(logits, y, mask)


@functools.lru_cache(maxsize=64)
def stream_programs(prog: ProgramKey) -> tuple[Callable, Callable, Callable]:
    """The jitted (chunk epoch, chunk logits, metrics) of a streamed group on ``prog.mesh``: batches and rows
    sharded over "data", members over "members"."""
    mesh, m, d = prog.mesh, P(parallel.MEMBERS), parallel.DATA
    chunk = jax.shard_map(functools.partial(_local_chunk, prog), mesh=mesh,
                          in_specs=(m, m, m, P(None, None, d), P(None, d), P()), out_specs=(m, m), check_vma=False)
    logits = jax.shard_map(functools.partial(_local_logits, prog), mesh=mesh, in_specs=(m, m, P(None, d)),
                           out_specs=P(parallel.MEMBERS, d), check_vma=False)
    scores = jax.shard_map(functools.partial(_local_metrics, prog.task), mesh=mesh, in_specs=(m, P(), m),
                           out_specs=m, check_vma=False)

    def metrics(chunks: tuple, at: jax.Array, valid: jax.Array, y: jax.Array, mask: jax.Array) -> tuple:
        rows = jnp.take(jnp.concatenate(chunks, axis=1), at, axis=1)  # back in split order
        rows = jnp.where(valid[None, :, None], rows, jnp.zeros((), rows.dtype))
        return scores(rows, y, mask), rows

    return jax.jit(chunk, donate_argnums=(0,)), jax.jit(logits), jax.jit(metrics)


def _chunk_steps(plan: GroupPlan, budget: int) -> int:
    """Steps per chunk: two chunks of a device's share of the batches fit the budget."""
    per_step = len(plan.sources) * plan.batch // plan.mesh.shape[parallel.DATA] * int(np.prod(plan.input_shape)) * 4
    return int(max(1, min(plan.steps_per_epoch, budget // (2 * per_step))))


def _eval_width(plan: GroupPlan, inputs: GroupInputs, budget: int) -> int:
    """Rows per evaluation chunk (a multiple of the data slices): two chunks of a device's share fit the budget."""
    slices = plan.mesh.shape[parallel.DATA]
    per_row = len(plan.sources) * int(np.prod(plan.input_shape)) * 4
    longest = -(-max(inputs.n_eval.values()) // slices)
    return slices * int(max(1, min(longest, budget // (2 * per_row))))


class StreamedEpoch:
    """The epoch of a streamed group, called as the in-memory epoch is (``group.epoch_args``): the host reads and
    puts chunk i+1 while chunk i trains."""

    def __init__(self, plan: GroupPlan, budget: int, prog: ProgramKey):
        self.plan, self.chunk_steps = plan, _chunk_steps(plan, budget)
        self.layout = stream_read.read_layout(plan.mesh)
        self.program = stream_programs(prog)[0]
        self.x_sharding = NamedSharding(plan.mesh, P(None, None, parallel.DATA))
        self.y_sharding = NamedSharding(plan.mesh, P(None, parallel.DATA))

    def _put(self, source: stream_read.StreamSplit, idx: np.ndarray) -> tuple[jax.Array, jax.Array]:
        """Chunk ``idx`` (steps, batch) as global arrays: this process reads only its columns' rows."""
        steps, width = idx.shape
        lo, hi = self.layout.local_span(width)
        part = idx[:, lo:hi]
        x = np.moveaxis(source.read(part).reshape(steps, hi - lo, len(self.plan.sources), *self.plan.input_shape),
                        2, 1)
        y = source.label_rows(part)
        return (stream_read.global_array(x, self.x_sharding, (steps, x.shape[1], width, *x.shape[3:])),
                stream_read.global_array(y, self.y_sharding, (steps, width, *y.shape[2:])))

    def __call__(self, state: GroupState, consts: MemberConsts, active: jax.Array, x: stream_read.StreamSplit,
                 y: Any, idx: jax.Array, step0: jax.Array) -> tuple[GroupState, np.ndarray]:
        idx = stream_read.stratify(np.asarray(idx.addressable_data(0)), self.layout, x)
        first = int(np.asarray(step0))
        starts = range(0, len(idx), self.chunk_steps)
        losses, previous = [], None
        batch = self._put(x, idx[: self.chunk_steps])
        for i, a in enumerate(starts):
            state, loss = self.program(state, consts, active, *batch, jnp.asarray(first + a, jnp.int32))
            if previous is not None:
                losses.append(parallel.to_host(previous))  # waits on chunk i-1: two chunks on a device at most
                stream_read.release_freed_memory()  # chunk i-1's host buffers are freed by now
            if a + self.chunk_steps < len(idx):
                batch = self._put(x, idx[a + self.chunk_steps: a + 2 * self.chunk_steps])
            previous = loss
        losses.append(parallel.to_host(previous))
        return state, np.concatenate(losses, axis=1)


class StreamedEvaluate:
    """The evaluation of a streamed group, called as the in-memory one is (``records.evaluate``): (per-member
    metrics, logits (members, rows, classes) in split order)."""

    def __init__(self, plan: GroupPlan, inputs: GroupInputs, budget: int, prog: ProgramKey):
        self.plan, self.width = plan, _eval_width(plan, inputs, budget)
        self.layout = stream_read.read_layout(plan.mesh)
        _, self.logits, self.metrics = stream_programs(prog)
        self.sharding = NamedSharding(plan.mesh, P(None, parallel.DATA))
        self.replicated = parallel.replicated(plan.mesh)

    def _put(self, source: stream_read.StreamSplit, rows: np.ndarray) -> jax.Array:
        lo, hi = self.layout.local_span(len(rows))
        x = source.read(rows[lo:hi]).swapaxes(0, 1)
        return stream_read.global_array(x, self.sharding, (x.shape[0], len(rows), *x.shape[2:]))

    def __call__(self, variables: Any, consts: MemberConsts, x: stream_read.StreamSplit, y: np.ndarray,
                 rows: Any, mask: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        order = stream_read.eval_order(len(x), self.layout, x.owner, self.width)
        chunks, previous, nxt = [], None, self._put(x, order[0])
        for c in range(len(order)):
            chunks.append(self.logits(variables, consts, nxt))
            if previous is not None:
                previous.block_until_ready()  # two chunks on a device at most
            if c + 1 < len(order):
                nxt = self._put(x, order[c + 1])
            previous = chunks[-1]
        n, padded = len(x), len(y)
        at = np.zeros(padded, np.int32)
        at[:n] = stream_read.positions(order, n)
        put = lambda a: jax.device_put(a, self.replicated)  # noqa: E731
        return self.metrics(tuple(chunks), put(at), put(np.arange(padded) < n), put(y), mask)


def compile_programs(pending: PendingInit, inputs: GroupInputs, map_batch: int | str, task: str,
                     pool: concurrent.futures.Executor, budget: int) -> Programs:
    """``group.compile_programs`` for a streamed group: its epoch and evaluation (compiled on their first call,
    once per chunk shape)."""
    prog = pending.plan.program_key(map_batch, task)
    done: concurrent.futures.Future = concurrent.futures.Future()
    done.set_result(None)
    return Programs(StreamedEpoch(pending.plan, budget, prog), StreamedEvaluate(pending.plan, inputs, budget, prog),
                    done, map_batch)


def record(plan: GroupPlan, budget: int, inputs: GroupInputs) -> dict[str, Any]:
    """What a group's record says about its streaming (``SweepResult.groups[*]["streamed"]``)."""
    return {"budget_bytes": budget, "chunk_steps": _chunk_steps(plan, budget),
            "eval_chunk_rows": _eval_width(plan, inputs, budget)}
