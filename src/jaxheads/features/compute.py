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
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from PIL import Image

from jaxheads import data, parallel
from jaxheads.backbones import Preprocessing
from jaxheads.backbones.base import feature_maps, tapped_features
from jaxheads.features.store import Plan, open_shard, write_shard, write_taps
from jaxheads.features.taps import pool_tap

if TYPE_CHECKING:
    from jaxheads.features.options import ExtractOptions
    from jaxheads.features.source import BackboneSource

__all__ = ["PassProgress", "ProgressFn", "ShapesFn", "ShardTask", "compute_shards"]


class PassProgress(NamedTuple):
    """One progress report: ``done`` of ``total`` images of ``split`` handled (``skipped`` of them unreadable);
    ``cached`` when every image of the split was in the cache before the call (the backbone did not run for it)."""

    split: str
    done: int
    total: int
    skipped: int = 0
    cached: bool = False


ProgressFn = Callable[[PassProgress], None]
ShapesFn = Callable[[dict[str, "tuple[int, ...] | None"]], None]
"""Called with ``{"pooled": (C,), "maps": (h, w, C) or None}`` once the backbone's forward is traced, before it runs:
what a sweep needs to compile its programs while the features are computed (``jaxheads.job``)."""


class ShardTask(NamedTuple):
    """Which shards of which cache entry to compute: the entry's ``plan``, every split's plan ``rows``, its
    ``folder``; the shard numbers ``todo``, those already ``complete``, the splits whose progress is
    ``reported``, and the ``taps`` to store."""

    plan: Plan
    rows: dict[str, np.ndarray]
    folder: Path
    todo: list[int]
    complete: set[int]
    reported: list[str]
    taps: tuple[str, ...] = ()
    """The taps each computed shard stores (every tap of the backbone, or none)."""


def compute_shards(
    source: BackboneSource,
    dataset: data.Dataset,
    task: ShardTask,
    options: ExtractOptions,
    report: ProgressFn,
    on_shapes: ShapesFn | None = None,
    transform: Callable[[Image.Image, int], np.ndarray] | None = None,
) -> None:
    """Run the backbone over the rows of the shards in ``task.todo`` and write each shard as it completes; progress
    is reported for the splits in ``task.reported``. ``transform(image, plan row)`` renders an augmented view's
    pixels instead of the plain resize+crop."""
    plan, rows = task.plan, task.rows
    runner = _Runner.build(source, options, task.taps)
    if on_shapes is not None:
        on_shapes({"pooled": runner.shapes.pooled, "maps": runner.shapes.maps})
    progress = _SplitProgress(plan, rows, task.reported, task.complete, report)
    indices = np.concatenate([np.arange(*plan.shards[k]) for k in task.todo])
    batches = data.iter_batches(
        _pool(dataset, plan, rows), image_size=source.preprocessing.input_size, batch_size=options.batch_size,
        indices=indices, strict=options.strict, num_workers=options.num_workers, transform=transform,
    )  # fmt: skip
    writer = _ShardWriter(task.folder, plan, runner.shapes)
    for batch in batches:
        writer.add(batch.indices, batch.skipped, runner.run(batch.images))
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


class Outputs(NamedTuple):
    """A batch's features: ``pooled`` (n, C), ``maps`` (n, h, w, C) or None, ``taps`` {name: (n, D)} (maybe empty)."""

    pooled: np.ndarray
    maps: np.ndarray | None
    taps: dict[str, np.ndarray]


class _Runner(NamedTuple):
    """The backbone's jitted forward, placed on a mesh, with the output shapes of its one traced batch shape."""

    forward: functools.partial
    variables: Any
    mesh: jax.sharding.Mesh
    padded_batch: int
    shapes: Outputs
    """Each output's shape per row (``taps``: {name: (D,)}), from the one trace."""

    @classmethod
    def build(cls, source: BackboneSource, options: ExtractOptions, taps: tuple[str, ...]) -> _Runner:
        backbone = source.load()
        mesh = parallel.make_mesh(1, options.devices)
        forward = functools.partial(
            _forward, module=backbone.module, preprocessing=backbone.config.preprocessing,
            need_maps=options.need_maps, taps=taps, mesh=mesh)
        variables = jax.device_put(backbone.variables, parallel.replicated(mesh))
        padded_batch = math.ceil(options.batch_size / mesh.size) * mesh.size
        size = source.preprocessing.input_size
        images = jax.ShapeDtypeStruct((padded_batch, size, size, 3), np.uint8,
                                      sharding=parallel.data_sharding(mesh))
        # The trace is cached (the first batch reuses it); its shapes size the zero rows of unreadable images.
        out_pooled, out_maps, out_taps = forward.func.trace(variables, images, **forward.keywords).out_info
        shapes = Outputs(tuple(out_pooled.shape[1:]), None if out_maps is None else tuple(out_maps.shape[1:]),
                         {name: tuple(info.shape[1:]) for name, info in out_taps.items()})
        return cls(forward, variables, mesh, padded_batch, shapes)

    def run(self, images: np.ndarray) -> Outputs:
        """Pad ``images`` to the one compiled batch shape, run, and drop the padding rows."""
        n = len(images)
        if n == 0:
            return Outputs(np.zeros((0, 0), np.float16), None, {})
        padded, _ = parallel.pad_to(images, self.padded_batch)
        pooled, maps, taps = self.forward(self.variables, jax.device_put(padded, parallel.data_sharding(self.mesh)))
        return Outputs(np.asarray(pooled)[:n], None if maps is None else np.asarray(maps)[:n],
                       {name: np.asarray(tap)[:n] for name, tap in taps.items()})


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
            report(PassProgress(n, self.done[n], self.totals[n]))

    def advance(self, indices: np.ndarray, skipped: np.ndarray) -> None:
        """Count a batch's rows: ``indices`` computed, ``skipped`` unreadable."""
        for n in self.reported:
            per_row = self.per_row[n]
            handled = int(per_row[indices].sum() + per_row[skipped].sum())
            if handled:
                self.done[n] += handled
                self.skipped[n] += int(per_row[skipped].sum())
                self.report(PassProgress(n, self.done[n], self.totals[n], self.skipped[n]))


