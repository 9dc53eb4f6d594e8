"""The feature cache on disk: one directory per image set (backbone x the set of a dataset's images), holding the
features of every image in fixed-size float16 shards that are memory-mapped when read.

    <key>/plan.npz                         the image id of each row (``Dataset.image_ids``), in row order, the
                                           shard size and the key's inputs; created once, before any shard, by
                                           whichever run gets there first: it fixes which images each shard holds
    <key>/shards/<start>-<stop>.maps.npy   (stop - start, h, w, C) float16 feature maps, when they were asked for
    <key>/shards/<start>-<stop>.pooled.npy (stop - start, C) float16 pooled features
    <key>/shards/<start>-<stop>.taps.npz   {tap name: (stop - start, 2C) float16}: every tap of the backbone,
                                           pooled (``features.taps``), when taps were asked for
    <key>/shards/<start>-<stop>.kept.npy   (stop - start,) bool, False on unreadable images (their rows are zeros);
                                           written last: its presence marks the shard complete
    <key>/meta.json                        written last, once every shard is complete: which shards make the image
                                           set, maps or not, the images left out

Every file is written to a temporary name beside it and renamed into place, so a kill, a full disk or a read-only
directory leaves whole files or none, never a torn shard that a later run would take as complete. A shard that is
missing or damaged reads as absent and is computed again, never as zeros. Nothing here holds the whole image set in
memory: a split is gathered row by row from the memory-mapped shards it touches.

:mod:`jaxheads.features` decides what to compute and calls these to lay out the plan, write shards, find the
complete ones and gather a split's rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from jaxheads.checkpoint import write_atomic, write_json_atomic
from jaxheads.data.dataset import image_set_fingerprint

META = "meta.json"
PLAN = "plan.npz"
SHARDS = "shards"


class FeatureCacheError(OSError):
    """The feature cache cannot be written (full disk, read-only directory...); the message is one line naming the
    path. Nothing half-written is left where a later run would read it."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which image each row holds (``rows``: ids in row order) and how rows are cut into shards."""

    rows: np.ndarray
    shard_size: int

    @property
    def shards(self) -> list[tuple[int, int]]:
        """(start, stop) rows of each shard, in order; all ``shard_size`` long but the last."""
        return [(a, min(a + self.shard_size, len(self.rows))) for a in range(0, len(self.rows), self.shard_size)]

    def rows_of(self, ids: np.ndarray) -> np.ndarray | None:
        """The row of each id in ``ids`` (same order), or None when some id is not in this plan."""
        order = np.argsort(self.rows, kind="stable")
        ordered = self.rows[order]
        ids = np.asarray(ids, "S32")
        at = np.minimum(np.searchsorted(ordered, ids), max(len(order) - 1, 0))
        if len(ids) and (not len(order) or not np.array_equal(ordered[at], ids)):
            return None
        return order[at].astype(np.int64)


def shard_path(folder: Path, start: int, stop: int, kind: str) -> Path:
    """``kind``: ``pooled``, ``maps``, ``kept`` or ``taps`` (the one ``.npz``)."""
    return folder / SHARDS / f"{start:010d}-{stop:010d}.{kind}.{'npz' if kind == 'taps' else 'npy'}"


# --------------------------------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into a one-line :class:`FeatureCacheError` naming it."""
    try:
        yield
    except FeatureCacheError:
        raise
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        if err.errno is None:  # a short write: what a full disk gives when the bytes are not all written at once
            reason += ", is the disk full?"
        raise FeatureCacheError(f"feature cache {path}: cannot write ({reason}); free space or make the folder "
                                "writable, or pass another cache_dir") from None


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """np.save through an atomic write (streamed: no copy of ``array`` in memory)."""
    with _writing(path):
        write_atomic(path, lambda f: np.save(f, array))


def _write_json_atomic(path: Path, value: Any) -> None:
    with _writing(path):
        write_json_atomic(path, value)


def create_plan(folder: Path, identity: Mapping[str, Any], plan: Plan) -> None:
    """Write plan.npz unless it exists: the first run to get there wins, and a run that started at the same time
    with the splits drawn otherwise (so another row order) reads the winner's plan instead of replacing it under
    shards already written in its order."""
    path = folder / PLAN
    identity_text = json.dumps(identity, sort_keys=True)
    with _writing(path):
        write_atomic(path, lambda f: np.savez(f, rows=plan.rows, shard_size=plan.shard_size, identity=identity_text),
                     exclusive=True)


