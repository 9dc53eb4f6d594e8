"""The backbone pass behind the feature cache: run the frozen backbone over the rows of the missing shards and write
each shard as soon as all its rows are handled.

:mod:`jaxheads.features` decides which shards are missing (and owns the cache's keys and public API); this module
only computes them. One jitted forward per batch, sharded over the devices; every batch is padded to one shape so
there is one compilation, and the padding is dropped. Unreadable images become rows of zeros marked not kept.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from PIL import Image

from jaxheads import data, parallel
from jaxheads.backbones import Preprocessing
from jaxheads.backbones.base import feature_maps
from jaxheads.features.store import Plan, write_shard

if TYPE_CHECKING:
    from jaxheads.features.source import BackboneSource

__all__ = ["Progress", "ProgressFn", "ShapesFn", "compute_shards"]


class Progress(NamedTuple):
    """One progress report: ``done`` of ``total`` images of ``split`` handled (``skipped`` of them unreadable);
    ``cached`` when every image of the split was in the cache before the call (the backbone did not run for it)."""

    split: str
    done: int
    total: int
    skipped: int = 0
    cached: bool = False


ProgressFn = Callable[[Progress], None]
ShapesFn = Callable[[dict[str, "tuple[int, ...] | None"]], None]
"""Called with ``{"pooled": (C,), "maps": (h, w, C) or None}`` once the backbone's forward is traced, before it runs:
what a sweep needs to compile its programs while the features are computed (``jaxheads.job``)."""


def compute_shards(
    source: BackboneSource,
    dataset: data.Dataset,
    plan: Plan,
    rows: dict[str, np.ndarray],
    folder: Path,
    todo: list[int],
    complete: set[int],
    reported: list[str],
    *,
    need_maps: bool,
    batch_size: int,
    report: ProgressFn,
    strict: bool,
    devices: Sequence[jax.Device] | None,
    num_workers: int | None,
    on_shapes: ShapesFn | None = None,
    transform: Callable[[Image.Image, int], np.ndarray] | None = None,
) -> None:
    """Run the backbone over the rows of the shards in ``todo`` and write each shard as it completes; progress is
    reported for the splits in ``reported``. ``transform(image, plan row)`` renders an augmented view's pixels
    instead of the plain resize+crop."""
    runner = _Runner.build(source, need_maps=need_maps, batch_size=batch_size, devices=devices)
    if on_shapes is not None:
        on_shapes({"pooled": runner.pooled_shape, "maps": runner.maps_shape})
    progress = _SplitProgress(plan, rows, reported, complete, report)
    indices = np.concatenate([np.arange(*plan.shards[k]) for k in todo])
    batches = data.iter_batches(
        _pool(dataset, plan, rows), image_size=source.preprocessing.input_size, batch_size=batch_size,
        indices=indices, strict=strict, num_workers=num_workers, transform=transform,
    )  # fmt: skip
    writer = _ShardWriter(folder, plan, runner.pooled_shape, runner.maps_shape)
    for batch in batches:
        pooled, maps = runner.run(batch.images)
        writer.add(batch.indices, batch.skipped, pooled, maps)
        progress.advance(batch.indices, batch.skipped)


def _pool(dataset: data.Dataset, plan: Plan, rows: dict[str, np.ndarray]) -> data.ImageSplit:
    """The plan's rows as one ImageSplit (each row's source and name, from the first split holding it)."""
    where: list[tuple[str, int] | None] = [None] * len(plan.rows)
    for split, split_rows in rows.items():
        for i, r in enumerate(split_rows.tolist()):
            if where[r] is None:
                where[r] = (split, i)
    sources = [dataset.split(s).sources[i] for s, i in where]
    names = [dataset.split(s).name(i) for s, i in where]
    return data.ImageSplit(sources, np.zeros(len(sources), np.int32), names)


class _Runner(NamedTuple):
    """The backbone's jitted forward, placed on a mesh, with the output shapes of its one traced batch shape."""

    forward: functools.partial
    variables: Any
    mesh: jax.sharding.Mesh
    padded_batch: int
    need_maps: bool
    pooled_shape: tuple[int, ...]
    maps_shape: tuple[int, ...] | None

    @classmethod
    def build(cls, source: BackboneSource, *, need_maps: bool, batch_size: int,
              devices: Sequence[jax.Device] | None) -> _Runner:
        backbone = source.load()
        mesh = parallel.make_mesh(1, devices)
        forward = functools.partial(
            _forward, module=backbone.module, preprocessing=backbone.config.preprocessing, need_maps=need_maps,
            mesh=mesh)
        variables = jax.device_put(backbone.variables, parallel.replicated(mesh))
        padded_batch = math.ceil(batch_size / mesh.size) * mesh.size
        size = source.preprocessing.input_size
        images = jax.ShapeDtypeStruct((padded_batch, size, size, 3), np.uint8,
                                      sharding=parallel.data_sharding(mesh))
        # The trace is cached (the first batch reuses it); its shapes size the zero rows of unreadable images.
        out_pooled, out_maps = forward.func.trace(variables, images, **forward.keywords).out_info
        maps_shape = None if out_maps is None else tuple(out_maps.shape[1:])
        return cls(forward, variables, mesh, padded_batch, need_maps, tuple(out_pooled.shape[1:]), maps_shape)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return _run_batch(self.forward, self.variables, images, self.padded_batch, self.mesh, self.need_maps)


