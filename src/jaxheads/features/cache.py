"""The feature cache: extract a dataset's backbone features once per image and read them back as splits."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import jax
import numpy as np

from jaxheads import checkpoint, data
from jaxheads.data.augment import AUGMENT_METHOD, DEFAULT_POLICY, augmented_view, check_views, parse_policy
from jaxheads.backbones import Backbone
from jaxheads.data.dataset import image_set_fingerprint
from jaxheads.features.lazy import lazy_gather
from jaxheads.features.source import (BackboneSource, as_source, backbone_source, feature_map_shape,
                                     min_input_size)
from jaxheads.features.compute import Progress, ProgressFn, ShapesFn, compute_shards
from jaxheads.features.store import (FeatureCacheError, Plan, create_plan, gather, is_foreign, open_shard, read_meta,
                                    read_plan, remove_foreign, remove_temporaries, shard_path, write_meta)
from jaxheads.features.split import FeatureSplit

__all__ = [
    "CACHE_FORMAT",
    "BackboneSource",
    "FeatureCacheError",
    "Progress",
    "backbone_source",
    "cache_key",
    "default_cache_dir",
    "extract_all",
    "extract_features",
    "feature_map_shape",
    "images_key",
    "min_input_size",
]

CACHE_FORMAT = 2
"""Bump when the on-disk layout or the way features are computed changes (it is part of every key)."""


def default_cache_dir() -> Path:
    """``$JAXHEADS_CACHE/features`` (``./checkpoints/features`` when unset): next to the converted backbones."""
    return checkpoint.cache_dir() / "features"


def images_key(backbone: Backbone | BackboneSource, dataset: data.Dataset) -> str:
    """The cache directory name for (backbone, the dataset's set of images): readable prefix + hash of every input
    that decides the features. The same for every way of splitting the same images."""
    source = as_source(backbone)
    return _folder_name(source, dataset, dataset.images_fingerprint())


def cache_key(backbone: Backbone | BackboneSource, dataset: data.Dataset, split: str) -> str:
    """A name for one split's features: :func:`images_key`'s inputs plus the split's fingerprint (which images,
    in which order, with which labels). The cache itself is per image set (:func:`images_key`); this names what a
    caller derives from one split."""
    source = as_source(backbone)
    identity = {**_identity(source, dataset.images_fingerprint()), "split": split,
                "dataset": dataset.fingerprint(split)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{source.name}-{dataset.name}-{split}")
    return f"{readable}-{digest}"


def _folder_name(source: BackboneSource, dataset: data.Dataset, images: str, view: int = 0,
                 policy: Sequence[str] = ()) -> str:
    identity = _identity(source, images, view, policy)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{source.name}-{dataset.name}" + (f"-view{view}" if view else ""))
    return f"{readable}-{digest}"


def _identity(source: BackboneSource, images: str, view: int = 0, policy: Sequence[str] = ()) -> dict[str, Any]:
    # View 0 keeps the key it had before views existed, so a K-view cache reads the plain cache as its view 0.
    augmented = {"view": view, "augment": list(policy), "augment_method": AUGMENT_METHOD} if view else {}
    return {
        **augmented,
        "format": CACHE_FORMAT,
        "backbone": source.name,
        "weights": source.weights_id,
        "images": images,
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
    """Features of ``dataset``'s ``split`` under ``backbone``, taken from the per-image cache under ``cache_dir``
    (default :func:`default_cache_dir`); the shards holding images of the split that are not cached yet (or lack
    maps when ``need_maps``) are computed first.

    One jitted forward per batch of ``batch_size`` images, the batch sharded over ``devices`` (default: all);
    every batch is padded to the same multiple of the device count so there is one compilation, and the padding
    is dropped. A new cache is cut into shards of ``chunk_size`` images (default ``8 * batch_size``, rounded to
    whole batches), written as they finish, so an interrupted pass resumes at the first missing shard; an existing
    cache keeps its shard size. Unreadable images are skipped with a warning (``strict=True`` raises); the
    returned labels are those of the images kept. ``on_shapes`` (see :data:`ShapesFn`) is called when the
    backbone has to run, never on a cache hit. A cache that cannot be written raises :class:`FeatureCacheError`.
    """
    return extract_all(
        backbone, dataset, splits=[split], cache_dir=cache_dir, need_maps=need_maps, batch_size=batch_size,
        chunk_size=chunk_size, progress=progress, strict=strict, devices=devices, num_workers=num_workers,
        on_shapes=on_shapes,
    )[split]  # fmt: skip


def extract_all(
    backbone: Backbone | BackboneSource,
    dataset: data.Dataset,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    splits: Iterable[str] | None = None,
    need_maps: bool = False,
    batch_size: int = 32,
    chunk_size: int | None = None,
    progress: ProgressFn | None = None,
    strict: bool = False,
    devices: Sequence[jax.Device] | None = None,
    num_workers: int | None = None,
    on_shapes: ShapesFn | None = None,
    views: int = 1,
    augment: str | Sequence[str] = DEFAULT_POLICY,
    view_splits: Iterable[str] = ("train",),
    lazy: bool = False,
) -> dict[str, FeatureSplit]:
    """:func:`extract_features` for every split in ``splits`` (default: all the dataset has), in one pass that
    computes the missing shards of all of them: the backbone is built at most once, and only if some image of
    these splits is not cached.

    Augmented views: with ``views`` K > 1 the splits in ``view_splits`` (default train alone, what heads train on;
    add "val" when folds pool train and val, "test" for test-time augmentation) also get views 1..K-1 under the
    policy ``augment`` (:mod:`jaxheads.data.augment`), in ``FeatureSplit.views``. View 0 is the plain cache entry, same
    key and bytes as with K=1; every view v >= 1 is an image-set entry of its own, keyed by v and the policy, and
    cached, sharded, resumed and shared between processes exactly like view 0. View v does not depend on K (K=4
    computes only views 2 and 3 after K=2). ``on_shapes`` is called at most once.

    Multi-host: every process calls this; process p computes shards p, p+P, ... of those missing, on its own
    devices, into the shared ``cache_dir``; after a barrier each process gathers the splits from the shards
    (none assembles them). Progress is reported per split (and view): ``done`` counts its images handled,
    including those found in the cache. ``lazy``: the features are :class:`~jaxheads.features.lazy.LazyRows` over
    the memory-mapped shards, read on demand, instead of in-memory arrays (bit-identical rows)."""
    views, policy = check_views(views), parse_policy(augment)
    source = as_source(backbone)
    source = dataclasses.replace(source, load=functools.cache(source.load))
    names = list(dataset.splits) if splits is None else list(splits)
    for name in names:
        dataset.split(name)  # the clear error for an unknown split, before any work
    options = {"cache_dir": cache_dir, "need_maps": need_maps, "batch_size": max(1, batch_size),
               "chunk_size": chunk_size, "strict": strict, "devices": devices, "num_workers": num_workers,
               "on_shapes": None if on_shapes is None else _once(on_shapes), "lazy": lazy}
    report = progress or (lambda _: None)
    out = _extract_view(source, dataset, names, 0, policy, report, **options)
    viewed = [n for n in names if n in set(view_splits)]
    extra = [_extract_view(source, dataset, viewed, v, policy,
                           lambda p, v=v: report(p._replace(split=f"{p.split} view {v}")), **options)
             for v in range(1, views if viewed else 1)]
    for name in viewed if extra else ():
        plain = out[name]  # FeatureSplit's __len__ (its examples) breaks NamedTuple._replace
        out[name] = FeatureSplit(plain.labels, plain.pooled, plain.maps,
                                 tuple(_same_examples(plain, e[name], name) for e in extra))
    return out


def _once(on_shapes: ShapesFn) -> ShapesFn:
    """``on_shapes`` called on the first pass that runs the backbone only (one pass per view)."""
    called: list[bool] = []

    def call(shapes: dict[str, Any]) -> None:
        if not called:
            called.append(True)
            on_shapes(shapes)

    return call


def _same_examples(plain: FeatureSplit, view: FeatureSplit, name: str) -> FeatureSplit:
    """An augmented view, checked to hold the plain split's examples (an unreadable image is left out of all)."""
    if not np.array_equal(plain.labels, view.labels):
        raise FeatureCacheError(f"split {name!r}: an augmented view holds other examples than the plain images")
    return view


