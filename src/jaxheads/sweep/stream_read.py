"""The host side of a streamed group: which rows each process reads, and the batches it builds from them.

A streamed group (:mod:`.stream`) never places a split on the devices. The host reads the rows of each chunk of
steps from the cached features (memory-mapped :class:`~jaxheads.features.lazy.LazyRows`, or in-memory arrays),
pools them as ``inputs._program_input`` does for conv-free heads, and hands the devices its part of the global batch
(``jax.make_array_from_process_local_data``).

Multi-host sampling. A data slice of the mesh (one column of ``Mesh(("members", "data"))``) is fed by the processes
whose devices hold it. Slices fed by the same set of processes form a *block*; when the blocks' processes are
disjoint (the data axis spans processes), each block's columns of every batch are drawn only from rows in the
shards its processes own (the feature pass writes shard k on process k % P), so a process reads only the shards
of its block. Every process derives the same batches from the epoch's shuffle (:func:`stratify`): each block takes
its owned rows in the shuffled order, and the epoch has as many steps as the block with the fewest owned rows
fills (the others' leftover rows wait for a later epoch's shuffle). So on several hosts a batch is stratified by
host, not a uniform draw from the split, and the steps differ from a one-process run; on one process (one block)
the batches are exactly the in-memory sweep's. Evaluation rows are read the same way, each block scoring the rows
it owns, and put back in split order before the metrics.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import itertools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxheads import heads, parallel
from jaxheads.features.lazy import LazyRows
from jaxheads.heads import HeadSpec


@dataclasses.dataclass(frozen=True)
class ReadLayout:
    """Which block of the batch each data slice is in, which block each process feeds, and this process's."""

    block_of_slice: np.ndarray  # (data slices,) block number
    block_of_process: np.ndarray  # (processes,) block number (a process outside the mesh: block 0)
    local_slices: np.ndarray  # the data slices this process's devices hold (ascending)

    @property
    def blocks(self) -> int:
        return int(self.block_of_slice.max()) + 1

    def columns(self, block: int, width: int) -> np.ndarray:
        """Positions of ``block``'s rows in a batch of ``width`` (every data slice holds width / slices)."""
        per = width // len(self.block_of_slice)
        return np.concatenate([np.arange(j * per, (j + 1) * per) for j in np.flatnonzero(self.block_of_slice == block)])

    def local_span(self, width: int) -> tuple[int, int]:
        """The contiguous positions of a batch of ``width`` that this process's devices hold."""
        per = width // len(self.block_of_slice)
        lo, hi = int(self.local_slices[0]) * per, (int(self.local_slices[-1]) + 1) * per
        if len(self.local_slices) != self.local_slices[-1] - self.local_slices[0] + 1:
            raise ValueError("streaming needs each process's devices to hold contiguous data slices of the mesh")
        return lo, hi


def read_layout(mesh: Mesh) -> ReadLayout:
    """The blocks of ``mesh``'s data axis (module docstring); one block when the processes' slices overlap."""
    columns = mesh.devices.reshape(mesh.shape[parallel.MEMBERS], mesh.shape[parallel.DATA]).T
    feeders = [frozenset(d.process_index for d in column) for column in columns]
    groups = list(dict.fromkeys(feeders))
    if any(not a.isdisjoint(b) for a, b in itertools.combinations(groups, 2)):
        groups = [frozenset().union(*groups)]
    block_of_slice = np.asarray([next(g for g, s in enumerate(groups) if f <= s) for f in feeders])
    block_of_process = np.zeros(jax.process_count(), np.int64)
    for g, processes in enumerate(groups):
        block_of_process[list(processes)] = g
    me = jax.process_index()
    local = np.flatnonzero([any(d.process_index == me for d in column) for column in columns])
    return ReadLayout(block_of_slice, block_of_process, local)


def owner_blocks(features: Any, layout: ReadLayout) -> np.ndarray:
    """The block that reads each row: its shard's owner's block; rows held in memory are dealt round-robin."""
    n = len(features)
    if isinstance(features, LazyRows):
        return layout.block_of_process[features.shard_of_rows() % jax.process_count()]
    return np.arange(n) % layout.blocks