def write_shard(
    folder: Path, start: int, stop: int, pooled: np.ndarray, maps: np.ndarray | None, kept: np.ndarray,
    taps: Mapping[str, np.ndarray] | None = None,
) -> None:
    """One shard's arrays, each atomically; ``kept`` last (it marks the shard complete)."""
    if maps is not None:
        _save_npy_atomic(shard_path(folder, start, stop, "maps"), maps)
    _save_npy_atomic(shard_path(folder, start, stop, "pooled"), pooled)
    if taps:
        write_taps(folder, start, stop, taps)
    _save_npy_atomic(shard_path(folder, start, stop, "kept"), np.asarray(kept, bool))


def write_taps(folder: Path, start: int, stop: int, taps: Mapping[str, np.ndarray]) -> None:
    """A shard's pooled taps, atomically: added beside a complete shard without touching its other files."""
    path = shard_path(folder, start, stop, "taps")
    with _writing(path):
        write_atomic(path, lambda f: np.savez(f, **taps))


def write_meta(folder: Path, meta: Mapping[str, Any]) -> None:
    """meta.json, last: every shard of the plan is complete (with maps when ``meta["has_maps"]``)."""
    _write_json_atomic(folder / META, dict(meta))


def remove_foreign(folder: Path) -> None:
    """Drop a directory's cache whose plan or meta names other inputs (it is rebuilt, never mixed)."""
    with _writing(folder):
        for name in (META, PLAN):
            (folder / name).unlink(missing_ok=True)
        if (folder / SHARDS).exists():
            shutil.rmtree(folder / SHARDS)


def remove_temporaries(folder: Path, older_than_s: float = 900.0) -> None:
    """Temporary files of writes killed before their rename (never read: only final names are). Only old ones:
    a run sharing the cache may be writing the others right now."""
    now = time.time()
    for parent in (folder, folder / SHARDS):
        for stale in parent.glob(".*"):
            with contextlib.suppress(OSError):
                if now - stale.stat().st_mtime > older_than_s:
                    stale.unlink()


# --------------------------------------------------------------------------------------------------------------
# Reading


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _matches(value: Mapping[str, Any] | None, identity: Mapping[str, Any]) -> bool:
    return value is not None and all(value.get(k) == v for k, v in identity.items())


def is_foreign(folder: Path, identity: Mapping[str, Any]) -> bool:
    """A plan or meta in ``folder`` that was not written for exactly these inputs (or cannot be read)."""
    return ((folder / PLAN).exists() and read_plan(folder, identity) is None) or (
        (folder / META).exists() and read_meta(folder, identity) is None)


