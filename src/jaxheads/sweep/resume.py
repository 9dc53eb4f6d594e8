"""Resume: finished groups saved to disk, so a killed sweep restarts at its first unfinished group."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jaxheads import checkpoint
from jaxheads.features.split import FeatureSplit

from .spec import SweepSpec


class GroupStore:
    """Finished groups on disk (through :mod:`jaxheads.checkpoint`): ``<dir>/group-NNNN`` holds the group's
    members' unpadded variables, and its meta the members' records, the group's JSON entry and the run key (a
    hash of the sweep, the task and every feature array), so a checkpoint of another sweep or other features is
    never read. Inactive without a directory, and in multi-process runs (every process would have to agree)."""

    def __init__(self, root: str | os.PathLike[str] | None, sweep: SweepSpec, splits: Mapping[str, FeatureSplit],
                 num_classes: int, task: str, label_names: Sequence[str] | None):
        self.root = Path(root) if root is not None and jax.process_count() == 1 else None
        self.key = self._run_key(sweep, splits, num_classes, task, label_names) if self.root else ""

    @staticmethod
    def _run_key(sweep: SweepSpec, splits: Mapping[str, FeatureSplit], num_classes: int, task: str,
                 label_names: Sequence[str] | None) -> str:
        h = hashlib.sha256(json.dumps([sweep.to_dict(), num_classes, task, list(label_names or []),
                                       jax.device_count()], sort_keys=True).encode())
        parts = {name: splits[name] for name in splits}
        parts.update({f"{name}/view{v}": view for name in splits
                      for v, view in enumerate(splits[name].views or (), 1)})
        for name in sorted(parts):  # augmented views are features the sweep trains on (or tests on) too
            for field in ("labels", "pooled", "maps"):
                array = getattr(parts[name], field)
                if array is not None:
                    h.update(f"{name}/{field}{np.shape(array)}{np.dtype(array.dtype)}".encode())
                    for start in range(0, len(array), 4096):  # in slices: maps may be large and memory-mapped
                        h.update(np.ascontiguousarray(array[start:start + 4096]).tobytes())
        return h.hexdigest()[:24]

    def _path(self, gid: int) -> Path:
        assert self.root is not None
        return self.root / f"group-{gid:04d}"

    def save(self, gid: int, ids: Sequence[int], records: Sequence[Any], variables: Sequence[Any],
             predictions: Sequence[Any], group_json: Mapping[str, Any]) -> None:
        if self.root is None:
            return
        meta = {"run": self.key, "group": group_json, "records": [records[i] for i in ids]}
        tree = {"variables": [variables[i] for i in ids], "predictions": [predictions[i] for i in ids]}
        checkpoint.save(self._path(gid), tree, meta)

    def restore(self, gid: int, ids: Sequence[int], records: list, variables: list, predictions: list,
                groups_json: list) -> bool:
        """Fill in group ``gid`` from its checkpoint; False when there is none for this run."""
        if self.root is None:
            return False
        if not checkpoint.exists(self._path(gid)):
            return False
        tree, meta = checkpoint.load(self._path(gid))
        if meta.get("run") != self.key or len(meta["records"]) != len(ids):
            return False
        saved = zip(ids, meta["records"], tree["variables"], tree["predictions"], strict=True)
        for i, record, member_vars, member_predictions in saved:
            records[i], variables[i], predictions[i] = record, member_vars, member_predictions
        groups_json.append(meta["group"])
        return True

    def clear(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