def stratify(idx: np.ndarray, layout: ReadLayout, source: StreamSplit) -> np.ndarray:
    """An epoch's (steps, batch) rows re-dealt so that each block's columns hold rows it owns, in the shuffled
    order of ``idx`` (module docstring); ``idx`` itself with one block."""
    if layout.blocks == 1:
        return idx
    order, width = idx.reshape(-1), idx.shape[1]
    owner = source.row_owner(order)
    columns = [layout.columns(b, width) for b in range(layout.blocks)]
    owned = [order[owner == b] for b in range(layout.blocks)]
    steps = min(len(rows) // len(cols) for rows, cols in zip(owned, columns))
    if steps == 0:
        raise ValueError(f"streamed sweep: some host owns fewer training rows than its {len(columns[0])} of a batch "
                         f"of {width}; use a smaller batch size or fewer hosts")
    out = np.empty((steps, width), idx.dtype)
    for rows, cols in zip(owned, columns):
        out[:, cols] = rows[: steps * len(cols)].reshape(steps, len(cols))
    return out


def eval_order(n: int, layout: ReadLayout, owner: np.ndarray, width: int) -> np.ndarray:
    """(chunks, width) rows of an evaluation split (-1: padding), each block's columns holding the rows it owns."""
    per_block = [np.flatnonzero(owner[:n] == b) for b in range(layout.blocks)]
    columns = [layout.columns(b, width) for b in range(layout.blocks)]
    chunks = max(1, max(-(-len(rows) // len(cols)) for rows, cols in zip(per_block, columns)))
    out = np.full((chunks, width), -1, np.int64)
    for rows, cols in zip(per_block, columns):
        padded = np.concatenate([rows, np.full(chunks * len(cols) - len(rows), -1)])
        out[:, cols] = padded.reshape(chunks, len(cols))
    return out


def positions(order: np.ndarray, n: int) -> np.ndarray:
    """Where each of the ``n`` rows sits in ``order`` flattened (the inverse of :func:`eval_order`)."""
    flat = order.reshape(-1)
    at = np.zeros(n, np.int32)
    at[flat[flat >= 0]] = np.flatnonzero(flat >= 0)
    return at


@dataclasses.dataclass(frozen=True, eq=False)
class StreamSplit:
    """One split of a streamed group on the host: the cached features each of the group's sources reads (lazy or
    in memory), the head that pools them, the labels, and the block that owns each row. A training split with
    augmented views (``FeatureSplit.views``) is read as ``inputs`` lays it out: view v of row i is row v * N + i."""

    features: tuple[Any, ...]
    pool_heads: tuple[HeadSpec, ...]
    labels: np.ndarray
    owner: np.ndarray
    input_shape: tuple[int, ...]
    views: tuple[tuple[Any, ...], ...] = ()  # views 1..K-1: the features of each source

    def row_owner(self, rows: np.ndarray) -> np.ndarray:
        """The block owning each of ``rows`` (every view of an image sits in the same shard of its entry)."""
        return self.owner[np.asarray(rows) % len(self)]

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), sources, *input_shape) float32 program input of ``rows`` (-1: a zero padding row), pooled
        on the host for conv-free heads exactly as ``inputs._program_input`` pools the whole split."""
        rows = np.asarray(rows).reshape(-1)
        valid = rows >= 0
        out = np.zeros((len(rows), len(self.features), *self.input_shape), np.float32)
        view = np.where(valid, rows // len(self), -1)
        for v, sources in enumerate((self.features, *self.views)):
            at = view == v
            if not at.any():
                continue  # no row of this view (or only padding): nothing to read
            for s, (x, head) in enumerate(zip(sources, self.pool_heads, strict=True)):
                part = np.asarray(x[rows[at] % len(self)], np.float32)
                out[at, s] = part if head.conv else np.asarray(heads.pool(head, part, xp=np), np.float32)
        return out

    def label_rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        labels = np.asarray(self.labels)[np.maximum(rows, 0) % len(self)]
        return labels.astype(jax.dtypes.canonicalize_dtype(labels.dtype))


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand the pages of freed host buffers back to the kernel. Each chunk allocates and frees buffers of tens of
    MiB; glibc then raises its mmap threshold and keeps such freed blocks in its heaps, fragmented, so the resident
    set creeps up with every chunk (and so with N) though the live data does not grow."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def global_array(local: np.ndarray, sharding: NamedSharding, global_shape: Sequence[int]) -> jax.Array:
    """The global array whose part on this process's devices is ``local`` (on one process: ``device_put``)."""
    return jax.make_array_from_process_local_data(sharding, np.ascontiguousarray(local), tuple(global_shape))