def read_plan(folder: Path, identity: Mapping[str, Any]) -> Plan | None:
    """The plan in ``folder`` if it was written for exactly ``identity``, else None."""
    try:
        with np.load(folder / PLAN) as plan:
            rows, shard_size, written = plan["rows"], int(plan["shard_size"]), json.loads(str(plan["identity"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if not _matches(written, identity) or shard_size < 1 or rows.dtype != np.dtype("S32") or rows.ndim != 1:
        return None
    if len(np.unique(rows)) != len(rows) or image_set_fingerprint([rows]) != identity.get("images"):
        return None  # the rows must be exactly the key's set of images
    return Plan(rows, shard_size)


def read_meta(folder: Path, identity: Mapping[str, Any]) -> dict[str, Any] | None:
    """The meta of a complete image set built from exactly ``identity``, or None."""
    meta = _read_json(folder / META)
    return meta if _matches(meta, identity) else None


@dataclasses.dataclass
class Shard:
    """One complete shard, memory-mapped: ``kept`` (rows,), ``pooled`` (rows, C), ``maps`` (rows, h, w, C)."""

    kept: np.ndarray
    pooled: np.ndarray
    maps: np.ndarray | None


def open_shard(folder: Path, start: int, stop: int, need_maps: bool, taps: Sequence[str] = ()) -> Shard | None:
    """The shard of rows ``start:stop`` memory-mapped, or None when it is incomplete (no kept file, a missing or
    damaged array, no maps when they are needed, not every tap in ``taps``): then it is computed again."""
    if taps and not _has_taps(folder, start, stop, taps):
        return None
    try:
        kept = np.load(shard_path(folder, start, stop, "kept"))
        pooled = np.load(shard_path(folder, start, stop, "pooled"), mmap_mode="r")
        maps = np.load(shard_path(folder, start, stop, "maps"), mmap_mode="r") if need_maps else None
    except (OSError, ValueError):
        return None
    rows = stop - start
    if kept.shape != (rows,) or kept.dtype != bool or pooled.ndim != 2 or len(pooled) != rows:
        return None
    if pooled.dtype != np.float16 or (maps is not None and (maps.ndim != 4 or len(maps) != rows
                                                             or maps.dtype != np.float16)):
        return None
    return Shard(kept, pooled, maps)


def _has_taps(folder: Path, start: int, stop: int, taps: Sequence[str]) -> bool:
    """Whether the shard's taps file holds every tap in ``taps``, one float16 row per image (headers only)."""
    try:
        with np.load(shard_path(folder, start, stop, "taps")) as stored:
            if not set(taps) <= set(stored.files):
                return False
            for name in taps:
                with stored.zip.open(f"{name}.npy") as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                if len(shape) != 2 or shape[0] != stop - start or dtype != np.float16:
                    return False
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return False
    return True


def gather_taps(folder: Path, plan: Plan, rows: np.ndarray, taps: Sequence[str]) -> dict[str, np.ndarray]:
    """{tap: (len(rows), D) float16} of ``rows`` (in that order), read shard by shard from the taps files.
    Raises FileNotFoundError naming a shard without them (callers compute missing shards first)."""
    rows = np.asarray(rows, np.int64)
    which = rows // plan.shard_size
    out: dict[str, np.ndarray] = {}
    for k in np.unique(which).tolist():
        start, stop = plan.shards[k]
        at = np.flatnonzero(which == k)
        try:
            with np.load(shard_path(folder, start, stop, "taps")) as stored:
                for name in taps:
                    part = stored[name]
                    into = out.setdefault(name, np.empty((len(rows), *part.shape[1:]), np.float16))
                    into[at] = part[rows[at] - start]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise FileNotFoundError(f"{shard_path(folder, start, stop, 'taps')}: feature taps missing or "
                                    "incomplete") from err
    return out if len(rows) else {name: np.zeros((0, 0), np.float16) for name in taps}


def gather(
    folder: Path, plan: Plan, rows: np.ndarray, need_maps: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(kept (n,) bool, pooled, maps) of ``rows`` (in that order), the arrays holding only the kept rows.

    Reads the rows from the memory-mapped shards they fall in, so only the split's rows are ever in memory.
    Raises FileNotFoundError naming a shard that is not complete (callers compute missing shards first)."""
    rows = np.asarray(rows, np.int64)
    size = plan.shard_size
    which = rows // size
    shards: dict[int, Shard] = {}
    for k in np.unique(which).tolist():
        start, stop = plan.shards[k]
        shard = open_shard(folder, start, stop, need_maps)
        if shard is None:
            raise FileNotFoundError(f"{shard_path(folder, start, stop, 'kept')}: feature shard missing or incomplete")
        shards[k] = shard
    kept = np.ones(len(rows), bool)
    for k, shard in shards.items():
        at = which == k
        kept[at] = shard.kept[rows[at] - k * size]
    channels = next(iter(shards.values())).pooled.shape[1:] if shards else (0,)
    pooled = np.empty((int(kept.sum()), *channels), np.float16)
    maps = None
    if need_maps:
        map_shape = next(iter(shards.values())).maps.shape[1:] if shards else (0, 0, 0)
        maps = np.empty((int(kept.sum()), *map_shape), np.float16)
    out_rows, out_which = rows[kept], which[kept]
    for k, shard in shards.items():
        at = np.flatnonzero(out_which == k)
        local = out_rows[at] - k * size
        pooled[at] = shard.pooled[local]
        if maps is not None:
            maps[at] = shard.maps[local]
    return kept, pooled, maps
