"""The fine-tune's epochs: data-parallel batches of images, the val evaluation after each epoch, and early stopping
on the task's metric (ties broken by the lower val loss)."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads import data, heads, metrics, parallel
from jaxheads.finetune_model import Variables, predict_fn
from jaxheads.finetune_step import FinetuneSetup, TrainState, make_optimizer, train_step
from jaxheads.heads import HeadSpec

__all__ = ["EpochLoop", "score", "val_metrics"]

Progress = Callable[[dict[str, Any]], None]


class EpochLoop:
    """The fine-tune's mutable state between epochs: device train state, best variables and history."""

    def __init__(self, setup: FinetuneSetup, ds: data.Dataset, start: Variables,
                 devices: Sequence[jax.Device] | None, strict: bool, progress: Progress | None):
        self.setup, self.ds, self.strict, self.progress = setup, ds, strict, progress
        self.mesh = parallel.make_mesh(1, devices)
        self.rep, self.shard = parallel.replicated(self.mesh), parallel.data_sharding(self.mesh)
        cfg = setup.config
        self.batch = math.ceil(cfg.batch_size / self.mesh.size) * self.mesh.size
        self.load_size = max(setup.image_size, round(setup.image_size * cfg.crop_scale))
        self.metric = metrics.metric_for_task(setup.spec.task)
        params = {"backbone": start["backbone"]["params"], "head": start["head"]["params"]}
        stats = {"backbone": start["backbone"].get("batch_stats", {}), "head": start["head"].get("batch_stats", {})}
        opt_state = jax.jit(lambda p: make_optimizer(setup, p).init(p))(params)  # one compile, not one per leaf
        self.state = jax.device_put(TrainState(jnp.zeros((), jnp.int32), params, stats, opt_state), self.rep)
        self.seed_words = jax.device_put(heads.seed_words(cfg.seed), self.rep)
        self.start: Variables = jax.tree.map(np.asarray, start)
        self.best_vars: Variables = self.start
        self.epoch, self.since, self.best_epoch = 0, 0, 0
        self.before: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []

    def variables(self) -> Variables:
        """The current model as ``{"backbone": {params, batch_stats}, "head": {...}}`` (device arrays)."""
        s = self.state
        return {"backbone": {"params": s.params["backbone"], "batch_stats": s.stats["backbone"]},
                "head": {"params": s.params["head"], "batch_stats": s.stats["head"]}}

    def begin(self) -> None:
        """Epoch 0: the starting model's val metrics are the bar to beat."""
        self.before = self.best = self.evaluate(self.variables())
        self.history.append({"epoch": 0, "train_loss": None, "val": self.before})
        self._report(0)

    def run_epoch(self, epoch: int) -> None:
        """One pass over train in the seeded order of ``epoch``, then val, early-stopping bookkeeping."""
        step = train_step(self.setup)
        split = self.ds.split("train")
        order = np.random.default_rng([self.setup.config.seed, epoch]).permutation(len(split))
        losses: list[float] = []
        for images, labels, mask in self._batches(split, order, self.load_size):
            self.state, loss = step(self.state, images, labels, mask, self.seed_words)
            losses.append(float(loss))
        val = self.evaluate(self.variables())
        self.epoch = epoch
        if score(val, self.metric) > score(self.best, self.metric):
            self.best, self.best_epoch, self.since = val, epoch, 0
            self.best_vars = jax.tree.map(np.asarray, self.variables())
        else:
            self.since += 1
        self.history.append({"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None, "val": val})
        self._report(epoch)

    def evaluate(self, variables: Variables) -> dict[str, float]:
        """Val metrics (and mean loss) of ``variables`` on centre crops at the input size."""
        predict = predict_fn(self.setup.module, self.setup.preprocessing, self.setup.spec)
        split = self.ds.split("val")
        logits, labels = [], []
        for images, batch_labels, mask in self._batches(split, np.arange(len(split)), self.setup.image_size):
            keep = np.asarray(mask) > 0
            logits.append(np.asarray(predict(variables, images))[keep])
            labels.append(np.asarray(batch_labels)[keep])
        if not logits:
            raise data.DatasetError(f"dataset {self.ds.name}: no readable image in the val split")
        return val_metrics(np.concatenate(logits), np.concatenate(labels), self.setup.spec)

    def _batches(self, split: data.ImageSplit, order: np.ndarray,
                 size: int) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
        """Sharded (images, labels, mask) batches of the compiled size. A short batch (the last one, or one with
        unreadable images, which are skipped with a warning) is padded with copies of its own images — so that
        batch-norm statistics stay those of real images — and the copies get mask 0."""
        for batch in data.iter_batches(split, image_size=size, batch_size=self.setup.config.batch_size,
                                       indices=order, strict=self.strict):
            n = len(batch.images)
            if n == 0:
                continue
            rows = np.arange(self.batch) % n
            mask = (np.arange(self.batch) < n).astype(np.float32)
            yield (jax.device_put(batch.images[rows], self.shard), jax.device_put(batch.labels[rows], self.shard),
                   jax.device_put(mask, self.shard))

    def _report(self, epoch: int) -> None:
        if self.progress is not None:
            last = self.history[-1]
            self.progress({"epoch": epoch, "epochs": self.setup.config.epochs, "train_loss": last["train_loss"],
                           "val": last["val"], "best_epoch": self.best_epoch, "metric": self.metric})


@functools.partial(jax.jit, static_argnames="spec")
def _metrics_of(logits: jax.Array, labels: jax.Array, spec: HeadSpec) -> dict[str, jax.Array]:
    """The sweep's scalar validation metrics for one model, plus the mean loss (one jitted call)."""
    mask = jnp.ones(labels.shape[:1], bool)
    if spec.task == "multiclass":
        values = metrics.multiclass_metrics(logits, labels, mask)
    else:
        full = metrics.multilabel_metrics(logits, labels, mask)
        values = {k: full[k] for k in ("macro_roc_auc", "macro_average_precision")}
    return {**values, "loss": heads.example_losses(logits, labels, spec).mean()}


def val_metrics(logits: np.ndarray, labels: np.ndarray, spec: HeadSpec) -> dict[str, float]:
    """:func:`_metrics_of` as Python floats."""
    return {k: float(v) for k, v in _metrics_of(jnp.asarray(logits), jnp.asarray(labels), spec).items()}


def score(values: Mapping[str, Any], metric: str) -> tuple[float, float]:
    """What early stopping compares: the metric, then (on a tie, common on small val sets) the lower loss.
    Undefined values (NaN, or None after a JSON round trip) rank lowest."""
    def higher_is_better(v: Any) -> float:
        return -math.inf if v is None or math.isnan(v) else float(v)

    loss = values.get("loss")
    return higher_is_better(values.get(metric)), higher_is_better(None if loss is None else -loss)
