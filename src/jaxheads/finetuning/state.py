"""What a fine-tune writes: a checkpoint after every epoch (resumed by a re-run with the same run identity), and at
the end the best model (``OUT/model``, and as one image -> probabilities program ``OUT/model.jaxexport``,
:mod:`jaxheads.export`) and the result (``OUT/finetune.json``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from jaxheads import backbones, checkpoint, export
from jaxheads.finetuning.config import FinetuneResult
from jaxheads.finetuning.loop import EpochLoop
from jaxheads.finetuning.model import MODEL_KIND, Variables, feature_shape

__all__ = ["KEEP_CHECKPOINTS", "MODEL_DIR", "MODEL_EXPORT", "RESULT_FILE", "STATE_DIR", "STATE_KIND", "finished",
           "last_epoch", "restore", "save_model", "save_state"]

STATE_KIND = "jaxheads.finetuning.state"
MODEL_DIR = "model"
MODEL_EXPORT = "model.jaxexport"
STATE_DIR = "finetune_state"
RESULT_FILE = "finetune.json"
KEEP_CHECKPOINTS = 2


def _epoch_dir(root: Path, epoch: int) -> Path:
    return root / f"epoch-{epoch:04d}"


def _complete_checkpoints(root: Path) -> list[Path]:
    """Epoch checkpoints under ``root`` that were fully written, oldest first."""
    return sorted(p for p in root.glob("epoch-*") if checkpoint.exists(p)) if root.is_dir() else []


def last_epoch(root: Path) -> int | None:
    """The epoch of the newest complete checkpoint under ``root`` (None: nothing to resume)."""
    complete = _complete_checkpoints(root)
    return int(complete[-1].name.split("-")[1]) if complete else None


def save_state(root: Path, loop: EpochLoop, run_id: Mapping[str, Any]) -> None:
    """Checkpoint the loop after an epoch into a new directory, then drop all but the newest ones: a kill at any
    moment leaves the previous complete checkpoint (``checkpoint.save`` marks completeness by its meta)."""
    state = jax.tree.map(np.asarray, loop.state)
    tree = {"state": _flat(state), "best": _flat(loop.best_vars),
            "val": {"labels": loop.val_labels, "start": loop.val_start, "best": loop.val_best}}
    meta = {"kind": STATE_KIND, "run": run_id, "epoch": loop.epoch, "since": loop.since,
            "best_epoch": loop.best_epoch, "before": loop.before, "best": loop.best, "history": loop.history}
    checkpoint.save(_epoch_dir(root, loop.epoch), tree, checkpoint.json_ready(meta))
    for old in _complete_checkpoints(root)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def restore(root: Path, loop: EpochLoop, run_id: Mapping[str, Any]) -> int | None:
    """Load the newest complete checkpoint of this run into ``loop``; its epoch, or None when there is none.
    A checkpoint of a different run (other settings, head, weights or data) is an error naming the fields."""
    complete = _complete_checkpoints(root)
    if not complete:
        return None
    tree, meta = checkpoint.load(complete[-1])
    differ = sorted(k for k in run_id if checkpoint.json_ready(run_id[k]) != meta["run"].get(k))
    if meta.get("kind") != STATE_KIND or differ:
        raise ValueError(f"{root}: holds a fine-tune with other {', '.join(differ) or 'contents'}; use another "
                         "out_dir (or delete it) to start a new one")
    state = _unflat(jax.tree.map(np.asarray, loop.state), tree["state"])
    loop.state = jax.device_put(state, loop.rep)
    loop.best_vars = _unflat(loop.best_vars, tree["best"])
    loop.epoch, loop.since, loop.best_epoch = meta["epoch"], meta["since"], meta["best_epoch"]
    loop.before, loop.best, loop.history = meta["before"], meta["best"], meta["history"]
    val = tree["val"]
    loop.val_labels, loop.val_start, loop.val_best = (np.asarray(val[k]) for k in ("labels", "start", "best"))
    return int(meta["epoch"])


def _flat(tree: Any) -> dict[str, np.ndarray]:
    """A pytree as ``{"00000": leaf, ...}``: orbax then stores any structure (optax NamedTuples included)."""
    return {f"{i:05d}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(tree))}


def _unflat(template: Any, flat: Mapping[str, np.ndarray]) -> Any:
    """Inverse of :func:`_flat` given a tree of the same structure; shapes and dtypes are checked."""
    leaves, treedef = jax.tree.flatten(template)
    if len(flat) != len(leaves):
        raise ValueError(f"checkpoint has {len(flat)} arrays, this fine-tune has {len(leaves)}")
    restored = []
    for i, ref in enumerate(leaves):
        value = np.asarray(flat[f"{i:05d}"])
        if value.shape != np.shape(ref):
            raise ValueError(f"checkpoint array {i}: shape {value.shape}, expected {np.shape(ref)}")
        restored.append(value.astype(np.asarray(ref).dtype))
    return jax.tree.unflatten(treedef, restored)


def save_model(out: Path, loop: EpochLoop, backbone: backbones.Backbone, head_meta: Mapping[str, Any],
               run_id: Mapping[str, Any], resumed: int, gain: Mapping[str, Any] | None = None) -> FinetuneResult:
    """Write the best model to ``out/model``, its export (read back from there) to ``out/model.jaxexport``, and
    the result (with ``gain``, :meth:`EpochLoop.gain`) to ``out/finetune.json``; drop the epoch checkpoints."""
    setup = loop.setup
    result = FinetuneResult(out / MODEL_DIR, loop.metric, loop.before, loop.best, loop.best_epoch, loop.epoch,
                            loop.best_epoch > 0, setup.trainable, loop.history, resumed, setup.config,
                            _weight_change(loop.start, jax.tree.map(np.asarray, loop.variables())),
                            dict(gain or {}))
    meta = {"kind": MODEL_KIND, "backbone": backbone.config.name, "weights": head_meta["weights"],
            "weights_id": backbone.weights_id, "spec": setup.spec.to_dict(), "image_size": setup.image_size,
            "feature_shape": list(feature_shape(setup.module, backbone.variables, setup.image_size)),
            "label_names": list(loop.ds.classes), "run": run_id, "finetune": result.to_dict()}
    checkpoint.save(out / MODEL_DIR, loop.best_vars, checkpoint.json_ready(meta))
    export.export_saved(out / MODEL_DIR, out / MODEL_EXPORT)
    checkpoint.write_json_atomic(out / RESULT_FILE, checkpoint.json_ready({"run": run_id, **result.to_dict()}))
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    return result


def _weight_change(start: Variables, end: Variables) -> dict[str, float]:
    """Max |end - start| per backbone block (params and batch_stats apart) and for the whole head."""
    def delta(a: Any, b: Any) -> float:
        diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(y) - np.asarray(x)),
                                                                        initial=0.0)), a, b))
        return max(diffs, default=0.0)

    out = {f"{collection}/{block}": delta(sub, end["backbone"][collection][block])
           for collection in ("params", "batch_stats") for block, sub in start["backbone"].get(collection, {}).items()}
    out["head"] = delta(start["head"], end["head"])
    return out


def finished(out: Path, run_id: Mapping[str, Any]) -> FinetuneResult | None:
    """The result of a completed fine-tune of this run in ``out``, if there is one."""
    try:
        saved = json.loads((out / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if saved.get("run") != checkpoint.json_ready(run_id) or not checkpoint.exists(out / MODEL_DIR):
        return None
    saved.pop("run")
    return FinetuneResult.from_dict(saved)
