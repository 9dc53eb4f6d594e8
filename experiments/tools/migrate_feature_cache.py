"""Carry a feature cache of the old per-split layout (format 1: ``<backbone>-<dataset>-<split>-<hash>/`` with
``indices.npy``, ``pooled.npy``, ``maps.npy`` and ``meta.json``) over to the per-image sharded layout
(:mod:`jaxheads.features.store`), so a dataset whose features were computed before the change is not computed again.

The old caches are copied, not recomputed: each must say (in its meta.json) that it was built from this backbone,
weights, preprocessing and resize, and from exactly this split of the dataset (its fingerprint). Every image of the
dataset must be covered, by a kept row or by the list of images left out.

    python experiments/tools/migrate_feature_cache.py --dataset elpv --backbone efficientnet_lite0 --seed 0

``--batch-size`` gives the shard size a fresh pass would use (8 batches of it: the job's default is 64).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from jaxheads import data, features
from jaxheads.features.store import open_shard, write_shard


def old_split_caches(cache_dir: Path, source: features.BackboneSource, ds: data.Dataset) -> dict[str, Path]:
    """The format-1 cache directory of every split of ``ds``, checked against its meta.json."""
    found = {}
    for split in ds.splits:
        for folder in sorted(cache_dir.glob(f"{source.name}-{ds.name}-{split}-*")):
            try:
                meta = json.loads((folder / "meta.json").read_text())
            except (OSError, ValueError):
                continue
            want = {"format": 1, "backbone": source.name, "weights": source.weights_id, "split": split,
                    "dataset": ds.fingerprint(split), "input_size": source.preprocessing.input_size,
                    "preprocessing": source.preprocessing.key(), "resize": data.RESIZE_METHOD}
            if all(meta.get(k) == v for k, v in want.items()):
                found[split] = folder
    missing = [s for s in ds.splits if s not in found]
    if missing:
        raise SystemExit(f"no format-1 cache in {cache_dir} matches split(s) {', '.join(missing)}")
    return found


def migrate(cache_dir: Path, source: features.BackboneSource, ds: data.Dataset, batch_size: int) -> Path:
    old = old_split_caches(cache_dir, source, ds)
    ids = {name: ds.image_ids(name) for name in ds.splits}
    identity = features._identity(source, ds.images_fingerprint())
    folder = cache_dir / features._folder_name(source, ds, identity["images"])
    plan = features._plan(folder, identity, ids, shard_size=8 * batch_size)
    rows = {name: features._rows(plan, ids[name], folder) for name in ds.splits}
    # Every row: which old cache holds it and where (-1: left out as unreadable there).
    where_split = np.full(len(plan.rows), -1)
    where_row = np.full(len(plan.rows), -1)
    names = list(ds.splits)
    arrays = {}
    for s, name in enumerate(names):
        indices = np.load(old[name] / "indices.npy")
        where_split[rows[name]] = s  # covered, kept or not
        where_row[rows[name][indices]] = np.arange(len(indices))
        has_maps = (old[name] / "maps.npy").exists()
        arrays[name] = (np.load(old[name] / "pooled.npy", mmap_mode="r"),
                        np.load(old[name] / "maps.npy", mmap_mode="r") if has_maps else None)
    if (where_split < 0).any():
        raise SystemExit(f"{int((where_split < 0).sum())} images of {ds.name} are in no old split cache")
    with_maps = all(m is not None for _, m in arrays.values())
    for start, stop in plan.shards:
        if open_shard(folder, start, stop, with_maps) is not None:
            continue
        kept = where_row[start:stop] >= 0
        first_pooled, first_maps = next(iter(arrays.values()))
        pooled = np.zeros((stop - start, *first_pooled.shape[1:]), np.float16)
        maps = np.zeros((stop - start, *first_maps.shape[1:]), np.float16) if with_maps else None
        for s, name in enumerate(names):
            at = np.flatnonzero((where_split[start:stop] == s) & kept)
            pooled[at] = arrays[name][0][where_row[start:stop][at]]
            if maps is not None:
                maps[at] = arrays[name][1][where_row[start:stop][at]]
        write_shard(folder, start, stop, pooled, maps, kept)
    features._finish(folder, identity, ds, plan, rows)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=features.default_cache_dir())
    parser.add_argument("--dataset", default="elpv")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--seed", type=int, default=0, help="the split seed the old caches were built with")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    start = time.perf_counter()
    ds = data.load_dataset(args.dataset, seed=args.seed)
    folder = migrate(args.cache_dir, features.backbone_source(args.backbone), ds, args.batch_size)
    print(f"{folder} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
