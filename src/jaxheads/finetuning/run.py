"""Fine-tune a saved head together with its backbone: the run from a saved head to the kept weights."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from jaxheads import backbones, data, parallel
from jaxheads.heads import io as heads_io
from jaxheads.finetuning.config import FinetuneConfig, FinetuneResult
from jaxheads.finetuning.loop import EpochLoop, EpochReport
from jaxheads.finetuning.model import MODEL_KIND, Model, Variables, feature_shape, load_model, model_logits
from jaxheads.finetuning.report import write_report
from jaxheads.finetuning.state import (KEEP_CHECKPOINTS, MODEL_DIR, RESULT_FILE, STATE_DIR, STATE_KIND, finished,
                                     last_epoch, restore, save_model, save_state)
from jaxheads.finetuning.step import FinetuneSetup, TrainState

__all__ = ["FinetuneConfig", "FinetuneResult", "Model", "finetune", "load_model", "model_logits",
           # names this module offered before its parts moved to the finetune_* modules
           "KEEP_CHECKPOINTS", "MODEL_DIR", "MODEL_KIND", "RESULT_FILE", "STATE_DIR", "STATE_KIND", "TrainState",
           "Variables"]


def finetune(
    head_dir: str | os.PathLike[str],
    dataset: str | os.PathLike[str] | data.Dataset,
    config: FinetuneConfig = FinetuneConfig(),
    *,
    out_dir: str | os.PathLike[str],
    split_seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    strict: bool = False,
    devices: Sequence[jax.Device] | None = None,
    progress: EpochReport | None = None,
    resume: bool = True,
) -> FinetuneResult:
    """Fine-tune the head in ``head_dir`` with the top ``config.unfreeze`` blocks of its backbone on ``dataset``'s
    ``train`` split, select on ``val``, and save the best model to ``out_dir/model`` (see the module doc).

    ``dataset`` is anything :func:`jaxheads.data.load_dataset` takes (the same one the head was swept on, so the
    classes agree; ``split_seed`` is the sweep's ``--seed``, so val is the same images) or a
    :class:`~jaxheads.data.Dataset`. With ``resume`` (the CLI's ``--resume``), a run killed in ``out_dir`` continues
    from its last epoch checkpoint and ends with the weights an uninterrupted run ends with; without it, an
    unfinished run's checkpoint in ``out_dir`` is an error. A finished run's result is returned as it is.
    ``progress`` gets a dict after each epoch.
    """
    out = Path(out_dir)
    head = heads_io.read_swept_head(head_dir)
    backbone = heads_io.load_backbone_of(head)
    setup = _setup(head, backbone, config)  # a bad --unfreeze fails here, before any data is read
    ds = dataset if isinstance(dataset, data.Dataset) else data.load_dataset(
        dataset, data_dir=data_dir, seed=split_seed, task=head.spec.task)
    _check_dataset(ds, head, config)
    run_id = _run_identity(config, head, backbone, ds, devices)
    done = finished(out, run_id)
    if done is not None:
        if not (out / "report.md").is_file():  # a run finished before the report existed
            write_report(done, out)
        return done
    last = last_epoch(out / STATE_DIR)
    if last is not None and not resume:
        raise ValueError(f"--resume: {out} holds an unfinished fine-tune (last checkpoint: epoch {last}); pass "
                         "--resume to continue it, or choose another --out")
    loop = EpochLoop(setup, ds, {"backbone": dict(backbone.variables), "head": head.variables}, devices, strict,
                     progress)
    resumed = restore(out / STATE_DIR, loop, run_id)
    if resumed is None:
        loop.begin()
    for epoch in range(loop.epoch + 1, config.epochs + 1):
        if config.patience is not None and loop.since >= config.patience:
            break
        loop.run_epoch(epoch)
        save_state(out / STATE_DIR, loop, run_id)
    result = save_model(out, loop, backbone, head.meta, run_id, resumed or 0, loop.gain(seed=config.seed))
    write_report(result, out)
    return result


def _setup(head: heads_io.SweptHead, backbone: backbones.Backbone, config: FinetuneConfig) -> FinetuneSetup:
    """The static setup of this fine-tune, after checking the head takes the backbone's features at its size."""
    size = config.image_size or head.input_size(backbone)
    _check_feature_shape(backbone, head, size)
    return FinetuneSetup(backbone.module, dataclasses.replace(backbone.config.preprocessing, input_size=size),
                         head.spec, _trainable_blocks(backbone.config, config.unfreeze), config, size)


ADDED_FIELDS = {"sampling": "shuffle"}
"""FinetuneConfig fields added after checkpoints existed, with their defaults: left out of the run identity at
those defaults, so an older checkpoint still resumes."""


def _run_identity(config: FinetuneConfig, head: heads_io.SweptHead, backbone: backbones.Backbone,
                  ds: data.Dataset, devices: Sequence[jax.Device] | None) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: settings, head, weights, data and device count."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if ADDED_FIELDS.get(k, ...) != v}
    return {"config": settings, "head": head.meta.get("spec"),
            "head_weights": _digest(head.variables), "weights_id": backbone.weights_id,
            "dataset": {s: ds.fingerprint(s) for s in ("train", "val")}, "devices": parallel.make_mesh(1, devices).size}


def _digest(tree: Any) -> str:
    """A short hash of a pytree's arrays (a head re-swept into the same directory must not resume an old run)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()[:16]


def _check_dataset(ds: data.Dataset, head: heads_io.SweptHead, config: FinetuneConfig) -> None:
    """The dataset must have train and val and the head's task and classes (in the head's order); balanced class
    weights need a multiclass task."""
    spec = head.spec
    if config.class_weights != "none" and spec.task != "multiclass":
        raise ValueError(f"--class-weights {config.class_weights}: multiclass only; this head is {spec.task}")
    if config.sampling != "shuffle" and spec.task != "multiclass":
        raise ValueError(f"--sampling {config.sampling}: multiclass only; this head is {spec.task}")
    for split in ("train", "val"):
        if split not in ds.splits or len(ds.split(split)) == 0:
            raise data.DatasetError(f"dataset {ds.name}: fine-tuning needs a non-empty {split!r} split")
    if ds.task != spec.task or ds.num_classes != spec.num_classes:
        raise data.DatasetError(f"dataset {ds.name} is {ds.task} with {ds.num_classes} classes, but the head in "
                                f"{head.path} is {spec.task} with {spec.num_classes}")
    names = head.meta.get("label_names")
    if names is not None and tuple(names) != tuple(ds.classes):
        raise data.DatasetError(f"dataset {ds.name}: classes {list(ds.classes)} differ from the head's label_names "
                                f"{list(names)} ({head.path})")


def _check_feature_shape(backbone: backbones.Backbone, head: heads_io.SweptHead, size: int) -> None:
    """The head must accept the backbone's features at ``size``: channels always, the whole map for flatten."""
    spec, meta = head.spec, head.meta
    shape = feature_shape(backbone.module, backbone.variables, size)
    want = tuple(meta.get("feature_shape") or ())
    have = (shape[-1],) if spec.pooling == "none" else tuple(shape)
    same = have == want if spec.pooling in ("none", "flatten") else have[-1:] == want[-1:]
    if want and not same:
        raise ValueError(f"{head.path}: head takes features {want}, but {meta['backbone']} at image_size {size} "
                         f"gives {have}")


def _trainable_blocks(config: backbones.BackboneConfig, unfreeze: int | str) -> tuple[str, ...]:
    """Names of the top ``unfreeze`` blocks of ``config.blocks`` (``"all"``: every one)."""
    depth = len(config.blocks)
    count = depth if unfreeze == "all" else int(unfreeze)
    if count > depth:
        raise ValueError(f"--unfreeze {unfreeze} is beyond the backbone's depth of {depth} (unfreeze={unfreeze}: "
                         f"{config.name} has {depth} blocks ({', '.join(config.blocks) or 'none declared'})); "
                         f"expected 0 to {depth}, or all")
    return tuple(config.blocks[depth - count:]) if count else ()
