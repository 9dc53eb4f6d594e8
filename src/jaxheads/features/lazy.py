"""A split of the feature cache read lazily: an array-like over the memory-mapped shards, for datasets whose
features fit on no host.

:class:`LazyRows` is what ``features.extract_all`` with ``ExtractOptions(lazy=True)`` puts in a
:class:`~jaxheads.features.split.FeatureSplit` instead of an in-memory array: ``shape``, ``dtype``, ``len`` and
``take(indices)`` / ``x[indices]``, reading only the shards the asked-for rows fall in. ``np.asarray(x)`` reads
every row, so code that wants the whole split in memory still works. Rows read through it are bit-identical to those
``feature_store.gather`` copies into memory (the same float16 values, in the same order).

Only the ``kept`` flags (one bool per row) of every shard of the split are read up front: every process needs the
labels of the whole split. The feature arrays of a shard are opened only when some row of it is asked for, and
:attr:`LazyRows.opened` says which shards were, so a multi-host run can check that each host read only its share.

Each read maps the shard's file, copies the asked-for rows and unmaps it again. A map kept open for the whole run
would keep every page it ever touched in this process's resident set, so an epoch over the split would end with
the whole file resident (file-backed, droppable by the kernel, but counted in the peak RSS and by schedulers that
limit it). Mapping per read costs a header parse and an ``mmap`` per shard and call (well under a millisecond), and
keeps the kernel's page cache and readahead; reading rows by offset (``os.pread``) would cost a system call per row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxheads.features.store import Plan, open_shard, shard_path


class LazyRows:
    """Rows of one feature kind (``"pooled"`` or ``"maps"``) of a split, in split order, only the kept rows.

    ``rows``: the plan rows (row numbers of the whole image set) of the split's kept images, in split order."""

    def __init__(self, folder: Path, plan: Plan, rows: np.ndarray, kind: str, row_shape: tuple[int, ...]):
        if kind not in ("pooled", "maps"):
            raise ValueError(f"LazyRows kind: expected 'pooled' or 'maps', got {kind!r}")
        self.folder, self.plan, self.kind = Path(folder), plan, kind
        self.rows = np.asarray(rows, np.int64)
        self.shape = (len(self.rows), *row_shape)
        self.dtype = np.dtype(np.float16)
        self.opened: set[int] = set()  # shard numbers whose feature arrays were read

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def shard_of_rows(self) -> np.ndarray:
        """The shard number of every row (which host owns it: the feature pass writes shard k on process
        k % processes)."""
        return self.rows // self.plan.shard_size

    def _read(self, k: int, local: np.ndarray) -> np.ndarray:
        """Rows ``local`` (ascending, within the shard) of shard ``k``, copied out of a map that is closed when
        this returns (module docstring)."""
        start, stop = self.plan.shards[k]
        path = shard_path(self.folder, start, stop, self.kind)
        try:
            mapped = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise FileNotFoundError(f"{path}: feature shard missing or incomplete") from err
        if mapped.shape != (stop - start, *self.shape[1:]) or mapped.dtype != self.dtype:
            raise FileNotFoundError(f"{path}: feature shard incomplete: expected shape {(stop - start, *self.shape[1:])}"
                                    f" {self.dtype}, found {mapped.shape} {mapped.dtype}")
        self.opened.add(k)
        return np.asarray(mapped[local])  # fancy indexing copies: the map closes with ``mapped``

    def take(self, indices: Any) -> np.ndarray:
        """Rows ``indices`` (a 1-D integer array into this split, negatives from the end) as an in-memory float16
        array, read shard by shard (each shard's rows in ascending order, for the page cache)."""
        indices = np.asarray(indices)
        if indices.ndim != 1 or not (indices.dtype.kind in "iu" or indices.size == 0):
            raise IndexError(f"LazyRows.take: expected a 1-D integer index array, got shape {indices.shape} "
                             f"{indices.dtype}")
        n = len(self)
        if indices.size and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"LazyRows.take: index out of range for {n} rows")
        wanted = self.rows[np.where(indices < 0, indices + n, indices).astype(np.int64)]
        out = np.empty((len(wanted), *self.shape[1:]), self.dtype)
        which = wanted // self.plan.shard_size
        for k in np.unique(which).tolist():
            at = np.flatnonzero(which == k)
            local = wanted[at] - self.plan.shards[k][0]
            order = np.argsort(local, kind="stable")
            out[at[order]] = self._read(k, local[order])
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        """An int, a slice or a 1-D integer array of rows, read from the shards (no other indexing)."""
        if isinstance(key, (int, np.integer)):
            return self.take(np.asarray([key]))[0]
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        return self.take(key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Every row in memory (what code that needs the whole split gets from ``np.asarray``)."""
        whole = self.take(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyRows({self.kind}, shape={self.shape}, dtype={self.dtype}, folder={self.folder.name})"


def lazy_gather(folder: Path, plan: Plan, rows: np.ndarray,
                need_maps: bool) -> tuple[np.ndarray, LazyRows, LazyRows | None]:
    """``feature_store.gather`` without the copy: (kept (n,) bool, pooled, maps) of ``rows`` (in that order), the
    features :class:`LazyRows` over the kept rows. Reads only the kept flags now; raises FileNotFoundError naming
    a shard that is not complete."""
    rows = np.asarray(rows, np.int64)
    which = rows // plan.shard_size
    kept = np.ones(len(rows), bool)
    row_shapes: dict[str, tuple[int, ...]] = {"pooled": (0,), "maps": (0, 0, 0)}
    for k in np.unique(which).tolist():
        start, stop = plan.shards[k]
        shard = open_shard(folder, start, stop, need_maps)  # checks the shard is complete (only maps headers)
        if shard is None:
            raise FileNotFoundError(f"{shard_path(folder, start, stop, 'kept')}: feature shard missing or incomplete")
        at = which == k
        kept[at] = shard.kept[rows[at] - start]
        row_shapes = {"pooled": shard.pooled.shape[1:], "maps": shard.maps.shape[1:] if need_maps else (0, 0, 0)}
    kept_rows = rows[kept]
    pooled = LazyRows(folder, plan, kept_rows, "pooled", tuple(row_shapes["pooled"]))
    maps = LazyRows(folder, plan, kept_rows, "maps", tuple(row_shapes["maps"])) if need_maps else None
    return kept, pooled, maps
