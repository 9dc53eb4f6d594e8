"""The fine-tune's epochs: data-parallel batches of images, the val evaluation after each epoch (of the weights'
moving average, when there is one), early stopping on the chosen metric (ties broken by the lower val loss), and
at the end the gain of the kept model over the frozen one, paired on the same val (and test) examples."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads import data, heads, metrics, parallel, ranking, stats
from jaxheads.finetuning.config import class_weights, epoch_order
from jaxheads.finetuning.model import Variables, predict_fn
from jaxheads.finetuning.step import FinetuneSetup, TrainState, finetune_optimizer, schedule_steps, train_step
from jaxheads.heads import HeadSpec

__all__ = ["EpochLoop", "compare_models", "score", "val_metrics"]

EpochReport = Callable[[dict[str, Any]], None]


class EpochLoop:
    """The fine-tune's mutable state between epochs: device train state, best variables and history."""

    def __init__(self, setup: FinetuneSetup, ds: data.Dataset, start: Variables,
                 devices: Sequence[jax.Device] | None, strict: bool, progress: EpochReport | None):
        self.setup, self.ds, self.strict, self.progress = setup, ds, strict, progress
        self.mesh = parallel.make_mesh(1, devices)
        self.rep, self.shard = parallel.replicated(self.mesh), parallel.data_sharding(self.mesh)
        cfg = setup.config
        self.batch = math.ceil(cfg.batch_size / self.mesh.size) * self.mesh.size
        self.load_size = max(setup.image_size, round(setup.image_size * cfg.crop_scale))
        self.metric = stats.check_metric(cfg.metric or metrics.metric_for_task(setup.spec.task), setup.spec.task)
        params = {"backbone": start["backbone"]["params"], "head": start["head"]["params"]}
        stats_tree = {"backbone": start["backbone"].get("batch_stats", {}),
                      "head": start["head"].get("batch_stats", {})}
        opt_state = jax.jit(lambda p: finetune_optimizer(setup, p).init(p))(params)  # one compile, not one per leaf
        # The average starts at the swept model (own copies: the step donates the state's buffers).
        ema = () if cfg.ema_decay is None else jax.tree.map(np.array, (params, stats_tree))
        self.state = jax.device_put(TrainState(jnp.zeros((), jnp.int32), params, stats_tree, opt_state, ema),
                                    self.rep)
        self.seed_words = jax.device_put(heads.seed_words(cfg.seed), self.rep)
        train = ds.split("train")
        # One optimiser update reads ``accumulate`` batches; the schedule counts updates.
        self.steps = jax.device_put(schedule_steps(cfg, math.ceil(len(train) / (cfg.batch_size * cfg.accumulate))),
                                    self.rep)
        weights = class_weights(train.labels if setup.spec.task == "multiclass" else [], setup.spec.num_classes,
                                cfg.class_weights)
        self.class_weights = jax.device_put(np.asarray(weights, np.float32), self.rep)
        self.start: Variables = jax.tree.map(np.asarray, start)
        self.best_vars: Variables = self.start
        self.epoch, self.since, self.best_epoch = 0, 0, 0
        self.before: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        # Val probabilities of the starting and of the kept model (rows that decoded), for the paired gain.
        self.val_labels = np.zeros((0,), np.int32)
        self.val_start = self.val_best = np.zeros((0, setup.spec.num_classes), np.float32)

    def variables(self) -> Variables:
        """The current (raw) model as ``{"backbone": {params, batch_stats}, "head": {...}}`` (device arrays)."""
        return _as_variables(self.state.params, self.state.stats)

    def eval_variables(self) -> Variables:
        """What is evaluated, kept and saved: the moving average of the weights, or the raw ones without one."""
        if self.setup.config.ema_decay is None:
            return self.variables()
        return _as_variables(*self.state.ema)

    def begin(self) -> None:
        """Epoch 0: the starting model's val metrics are the bar to beat."""
        self.before, probs, self.val_labels = self.evaluate(self.eval_variables())
        self.best, self.val_start, self.val_best = self.before, probs, probs
        self.history.append({"epoch": 0, "train_loss": None, "val": self.before})
        self._report(0)

    def run_epoch(self, epoch: int) -> None:
        """One pass over train in the seeded order of ``epoch`` (:func:`epoch_order`), then val, early-stopping
        bookkeeping."""
        step = train_step(self.setup)
        split = self.ds.split("train")
        order = epoch_order(np.asarray(split.labels), self.setup.config.seed, epoch, self.setup.config.sampling)
        losses: list[float] = []
        accumulate = self.setup.config.accumulate
        for images, labels, mask in self._batches(split, order, self.load_size, accumulate):
            self.state, loss = step(self.state, images, labels, mask, self.class_weights, self.seed_words,
                                    self.steps)
            losses.append(float(loss))
        current = self.eval_variables()
        val, probs, _ = self.evaluate(current)
        self.epoch = epoch
        if score(val, self.metric) > score(self.best, self.metric):
            self.best, self.best_epoch, self.since, self.val_best = val, epoch, 0, probs
            self.best_vars = jax.tree.map(np.asarray, current)
        else:
            self.since += 1
        self.history.append({"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None, "val": val})
        self._report(epoch)

    def evaluate(self, variables: Variables, split_name: str = "val") -> tuple[dict[str, float], np.ndarray,
                                                                               np.ndarray]:
        """Metrics (and mean loss) of ``variables`` on centre crops of ``split_name`` at the input size, with the
        probabilities and labels of the rows that decoded."""
        predict_logits = predict_fn(self.setup.module, self.setup.preprocessing, self.setup.spec)
        split = self.ds.split(split_name)
        logits, labels = [], []
        for images, batch_labels, mask in self._batches(split, np.arange(len(split)), self.setup.image_size):
            keep = np.asarray(mask) > 0
            logits.append(np.asarray(predict_logits(variables, images))[keep])
            labels.append(np.asarray(batch_labels)[keep])
        if not logits:
            raise data.DatasetError(f"dataset {self.ds.name}: no readable image in the {split_name} split")
        z, y = np.concatenate(logits), np.concatenate(labels)
        values = val_metrics(z, y, self.setup.spec)
        probs = ranking.probabilities(z, self.setup.spec.task).astype(np.float32)
        if self.metric not in values:
            values[self.metric] = stats.point_estimate(probs[None], y, self.metric, self.setup.spec.task)
        return values, probs, y

    def gain(self, *, n_boot: int = stats.N_BOOT, seed: int = 0) -> dict[str, Any]:
        """The kept model against the starting one on val (from the probabilities kept while training) and, when
        the dataset has a non-empty test split, on test (both evaluated once, here): see
        :attr:`jaxheads.finetuning.config.FinetuneResult.gain`."""
        task = self.setup.spec.task
        out: dict[str, Any] = {"val": compare_models(self.val_start, self.val_best, self.val_labels, task,
                                                     n_boot=n_boot, seed=seed),
                               "test": None, "level": stats.LEVEL, "n_boot": n_boot,
                               "method": f"{stats.LEVEL:.0%} percentile intervals of the difference from {n_boot:,} "
                                         "paired bootstrap draws of the examples (the same draws for both models)",
                               "val_optimistic": True}
        if "test" in self.ds.splits and len(self.ds.split("test")) > 0:
            _, before, labels = self.evaluate(jax.device_put(self.start, self.rep), "test")
            after = before if self.best_epoch == 0 else self.evaluate(jax.device_put(self.best_vars, self.rep),
                                                                     "test")[1]
            out["test"] = compare_models(before, after, labels, task, n_boot=n_boot, seed=seed + 1)
        return out

    def _batches(self, split: data.ImageSplit, order: np.ndarray, size: int,
                 accumulate: int = 1) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
        """Sharded (images, labels, mask) batches of the compiled size (``accumulate`` batches per training step).
        A short batch (the last one, or one with unreadable images, which are skipped with a warning) is padded
        with copies of its own images — so that batch-norm statistics stay those of real images — and the copies
        get mask 0."""
        compiled = self.batch * accumulate
        for batch in data.iter_batches(split, image_size=size, batch_size=self.setup.config.batch_size * accumulate,
                                       indices=order, strict=self.strict):
            n = len(batch.images)
            if n == 0:
                continue
            rows = np.arange(compiled) % n
            mask = (np.arange(compiled) < n).astype(np.float32)
            yield (jax.device_put(batch.images[rows], self.shard), jax.device_put(batch.labels[rows], self.shard),
                   jax.device_put(mask, self.shard))

    def _report(self, epoch: int) -> None:
        if self.progress is not None:
            last = self.history[-1]
            self.progress({"epoch": epoch, "epochs": self.setup.config.epochs, "train_loss": last["train_loss"],
                           "val": last["val"], "best_epoch": self.best_epoch, "metric": self.metric})


def _as_variables(params: Variables, stats_tree: Variables) -> Variables:
    return {"backbone": {"params": params["backbone"], "batch_stats": stats_tree["backbone"]},
            "head": {"params": params["head"], "batch_stats": stats_tree["head"]}}


def compare_models(before: np.ndarray, after: np.ndarray, labels: np.ndarray, task: str, *,
                   n_boot: int = stats.N_BOOT, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Every metric of ``task`` (:mod:`jaxheads.stats`): model a = ``before`` against model b = ``after``, both
    (rows, classes) probabilities on the same rows, paired on the same bootstrap draws of the rows; each as
    :class:`jaxheads.stats.Comparison` in a dict (``diff`` = after - before)."""
    draws = stats.make_draws(np.zeros(len(labels), np.int64), 1, n_boot=n_boot, seed=seed)
    names = stats.MULTICLASS_METRICS if task == "multiclass" else stats.MULTILABEL_METRICS
    return {m: dataclasses.asdict(stats.compare(before[None], after[None], labels, m, task, draws, stats.LEVEL))
            for m in names}


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
