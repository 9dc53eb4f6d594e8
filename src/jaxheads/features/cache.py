"""The feature cache: extract a dataset's backbone features once per image and read them back as splits."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import jax
import numpy as np

from jaxheads import checkpoint, data
from jaxheads.data.augment import AUGMENT_METHOD, augmented_view
from jaxheads.backbones import Backbone
from jaxheads.data.dataset import image_set_fingerprint
from jaxheads.features.lazy import lazy_gather
from jaxheads.features.source import (BackboneSource, as_source)
from jaxheads.features.compute import PassProgress, ProgressFn, ShapesFn, ShardTask, compute_shards
from jaxheads.features.options import ExtractOptions
from jaxheads.features.store import (FeatureCacheError, Plan, create_plan, gather, gather_taps, is_foreign,
                                    open_shard, read_meta, read_plan, remove_foreign, remove_temporaries, shard_path,
                                    write_meta)
from jaxheads.features.taps import resolve_taps
from jaxheads.features.split import FeatureSplit

__all__ = ["CACHE_FORMAT", "cache_key", "default_cache_dir", "extract_all", "extract_features", "images_key"]

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
    options: ExtractOptions = ExtractOptions(),
    *,
    progress: ProgressFn | None = None,
    on_shapes: ShapesFn | None = None,
) -> FeatureSplit:
    """Features of ``dataset``'s ``split`` under ``backbone``, taken from the per-image cache under
    ``options.cache_dir`` (default :func:`default_cache_dir`); the shards holding images of the split that are not
    cached yet (or lack maps when ``options.need_maps``) are computed first.

    One jitted forward per batch of ``options.batch_size`` images, the batch sharded over ``options.devices``
    (default: all); every batch is padded to the same multiple of the device count so there is one compilation,
    and the padding is dropped. A new cache is cut into shards of ``options.chunk_size`` images (default ``8 *
    batch_size``, rounded to whole batches), written as they finish, so an interrupted pass resumes at the first
    missing shard; an existing cache keeps its shard size. Unreadable images are skipped with a warning
    (``options.strict`` raises); the returned labels are those of the images kept. ``on_shapes`` (see
    :data:`ShapesFn`) is called when the backbone has to run, never on a cache hit. A cache that cannot be written
    raises :class:`FeatureCacheError`.
    """
    return extract_all(backbone, dataset, options, splits=[split], progress=progress, on_shapes=on_shapes)[split]


def extract_all(
    backbone: Backbone | BackboneSource,
    dataset: data.Dataset,
    options: ExtractOptions = ExtractOptions(),
    *,
    splits: Iterable[str] | None = None,
    progress: ProgressFn | None = None,
    on_shapes: ShapesFn | None = None,
) -> dict[str, FeatureSplit]:
    """:func:`extract_features` for every split in ``splits`` (default: all the dataset has), in one pass that
    computes the missing shards of all of them: the backbone is built at most once, and only if some image of
    these splits is not cached.

    Augmented views: with ``options.views`` K > 1 the splits in ``options.view_splits`` (default train alone, what
    heads train on; add "val" when folds pool train and val, "test" for test-time augmentation) also get views
    1..K-1 under the policy ``options.augment`` (:mod:`jaxheads.data.augment`), in ``FeatureSplit.views``. View 0 is
    the plain cache entry, same key and bytes as with K=1; every view v >= 1 is an image-set entry of its own,
    keyed by v and the policy, and cached, sharded, resumed and shared between processes exactly like view 0.
    View v does not depend on K (K=4 computes only views 2 and 3 after K=2). ``on_shapes`` is called at most once.

    Multi-host: every process calls this; process p computes shards p, p+P, ... of those missing, on its own
    devices, into the shared cache; after a barrier each process gathers the splits from the shards (none
    assembles them). Progress is reported per split (and view): ``done`` counts its images handled, including
    those found in the cache. ``options.lazy``: the features are :class:`~jaxheads.features.lazy.LazyRows` over
    the memory-mapped shards, read on demand, instead of in-memory arrays (bit-identical rows)."""
    source = as_source(backbone)
    source = dataclasses.replace(source, load=functools.cache(source.load))
    names = list(dataset.splits) if splits is None else list(splits)
    resolve_taps(options.taps, source.taps, source.name)  # an unknown tap's one-line error, before any work
    for name in names:
        dataset.split(name)  # the clear error for an unknown split, before any work
    shapes = None if on_shapes is None else _once(on_shapes)
    report = progress or (lambda _: None)
    out = _extract_view(source, dataset, names, 0, options, report, shapes)
    viewed = [n for n in names if n in set(options.view_splits)]
    extra = [_extract_view(source, dataset, viewed, v, options,
                           lambda p, v=v: report(p._replace(split=f"{p.split} view {v}")), shapes)
             for v in range(1, options.views if viewed else 1)]
    for name in viewed if extra else ():
        plain = out[name]  # FeatureSplit's __len__ (its examples) breaks NamedTuple._replace
        out[name] = FeatureSplit(plain.labels, plain.pooled, plain.maps,
                                 tuple(_same_examples(plain, e[name], name) for e in extra), plain.taps)
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
                  options: ExtractOptions, report: ProgressFn,
                  on_shapes: ShapesFn | None) -> dict[str, FeatureSplit]:
    """The splits ``names`` of one view's cache entry (view 0: the plain images), computing its missing shards."""
    policy, need = options.augment, _Need(options.need_maps, _stored_taps(source, options))
    ids = {name: dataset.image_ids(name) for name in dataset.splits}
    identity = _identity(source, image_set_fingerprint(ids.values()), view, policy)
    folder = Path(options.cache_dir or default_cache_dir()) / _folder_name(source, dataset, identity["images"],
                                                                            view, policy)
    plan = _plan(folder, identity, ids, _shard_size(options.batch_size, options.chunk_size))
    rows = {name: _rows(plan, ids[name], folder) for name in dataset.splits}
    state = _cache_state(folder, plan, rows, names, need)
    processes, rank = jax.process_count(), jax.process_index()
    todo = [k for k in state.needed if k not in state.complete and k % processes == rank]
    size = source.preprocessing.input_size
    transform = None if view == 0 else (lambda image, row: augmented_view(image, size, plan.rows[row], view, policy))
    if todo:
        local = options.replace(devices=jax.local_devices()) if processes > 1 and options.devices is None else options
        task = ShardTask(plan, rows, folder, todo, state.complete, [n for n in names if n not in state.cached],
                         need.taps)
        compute_shards(source, dataset, task, local, report, on_shapes, transform)
    if processes > 1:
        _await_other_processes(folder, plan, state.needed, need)
    meta = read_meta(folder, identity)
    if rank == 0 and (todo or meta is None or (need.maps and not meta["has_maps"])
                      or (need.taps and not meta.get("has_taps"))):
        _finish(folder, identity, dataset, plan, rows, need.taps)
    out = {}
    for name in names:
        split = dataset.split(name)
        out[name], skipped = _gather_split(folder, plan, split, name, rows[name], options,
                                           resolve_taps(options.taps, source.taps, source.name))
        if name in state.cached:
            report(PassProgress(name, len(split), len(split), skipped, cached=True))
    return out


