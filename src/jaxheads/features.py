"""The feature cache: run the frozen backbone once over a dataset split and keep what the heads train on.

:func:`extract_features` returns a :class:`~jaxheads.splits.FeatureSplit` (labels, pooled (N, C) vectors, and
(N, h, w, C) maps when asked), read from disk when a complete cache with the same key exists. The backbone is
given as a :class:`BackboneSource`: its identity (name, weights id, preprocessing) is known without building it,
and ``load()`` is only called when something has to be computed, so a cache hit never builds the backbone.

Key (:func:`cache_key`): backbone name + weights id + dataset fingerprint + split + input size +
``Preprocessing.key()`` + the resize method + the cache format. Anything that changes the features changes the
key, so a cache built with another backbone or preprocessing is never read (nor overwritten: it has another
directory).

On disk, one directory per key under ``cache_dir``, laid out and written by :mod:`jaxheads.feature_store`
(chunks while a pass runs, then the assembled arrays, then ``meta.json``, whose presence marks the cache complete).
A killed pass leaves finished chunks behind; the next call computes only the missing chunks and ends with the
same arrays as an uninterrupted pass (the backbone is deterministic per image; batches are padded to one shape).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxheads import backbones, checkpoint, data, parallel
from jaxheads.backbones import Backbone, Preprocessing
from jaxheads.backbones.base import feature_maps
from jaxheads.feature_store import (CHUNKS, META, assemble, finished_chunks, load_complete, read_meta,
                                    write_chunk)
from jaxheads.splits import FeatureSplit


__all__ = [
    "CACHE_FORMAT",
    "BackboneSource",
    "Progress",
    "backbone_source",
    "cache_key",
    "default_cache_dir",
    "extract_all",
    "extract_features",
]

CACHE_FORMAT = 1
"""Bump when the on-disk layout or the way features are computed changes (it is part of every key)."""


class Progress(NamedTuple):
    """One progress report: ``done`` of ``total`` images of ``split`` handled (``skipped`` of them unreadable);
    ``cached`` when the split was read from the cache."""

    split: str
    done: int
    total: int
    skipped: int = 0
    cached: bool = False


ProgressFn = Callable[[Progress], None]
ShapesFn = Callable[[dict[str, "tuple[int, ...] | None"]], None]
"""Called with ``{"pooled": (C,), "maps": (h, w, C) or None}`` once the backbone's forward is traced, before it runs:
what a sweep needs to compile its programs while the features are computed (``jaxheads.job``)."""


@dataclasses.dataclass(frozen=True)
class BackboneSource:
    """What the cache needs to know about a backbone without building it, and how to build it.

    ``weights_id`` must change whenever the weights do (a file hash, a pinned source hash, ``random-seed0``).
    ``load`` is a zero-argument callable returning the :class:`~jaxheads.backbones.Backbone`; it is called at
    most once per :func:`extract_all`, and not at all on a cache hit.
    """

    name: str
    weights_id: str
    preprocessing: Preprocessing
    load: Callable[[], Backbone]

    @classmethod
    def of(cls, backbone: Backbone) -> BackboneSource:
        """Wrap an already built backbone."""
        return cls(backbone.config.name, backbone.weights_id, backbone.config.preprocessing, lambda: backbone)


def backbone_source(name: str, weights: Any = "default", *, seed: int = 0) -> BackboneSource:
    """A lazy :class:`BackboneSource` for ``jaxheads.backbones.load(name, weights, seed=seed)``.

    The weights id is found without loading: ``random-seed{seed}`` for ``None``, the file's sha256 (first 16 hex
    digits) for a path (what the families' file loaders return), and for a named source the id the family pins
    in ``config.weights_ids`` (so the lazy key equals the key of the built backbone), else ``"named:<name>"``.
    """
    config = backbones.get_config(name)
    if weights == "default":
        weights = config.default_weights
    if weights is None:
        weights_id = f"random-seed{seed}"
    elif isinstance(weights, (str, os.PathLike)) and str(weights) in config.weights:
        weights_id = config.weights_ids.get(str(weights), f"named:{weights}")
    elif isinstance(weights, (str, os.PathLike)) and Path(weights).is_file():
        weights_id = backbones.sha256_file(weights)[:16]
    else:
        weights_id = f"other:{weights}"  # backbones.load gives the clear error when it is called
    loader = functools.cache(lambda: backbones.load(name, weights, seed=seed))
    return BackboneSource(config.name, weights_id, config.preprocessing, loader)


def default_cache_dir() -> Path:
    """``$JAXHEADS_CACHE/features`` (``./checkpoints/features`` when unset): next to the converted backbones."""
    return checkpoint.cache_dir() / "features"


def _as_source(backbone: Backbone | BackboneSource) -> BackboneSource:
    return backbone if isinstance(backbone, BackboneSource) else BackboneSource.of(backbone)


def cache_key(backbone: Backbone | BackboneSource, dataset: data.Dataset, split: str) -> str:
    """The cache directory name for (backbone, dataset split): readable prefix + hash of every input that
    decides the features."""
    source = _as_source(backbone)
    identity = _identity(source, dataset, split)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{source.name}-{dataset.name}-{split}")
    return f"{readable}-{digest}"


def _identity(source: BackboneSource, dataset: data.Dataset, split: str) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "backbone": source.name,
        "weights": source.weights_id,
        "dataset": dataset.fingerprint(split),
        "split": split,
        "input_size": source.preprocessing.input_size,
        "preprocessing": source.preprocessing.key(),
        "resize": data.RESIZE_METHOD,
    }


def extract_features(
    backbone: Backbone | BackboneSource,
    dataset: data.Dataset,
    split: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    need_maps: bool = False,
    batch_size: int = 32,
    chunk_size: int | None = None,
    progress: ProgressFn | None = None,
    strict: bool = False,
    devices: Sequence[jax.Device] | None = None,
    num_workers: int | None = None,
    on_shapes: ShapesFn | None = None,
) -> FeatureSplit:
    """Features of ``dataset``'s ``split`` under ``backbone``: from the cache when a complete one with this key
    exists (and has maps if ``need_maps``), else computed and cached under ``cache_dir`` (default
    :func:`default_cache_dir`).

    One jitted forward per batch of ``batch_size`` images, the batch sharded over ``devices`` (default: all);
    every batch is padded to the same multiple of the device count so there is one compilation, and the padding
    is dropped. Chunks of ``chunk_size`` images (default ``8 * batch_size``, rounded to whole batches) are written
    as they finish, so an interrupted pass resumes at the first unfinished chunk. Unreadable images are skipped
    with a warning (``strict=True`` raises); the returned labels are those of the images kept. ``on_shapes`` (see
    :data:`ShapesFn`) is called when the backbone has to run, never on a cache hit.
    """
    source = _as_source(backbone)
    total = len(dataset.split(split))
    folder = Path(cache_dir or default_cache_dir()) / cache_key(source, dataset, split)
    report = progress or (lambda _: None)
    meta = read_meta(folder, _identity(source, dataset, split))
    if meta is not None and (meta["has_maps"] or not need_maps):
        if strict:
            _refuse_skipped(folder, meta)
        report(Progress(split, total, total, meta["skipped"], cached=True))
        return load_complete(folder, meta, need_maps)
    if (folder / META).exists():  # without the maps now needed (or foreign): recompute, chunks carry both
        (folder / META).unlink()
    batch_size = max(1, batch_size)
    chunk = max(1, math.ceil((chunk_size or 8 * batch_size) / batch_size)) * batch_size
    plan = [(start, min(start + chunk, total)) for start in range(0, total, chunk)]
    done = finished_chunks(folder / CHUNKS, plan, need_maps)
    # Multi-host: process p decodes and runs only chunks p, p+P, ... on its own devices; the chunks meet in the
    # shared cache directory, process 0 assembles them, and the others read the result after a barrier.
    processes, rank = jax.process_count(), jax.process_index()
    todo = [c for k, c in enumerate(plan) if k % processes == rank and c not in done]
    if processes > 1 and devices is None:
        devices = jax.local_devices()
    if todo:
        _compute_chunks(
            source, dataset, split, folder / CHUNKS, todo, done,
            need_maps=need_maps, batch_size=batch_size, report=report, strict=strict,
            devices=devices, num_workers=num_workers, on_shapes=on_shapes,
        )  # fmt: skip
    if processes == 1:
        return assemble(folder, _identity(source, dataset, split), dataset, split, plan, need_maps)
    return load_complete(folder, _assemble_across_hosts(folder, source, dataset, split, plan, need_maps), need_maps)


def _refuse_skipped(folder: Path, meta: Mapping[str, Any]) -> None:
    """A cache built without ``strict`` that left images out must not let a strict run pass."""
    if meta["skipped"]:
        raise data.BadImageError(
            f"{folder.name}: {meta['skipped']} unreadable image(s) were left out when this cache was built "
            f"(first: {', '.join(meta['skipped_names'][:3])}); strict=True fails on them"
        )


def _assemble_across_hosts(
    folder: Path, source: BackboneSource, dataset: data.Dataset, split: str, plan: list[tuple[int, int]],
    need_maps: bool,
) -> dict[str, Any]:
    """After every process wrote its chunks: process 0 assembles them, the others wait; returns the cache's meta."""
    from jax.experimental import multihost_utils

    identity = _identity(source, dataset, split)
    multihost_utils.sync_global_devices(f"jaxheads features {folder.name}: chunks written")
    if jax.process_index() == 0:
        assemble(folder, identity, dataset, split, plan, need_maps)
    multihost_utils.sync_global_devices(f"jaxheads features {folder.name}: assembled")
    meta = read_meta(folder, identity)
    if meta is None:
        raise RuntimeError(f"{folder}: process 0 assembled no cache here; multi-host runs need a cache_dir "
                           "on a filesystem every host shares")
    return meta


def extract_all(
    backbone: Backbone | BackboneSource,
    dataset: data.Dataset,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    splits: Iterable[str] | None = None,
    **kwargs: Any,
) -> dict[str, FeatureSplit]:
    """:func:`extract_features` for every split (default: all the dataset has), building the backbone at most
    once and only if some split is not cached."""
    source = _as_source(backbone)
    shared = dataclasses.replace(source, load=functools.cache(source.load))
    names = list(dataset.splits) if splits is None else list(splits)
    return {name: extract_features(shared, dataset, name, cache_dir=cache_dir, **kwargs) for name in names}


# --------------------------------------------------------------------------------------------------------------
# Computing chunks


def _compute_chunks(
    source: BackboneSource,
    dataset: data.Dataset,
    split: str,
    chunk_dir: Path,
    todo: list[tuple[int, int]],
    done: Mapping[tuple[int, int], Path],
    *,
    need_maps: bool,
    batch_size: int,
    report: ProgressFn,
    strict: bool,
    devices: Sequence[jax.Device] | None,
    num_workers: int | None,
    on_shapes: ShapesFn | None = None,
) -> None:
    """Run the backbone over the images of the chunks in ``todo`` and write each chunk as it completes."""
    backbone = source.load()
    mesh = parallel.make_mesh(1, devices)
    forward = functools.partial(
        _forward, module=backbone.module, preprocessing=backbone.config.preprocessing, need_maps=need_maps,
        mesh=mesh)
    variables = jax.device_put(backbone.variables, parallel.replicated(mesh))
    padded_batch = math.ceil(batch_size / mesh.size) * mesh.size
    if on_shapes is not None:  # the trace is cached: the first batch reuses it
        size = source.preprocessing.input_size
        images = jax.ShapeDtypeStruct((padded_batch, size, size, 3), np.uint8,
                                      sharding=parallel.data_sharding(mesh))
        pooled, maps = forward.func.trace(variables, images, **forward.keywords).out_info
        on_shapes({"pooled": tuple(pooled.shape[1:]), "maps": None if maps is None else tuple(maps.shape[1:])})
    total = len(dataset.split(split))
    finished = sum(b - a for a, b in done)
    report(Progress(split, finished, total))
    indices = np.concatenate([np.arange(a, b) for a, b in todo])
    batches = data.iter_batches(
        dataset.split(split), image_size=source.preprocessing.input_size, batch_size=batch_size,
        indices=indices, strict=strict, num_workers=num_workers,
    )  # fmt: skip
    chunk_dir.mkdir(parents=True, exist_ok=True)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    current = 0
    skipped = 0
    seen = 0
    for batch in batches:
        pooled, maps = _run_batch(forward, variables, batch.images, padded_batch, mesh, need_maps)
        parts.append((batch.indices, pooled, maps))
        seen += len(batch.indices) + len(batch.skipped)
        skipped += len(batch.skipped)
        start, stop = todo[current]
        if seen == stop - start:
            write_chunk(chunk_dir, start, stop, parts, need_maps)
            parts, seen, current = [], 0, current + 1
        finished += len(batch.indices) + len(batch.skipped)
        report(Progress(split, finished, total, skipped))



@functools.partial(jax.jit, static_argnames=("module", "preprocessing", "need_maps", "mesh"))
def _forward(
    variables: Any, images: jax.Array, *, module: Any, preprocessing: Preprocessing, need_maps: bool,
    mesh: jax.sharding.Mesh,
) -> tuple[jax.Array, jax.Array | None]:
    """uint8 images -> (pooled (N, C), maps (N, h, w, C) or None), both float16. Each device runs its rows of the
    batch in micro-batches (``backbones.base.feature_maps``). Module, preprocessing and mesh are static (hashable),
    so every split of a pass and every pass in a process with the same backbone reuses one compilation."""

    def local(variables: Any, images: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        maps = feature_maps(module, variables, images, preprocessing)
        pooled = maps.mean(axis=(1, 2))
        return pooled.astype(jnp.float16), maps.astype(jnp.float16) if need_maps else None

    rows = P(parallel.DATA)
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), rows), out_specs=rows, check_vma=False)(variables, images)


def _run_batch(
    forward: Callable[..., Any],
    variables: Any,
    images: np.ndarray,
    padded_batch: int,
    mesh: jax.sharding.Mesh,
    need_maps: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad ``images`` to the one compiled batch shape, run, and drop the padding rows."""
    n = len(images)
    if n == 0:
        return np.zeros((0, 0), np.float16), None
    padded, _ = parallel.pad_to(images, padded_batch)
    pooled, maps = forward(variables, jax.device_put(padded, parallel.data_sharding(mesh)))
    return np.asarray(pooled)[:n], (np.asarray(maps)[:n] if need_maps else None)