def _extract_view(source: BackboneSource, dataset: data.Dataset, names: list[str], view: int,
                  policy: tuple[str, ...], report: ProgressFn, *, cache_dir: str | os.PathLike[str] | None,
                  need_maps: bool, batch_size: int, chunk_size: int | None, strict: bool,
                  devices: Sequence[jax.Device] | None, num_workers: int | None,
                  on_shapes: ShapesFn | None, lazy: bool = False) -> dict[str, FeatureSplit]:
    """The splits ``names`` of one view's cache entry (view 0: the plain images), computing its missing shards."""
    ids = {name: dataset.image_ids(name) for name in dataset.splits}
    identity = _identity(source, image_set_fingerprint(ids.values()), view, policy)
    folder = Path(cache_dir or default_cache_dir()) / _folder_name(source, dataset, identity["images"], view, policy)
    plan = _plan(folder, identity, ids, _shard_size(batch_size, chunk_size))
    rows = {name: _rows(plan, ids[name], folder) for name in dataset.splits}
    state = _cache_state(folder, plan, rows, names, need_maps)
    processes, rank = jax.process_count(), jax.process_index()
    todo = [k for k in state.needed if k not in state.complete and k % processes == rank]
    size = source.preprocessing.input_size
    transform = None if view == 0 else (lambda image, row: augmented_view(image, size, plan.rows[row], view, policy))
    if todo:
        compute_shards(
            source, dataset, plan, rows, folder, todo, state.complete, [n for n in names if n not in state.cached],
            need_maps=need_maps, batch_size=batch_size, report=report, strict=strict,
            devices=jax.local_devices() if processes > 1 and devices is None else devices,
            num_workers=num_workers, on_shapes=on_shapes, transform=transform,
        )  # fmt: skip
    if processes > 1:
        _await_other_processes(folder, plan, state.needed, need_maps)
    meta = read_meta(folder, identity)
    if rank == 0 and (todo or meta is None or (need_maps and not meta["has_maps"])):
        _finish(folder, identity, dataset, plan, rows)
    out = {}
    for name in names:
        split = dataset.split(name)
        out[name], skipped = _gather_split(folder, plan, split, name, rows[name], need_maps=need_maps, strict=strict,
                                             lazy=lazy)
        if name in state.cached:
            report(Progress(name, len(split), len(split), skipped, cached=True))
    return out