class _ShardBuffer:
    """One shard's rows while its batches come in; full when every row was handled (kept or skipped)."""

    def __init__(self, start: int, stop: int, shapes: Outputs):
        self.start, self.stop = start, stop
        rows = stop - start
        self.pooled = np.zeros((rows, *shapes.pooled), np.float16)
        self.maps = None if shapes.maps is None else np.zeros((rows, *shapes.maps), np.float16)
        self.taps = {name: np.zeros((rows, *shape), np.float16) for name, shape in shapes.taps.items()}
        self.kept = np.zeros(rows, bool)
        self.handled = 0

    def put(self, rows: np.ndarray, outputs: Outputs, skipped: int) -> None:
        """Store the computed ``rows`` (plan row numbers) and count them and ``skipped`` unreadable rows handled."""
        if len(rows):
            local = rows - self.start
            self.pooled[local] = outputs.pooled
            if self.maps is not None:
                self.maps[local] = outputs.maps
            for name, tap in self.taps.items():
                tap[local] = outputs.taps[name]
            self.kept[local] = True
        self.handled += len(rows) + skipped

    @property
    def full(self) -> bool:
        return self.handled == self.stop - self.start


class _ShardWriter:
    """Routes each batch's rows into their shards' buffers and writes a shard once every row of it was handled."""

    def __init__(self, folder: Path, plan: Plan, shapes: Outputs):
        self.folder, self.plan, self.shapes = folder, plan, shapes
        self.buffers: dict[int, _ShardBuffer] = {}

    def add(self, indices: np.ndarray, skipped: np.ndarray, outputs: Outputs) -> None:
        """A batch: the ``outputs`` of the rows ``indices``, and the unreadable rows ``skipped``."""
        shard_size = self.plan.shard_size
        for k in np.unique(np.concatenate([indices, skipped]) // shard_size).tolist():
            if k not in self.buffers:
                self.buffers[k] = _ShardBuffer(*self.plan.shards[k], self.shapes)
            buffer = self.buffers[k]
            mine = np.flatnonzero(indices // shard_size == k)
            buffer.put(indices[mine], Outputs(outputs.pooled[mine], None if outputs.maps is None else
                                              outputs.maps[mine], {n: t[mine] for n, t in outputs.taps.items()}),
                       int(np.sum(skipped // shard_size == k)))
            if buffer.full:
                self._write(buffer)
                del self.buffers[k]

    def _write(self, buffer: _ShardBuffer) -> None:
        """The shard's files; only its taps when its plain features (and maps, if asked) are complete already, so
        adding taps never rewrites the bytes a plain pass wrote."""
        start, stop, need_maps = buffer.start, buffer.stop, buffer.maps is not None
        if buffer.taps and open_shard(self.folder, start, stop, need_maps) is not None:
            write_taps(self.folder, start, stop, buffer.taps)
        else:
            write_shard(self.folder, start, stop, buffer.pooled, buffer.maps, buffer.kept, buffer.taps or None)


@functools.partial(jax.jit, static_argnames=("module", "preprocessing", "need_maps", "taps", "mesh"))
def _forward(
    variables: Any, images: jax.Array, *, module: Any, preprocessing: Preprocessing, need_maps: bool,
    taps: tuple[str, ...], mesh: jax.sharding.Mesh,
) -> tuple[jax.Array, jax.Array | None, dict[str, jax.Array]]:
    """uint8 images -> (pooled (N, C), maps (N, h, w, C) or None, {tap: (N, 2C)}), all float16. Each device runs
    its rows of the batch in micro-batches (``backbones.base``). With no ``taps`` the forward is the plain
    ``feature_maps`` one, so the ``last`` features are computed exactly as before taps existed. Module,
    preprocessing and mesh are static (hashable), so every split of a pass and every pass in a process with the
    same backbone reuses one compilation."""

    def local(variables: Any, images: jax.Array) -> tuple[jax.Array, jax.Array | None, dict[str, jax.Array]]:
        if taps:
            maps, pooled_taps = tapped_features(module, variables, images, preprocessing, pool_tap, taps)
        else:
            maps, pooled_taps = feature_maps(module, variables, images, preprocessing), {}
        pooled = maps.mean(axis=(1, 2))
        return (pooled.astype(jnp.float16), maps.astype(jnp.float16) if need_maps else None,
                {name: tap.astype(jnp.float16) for name, tap in pooled_taps.items()})

    rows = P(parallel.DATA)
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), rows), out_specs=rows, check_vma=False)(variables, images)