class _SplitProgress:
    """Per split: items handled so far (found in the cache or computed) and skipped as unreadable, reported as they
    change."""

    def __init__(self, plan: Plan, rows: dict[str, np.ndarray], reported: list[str], complete: set[int],
                 report: ProgressFn):
        self.reported, self.report = reported, report
        self.totals = {n: len(rows[n]) for n in reported}
        # How many of a split's items each row is (an image listed twice counts twice).
        self.per_row = {n: np.bincount(rows[n], minlength=len(plan.rows)) for n in reported}
        in_complete = np.zeros(len(plan.rows), bool)
        for k in complete:
            in_complete[slice(*plan.shards[k])] = True
        self.done = {n: int(self.per_row[n][in_complete].sum()) for n in reported}
        self.skipped = {n: 0 for n in reported}
        for n in reported:
            report(Progress(n, self.done[n], self.totals[n]))

    def advance(self, indices: np.ndarray, skipped: np.ndarray) -> None:
        """Count a batch's rows: ``indices`` computed, ``skipped`` unreadable."""
        for n in self.reported:
            per_row = self.per_row[n]
            handled = int(per_row[indices].sum() + per_row[skipped].sum())
            if handled:
                self.done[n] += handled
                self.skipped[n] += int(per_row[skipped].sum())
                self.report(Progress(n, self.done[n], self.totals[n], self.skipped[n]))


class _ShardBuffer:
    """One shard's rows while its batches come in; full when every row was handled (kept or skipped)."""

    def __init__(self, start: int, stop: int, pooled_shape: tuple[int, ...], maps_shape: tuple[int, ...] | None):
        self.start, self.stop = start, stop
        self.pooled = np.zeros((stop - start, *pooled_shape), np.float16)
        self.maps = None if maps_shape is None else np.zeros((stop - start, *maps_shape), np.float16)
        self.kept = np.zeros(stop - start, bool)
        self.handled = 0

    def put(self, rows: np.ndarray, pooled: np.ndarray, maps: np.ndarray | None, skipped: int) -> None:
        """Store the computed ``rows`` (plan row numbers) and count them and ``skipped`` unreadable rows handled."""
        if len(rows):
            local = rows - self.start
            self.pooled[local] = pooled
            if self.maps is not None:
                self.maps[local] = maps
            self.kept[local] = True
        self.handled += len(rows) + skipped

    @property
    def full(self) -> bool:
        return self.handled == self.stop - self.start


class _ShardWriter:
    """Routes each batch's rows into their shards' buffers and writes a shard once every row of it was handled."""

    def __init__(self, folder: Path, plan: Plan, pooled_shape: tuple[int, ...],
                 maps_shape: tuple[int, ...] | None):
        self.folder, self.plan = folder, plan
        self.pooled_shape, self.maps_shape = pooled_shape, maps_shape
        self.buffers: dict[int, _ShardBuffer] = {}

    def add(self, indices: np.ndarray, skipped: np.ndarray, pooled: np.ndarray, maps: np.ndarray | None) -> None:
        """A batch: ``pooled``/``maps`` of the rows ``indices``, and the unreadable rows ``skipped``."""
        shard_size = self.plan.shard_size
        for k in np.unique(np.concatenate([indices, skipped]) // shard_size).tolist():
            if k not in self.buffers:
                self.buffers[k] = _ShardBuffer(*self.plan.shards[k], self.pooled_shape, self.maps_shape)
            buffer = self.buffers[k]
            mine = np.flatnonzero(indices // shard_size == k)
            buffer.put(indices[mine], pooled[mine], None if maps is None else maps[mine],
                       int(np.sum(skipped // shard_size == k)))
            if buffer.full:
                write_shard(self.folder, buffer.start, buffer.stop, buffer.pooled, buffer.maps, buffer.kept)
                del self.buffers[k]


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