def _shard_size(batch_size: int, chunk_size: int | None) -> int:
    """A new cache's shard size: ``chunk_size`` (default ``8 * batch_size``) rounded up to whole batches."""
    return max(1, math.ceil((chunk_size or 8 * batch_size) / batch_size)) * batch_size


class _CacheState(NamedTuple):
    """Which shards the asked-for splits touch, which of those are complete, and the splits wholly in them."""

    needed: list[int]
    complete: set[int]
    cached: list[str]


def _cache_state(folder: Path, plan: Plan, rows: dict[str, np.ndarray], names: list[str],
                 need_maps: bool) -> _CacheState:
    wanted = np.unique(np.concatenate([rows[n] for n in names])) if names else np.zeros(0, np.int64)
    needed = np.unique(wanted // plan.shard_size).tolist()
    complete = {k for k in needed if open_shard(folder, *plan.shards[k], need_maps) is not None}
    cached = [n for n in names if set(np.unique(rows[n] // plan.shard_size).tolist()) <= complete]
    return _CacheState(needed, complete, cached)


def _await_other_processes(folder: Path, plan: Plan, needed: list[int], need_maps: bool) -> None:
    """Multi-host: wait until every process wrote its shards, then check all the needed ones are visible here."""
    _sync(f"jaxheads features {folder.name}: shards written")
    absent = [k for k in needed if open_shard(folder, *plan.shards[k], need_maps) is None]
    if absent:
        raise RuntimeError(f"{shard_path(folder, *plan.shards[absent[0]], 'kept')}: another process's feature "
                           "shard is not here; multi-host runs need a cache_dir on a filesystem every host shares")


def _gather_split(folder: Path, plan: Plan, split: data.ImageSplit, name: str, rows: np.ndarray, *,
                  need_maps: bool, strict: bool, lazy: bool = False) -> tuple[FeatureSplit, int]:
    """Split ``name`` read from the cache's shards (``lazy``: mapped, read on demand), and how many of its images
    were left out as unreadable (a warning names them; ``strict`` raises instead)."""
    kept, pooled, maps = (lazy_gather if lazy else gather)(folder, plan, rows, need_maps)
    skipped = [split.name(int(i)) for i in np.flatnonzero(~kept)]
    if skipped and strict:
        raise data.BadImageError(
            f"{folder.name}: {len(skipped)} unreadable image(s) of split {name!r} were left out when this cache "
            f"was built (first: {', '.join(skipped[:3])}); strict=True fails on them"
        )
    if skipped:
        _warn_left_out(folder, skipped)
    return FeatureSplit(labels=split.labels[kept], pooled=pooled, maps=maps), len(skipped)


def _warn_left_out(folder: Path, skipped: list[str]) -> None:
    warnings.warn(
        f"{folder.name}: {len(skipped)} unreadable image(s) were left out when this cache was built "
        f"(first: {', '.join(skipped[:3])})",
        data.BadImageWarning,
        stacklevel=4,  # the caller of extract_all (via _gather_split)
    )


def _sync(name: str) -> None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _plan(folder: Path, identity: dict[str, Any], ids: dict[str, np.ndarray], shard_size: int) -> Plan:
    """The cache's plan: the one on disk, else a new one (rows: the images split by split, each image once) that
    process 0 creates before any shard (a run sharing the cache that created one first wins, and its plan is
    read). A directory holding another cache's plan or meta is emptied first."""
    processes, rank = jax.process_count(), jax.process_index()
    if rank == 0:
        if is_foreign(folder, identity):
            remove_foreign(folder)
        if read_plan(folder, identity) is None:
            every = np.concatenate(list(ids.values())) if ids else np.zeros(0, "S32")
            _, first = np.unique(every, return_index=True)
            create_plan(folder, identity, Plan(every[np.sort(first)], shard_size))
    if processes > 1:
        _sync(f"jaxheads features {folder.name}: plan written")
    plan = read_plan(folder, identity)
    if plan is None:
        raise RuntimeError(f"{folder}: process 0 wrote no feature-cache plan here; multi-host runs need a "
                           "cache_dir on a filesystem every host shares")
    return plan


def _rows(plan: Plan, ids: np.ndarray, folder: Path) -> np.ndarray:
    rows = plan.rows_of(ids)
    if rows is None:  # read_plan checked the plan holds exactly this image set
        raise RuntimeError(f"{folder}: the feature-cache plan does not list every image of the dataset")
    return rows


def _finish(folder: Path, identity: dict[str, Any], dataset: data.Dataset, plan: Plan,
            rows: dict[str, np.ndarray]) -> None:
    """Write meta.json once every shard of the plan is complete (has_maps when every shard has maps)."""
    shards = [open_shard(folder, a, b, need_maps=False) for a, b in plan.shards]
    if any(shard is None for shard in shards):
        return
    has_maps = all(open_shard(folder, a, b, need_maps=True) is not None for a, b in plan.shards)
    kept = np.concatenate([shard.kept for shard in shards]) if shards else np.zeros(0, bool)
    skipped = np.flatnonzero(~kept)
    names = _row_names(dataset, rows, skipped[:100])
    meta = {
        **identity,
        "dataset_name": dataset.name,
        "count": len(plan.rows),
        "shard_size": plan.shard_size,
        "shards": [list(s) for s in plan.shards],
        "has_maps": has_maps,
        "skipped": len(skipped),
        "skipped_names": names,
        "pooled_shape": [len(plan.rows), *(shards[0].pooled.shape[1:] if shards else ())],
    }
    write_meta(folder, meta)
    remove_temporaries(folder)


def _row_names(dataset: data.Dataset, rows: dict[str, np.ndarray], wanted: np.ndarray) -> list[str]:
    """What to call the images in rows ``wanted``, for messages."""
    names: dict[int, str] = {}
    for split, split_rows in rows.items():
        for i in np.flatnonzero(np.isin(split_rows, wanted)):
            names.setdefault(int(split_rows[i]), dataset.split(split).name(int(i)))
    return [names[int(r)] for r in wanted]
