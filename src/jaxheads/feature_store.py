"""The feature cache on disk: one directory per cache key, written so that a kill at any moment leaves either
finished pieces or nothing, never a torn file.

    <key>/chunks/<start>-<stop>.npz   finished chunks while a pass runs (each written atomically)
    <key>/{labels,indices,pooled,maps}.npy   the assembled split (float16 features), each written atomically
    <key>/meta.json                   written last: its presence marks the cache complete

:mod:`jaxheads.features` decides what to compute and calls these to write chunks, find the finished ones,
assemble them and read a complete cache back.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxheads import data
from jaxheads.checkpoint import write_bytes_atomic, write_json_atomic
from jaxheads.splits import FeatureSplit

META = "meta.json"
CHUNKS = "chunks"


def chunk_path(chunk_dir: Path, start: int, stop: int) -> Path:
    return chunk_dir / f"{start:010d}-{stop:010d}.npz"


def write_chunk(
    chunk_dir: Path,
    start: int,
    stop: int,
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    has_maps: bool,
) -> None:
    """Write one finished chunk (kept indices, pooled, maps) atomically."""
    kept = [p for p in parts if len(p[0])]
    arrays: dict[str, np.ndarray] = {
        "indices": np.concatenate([p[0] for p in parts]).astype(np.int64),
        "pooled": np.concatenate([p[1] for p in kept]) if kept else np.zeros((0, 0), np.float16),
        "has_maps": np.asarray(has_maps),
    }
    if has_maps:
        arrays["maps"] = np.concatenate([p[2] for p in kept]) if kept else np.zeros((0, 0, 0, 0), np.float16)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(chunk_path(chunk_dir, start, stop), buffer.getvalue())


def finished_chunks(chunk_dir: Path, plan: list[tuple[int, int]], need_maps: bool) -> dict[tuple[int, int], Path]:
    """Chunks of this plan already on disk (with maps when needed). Files are whole or absent (atomic writes)."""
    found: dict[tuple[int, int], Path] = {}
    for start, stop in plan:
        path = chunk_path(chunk_dir, start, stop)
        try:
            with np.load(path) as chunk:
                if bool(chunk["has_maps"]) or not need_maps:
                    found[(start, stop)] = path
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            continue  # absent, or damaged by something other than a kill: computed again
    return found


def assemble(
    folder: Path,
    identity: Mapping[str, Any],
    dataset: data.Dataset,
    split: str,
    plan: list[tuple[int, int]],
    need_maps: bool,
) -> FeatureSplit:
    """Concatenate the chunks into the final arrays, write them and meta.json (last, with ``identity``: what the
    features were computed from), drop the chunks."""
    chunk_dir = folder / CHUNKS
    paths = [chunk_path(chunk_dir, a, b) for a, b in plan]
    loaded = [np.load(p) for p in paths]
    try:
        indices = np.concatenate([c["indices"] for c in loaded]) if loaded else np.zeros(0, np.int64)
        nonempty = [c for c in loaded if c["pooled"].shape[0]]
        channels = nonempty[0]["pooled"].shape[1] if nonempty else 0
        pooled = np.concatenate([c["pooled"] for c in nonempty]) if nonempty else np.zeros((0, channels), np.float16)
        _save_npy_atomic(folder / "pooled.npy", pooled)
        if need_maps:
            _save_maps_atomic(folder / "maps.npy", nonempty, len(pooled))
    finally:
        for chunk in loaded:
            chunk.close()
    labels = dataset.split(split).labels[indices]
    _save_npy_atomic(folder / "indices.npy", indices)
    _save_npy_atomic(folder / "labels.npy", labels)
    all_indices = np.arange(len(dataset.split(split)))
    skipped = np.setdiff1d(all_indices, indices)
    meta = {
        **identity,
        "dataset_name": dataset.name,
        "classes": list(dataset.classes),
        "task": dataset.task,
        "count": int(len(indices)),
        "skipped": int(len(skipped)),
        "skipped_names": [dataset.split(split).name(int(i)) for i in skipped[:100]],
        "has_maps": bool(need_maps),
        "pooled_shape": list(pooled.shape),
    }
    write_json_atomic(folder / META, meta)
    shutil.rmtree(chunk_dir, ignore_errors=True)
    for stale in folder.glob(".*"):  # temporary files of writes killed before their rename
        stale.unlink(missing_ok=True)
    return load_complete(folder, meta, need_maps)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes_atomic(path, buffer.getvalue())


def _save_maps_atomic(path: Path, chunks: Sequence[Any], count: int) -> None:
    """Stream the (possibly large) maps of ``chunks`` (open .npz files, read one at a time) into a temporary
    .npy, fsync, rename."""
    shape = (count, *(chunks[0]["maps"].shape[1:] if chunks else (0, 0, 0)))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        row = 0
        for chunk in chunks:
            part = chunk["maps"]
            out[row : row + len(part)] = part
            row += len(part)
        out.flush()
        del out
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_meta(folder: Path, identity: Mapping[str, Any]) -> dict[str, Any] | None:
    """The meta of a complete cache in ``folder`` built from exactly ``identity``, or None (absent, unreadable
    or built from other inputs: then it is rebuilt, never mixed)."""
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if all(meta.get(k) == v for k, v in identity.items()) else None


def load_complete(folder: Path, meta: Mapping[str, Any], need_maps: bool) -> FeatureSplit:
    """Read a complete cache; maps are memory-mapped (they can be large)."""
    if meta["skipped"]:
        warnings.warn(
            f"{folder.name}: {meta['skipped']} unreadable image(s) were left out when this cache was built "
            f"(first: {', '.join(meta['skipped_names'][:3])})",
            data.BadImageWarning,
            stacklevel=3,
        )
    labels = np.load(folder / "labels.npy")
    pooled = np.load(folder / "pooled.npy")
    maps = np.load(folder / "maps.npy", mmap_mode="r") if need_maps else None
    return FeatureSplit(labels=labels, pooled=pooled, maps=maps)