class _Need(NamedTuple):
    """What a shard must hold besides its pooled features: maps, and the taps it stores (all the backbone's)."""

    maps: bool
    taps: tuple[str, ...]


def _stored_taps(source: BackboneSource, options: ExtractOptions) -> tuple[str, ...]:
    """Every tap of the backbone when any is asked for (a later request for others then runs nothing), else ()."""
    return tuple(source.taps) if resolve_taps(options.taps, source.taps, source.name) else ()


def _shard_size(batch_size: int, chunk_size: int | None) -> int:
    """A new cache's shard size: ``chunk_size`` (default ``8 * batch_size``) rounded up to whole batches."""
    return max(1, math.ceil((chunk_size or 8 * batch_size) / batch_size)) * batch_size


class _CacheState(NamedTuple):
    """Which shards the asked-for splits touch, which of those are complete, and the splits wholly in them."""

    needed: list[int]
    complete: set[int]
    cached: list[str]


def _cache_state(folder: Path, plan: Plan, rows: dict[str, np.ndarray], names: list[str], need: _Need) -> _CacheState:
    wanted = np.unique(np.concatenate([rows[n] for n in names])) if names else np.zeros(0, np.int64)
    needed = np.unique(wanted // plan.shard_size).tolist()
    complete = {k for k in needed if open_shard(folder, *plan.shards[k], need.maps, need.taps) is not None}
    cached = [n for n in names if set(np.unique(rows[n] // plan.shard_size).tolist()) <= complete]
    return _CacheState(needed, complete, cached)


def _await_other_processes(folder: Path, plan: Plan, needed: list[int], need: _Need) -> None:
    """Multi-host: wait until every process wrote its shards, then check all the needed ones are visible here."""
    _sync(f"jaxheads features {folder.name}: shards written")
    absent = [k for k in needed if open_shard(folder, *plan.shards[k], need.maps, need.taps) is None]
    if absent:
        raise RuntimeError(f"{shard_path(folder, *plan.shards[absent[0]], 'kept')}: another process's feature "
                           "shard is not here; multi-host runs need a cache_dir on a filesystem every host shares")


def _gather_split(folder: Path, plan: Plan, split: data.ImageSplit, name: str, rows: np.ndarray,
                  options: ExtractOptions, taps: tuple[str, ...]) -> tuple[FeatureSplit, int]:
    """Split ``name`` read from the cache's shards (``options.lazy``: mapped, read on demand) with its ``taps``, and
    how many of its images were left out as unreadable (a warning names them; ``options.strict`` raises)."""
    need_maps, strict = options.need_maps, options.strict
    kept, pooled, maps = (lazy_gather if options.lazy else gather)(folder, plan, rows, need_maps)
    # In memory even when lazy: one vector per tap and image.
    gathered = gather_taps(folder, plan, rows[kept], taps) if taps else None
    skipped = [split.name(int(i)) for i in np.flatnonzero(~kept)]
    if skipped and strict:
        raise data.BadImageError(
            f"{folder.name}: {len(skipped)} unreadable image(s) of split {name!r} were left out when this cache "
            f"was built (first: {', '.join(skipped[:3])}); strict=True fails on them"
        )
    if skipped:
        _warn_left_out(folder, skipped)
    return FeatureSplit(labels=split.labels[kept], pooled=pooled, maps=maps, taps=gathered), len(skipped)


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
            rows: dict[str, np.ndarray], taps: tuple[str, ...] = ()) -> None:
    """Write meta.json once every shard of the plan is complete (has_maps when every shard has maps; has_taps,
    only then present, when every shard has the ``taps``)."""
    shards = [open_shard(folder, a, b, need_maps=False) for a, b in plan.shards]
    if any(shard is None for shard in shards):
        return
    has_maps = all(open_shard(folder, a, b, need_maps=True) is not None for a, b in plan.shards)
    has_taps = bool(taps) and all(open_shard(folder, a, b, False, taps) is not None for a, b in plan.shards)
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
        **({"has_taps": True} if has_taps else {}),  # absent on a plain cache: its meta stays byte for byte
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
