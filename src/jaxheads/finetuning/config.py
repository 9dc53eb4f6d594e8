"""A fine-tune's settings (:class:`FinetuneConfig`) and its outcome (:class:`FinetuneResult`), as plain data."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from jaxheads.data.augment import AFFINE_JITTER, parse_policy

__all__ = ["CLASS_WEIGHTS", "METRICS", "OPTIMIZERS", "SAMPLINGS", "SCHEDULES", "ConfigError", "FinetuneConfig",
           "FinetuneResult", "class_weights", "epoch_order"]

SCHEDULES = ("warmup_cosine", "constant")
OPTIMIZERS = ("adamw", "sgd")
CLASS_WEIGHTS = ("none", "balanced")
SAMPLINGS = ("shuffle", "balanced")
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_average_precision", "macro_roc_auc")
"""What early stopping can select on (those of :mod:`jaxheads.stats`; the task must have it)."""


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a fine-tune, as data (stored with each checkpoint: a resume must use the same ones).

    The defaults are a small-data recipe that starts from the swept head and keeps only gains: epoch 0 is the
    frozen model, so a fine-tune that helps nothing saves the frozen model.

    unfreeze: how many of the backbone's top ``config.blocks`` train (0: the head alone; ``"all"``: every block,
        the whole network).
    freeze_bn: batch norm uses (and keeps) its running statistics; False lets them train (see
        :mod:`jaxheads.finetuning`).
    learning_rate / backbone_learning_rate: peak step sizes of the head and of the top unfrozen block.
    optimizer: ``"adamw"`` or ``"sgd"`` (with ``momentum``; 0: plain SGD), for the head and the blocks alike.
    layer_decay: layer-wise learning-rate decay: the k-th unfrozen block below the top trains at
        ``backbone_learning_rate * layer_decay ** k`` (1.0: one rate for all).
    weight_decay: decoupled weight decay with AdamW, an L2 term added to the gradient with SGD.
    schedule: ``"warmup_cosine"`` (every rate rises linearly from ~0 over ``warmup_epochs``, then follows a cosine
        to 0 at ``epochs``) or ``"constant"`` (after the same warm-up).
    label_smoothing: of the multiclass training loss (replaces the head's own; val loss is never smoothed).
    ema_decay: per-step decay of an exponential moving average of the weights (and statistics), started at the
        swept model; when set, the average is what is evaluated each epoch, selected and saved (None: the raw
        weights).
    metric: what early stopping and the selection of the saved epoch use (None: the task's default metric,
        :func:`jaxheads.metrics.metric_for_task`); ties are broken by the lower val loss.
    epochs, batch_size, patience: the loop; ``patience=None`` never stops early.
    accumulate: gradient accumulation: each update averages the gradients of ``accumulate`` batches of
        ``batch_size`` images (computed one after the other inside the step, so memory is one batch's).
    remat: rematerialise every unfrozen block in the backward pass (``jax.checkpoint``): only block inputs are kept
        from the forward pass, at the cost of computing each unfrozen block's forward twice.
    class_weights: ``"balanced"`` weighs each example's training loss by ``n / (classes * n_class)`` of the train
        split (a weighted mean), ``"none"`` weighs all alike; multiclass only. Val loss is never weighted.
    sampling: each epoch's training order: ``"shuffle"`` (a permutation of train) or ``"balanced"`` (as many
        draws as train has rows, with replacement, each class equally likely; multiclass only): the same aim as
        class weights, reached by repeating the rare images instead of weighing their loss.
    image_size: the input size (default: the backbone's); crop_scale: images are decoded at
        ``round(image_size * crop_scale)`` and randomly cropped to ``image_size`` (1.0, the default: no crop, as
        the head was swept on whole centre-resized images; zoomed crops move the features away from those the head
        learnt, and on ELPV their first epoch's train loss started far above the head's and val loss rose).
    augment: the policy drawn per example and step in the jitted step (:mod:`jaxheads.finetuning.augment`), in the
        names of :mod:`jaxheads.data.augment` (``flip``, ``dihedral``, ``crop``, ``scale``, ``affine``; ``()``:
        none); affine_jitter: ``affine``'s largest rotation (degrees), translation and scale change (fractions).
    seed: decides the shuffles, the augmentation and the dropout masks.
    """

    unfreeze: int | str = 1
    freeze_bn: bool = True
    learning_rate: float = 1e-3
    backbone_learning_rate: float = 1e-4
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    patience: int | None = 3
    image_size: int | None = None
    crop_scale: float = 1.0
    augment: tuple[str, ...] = ("flip",)
    seed: int = 0
    layer_decay: float = 0.7
    schedule: str = "warmup_cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    ema_decay: float | None = 0.99
    metric: str | None = None
    affine_jitter: tuple[float, float, float] = AFFINE_JITTER
    optimizer: str = "adamw"
    momentum: float = 0.9
    accumulate: int = 1
    remat: bool = False
    class_weights: str = "none"
    sampling: str = "shuffle"

    def __post_init__(self) -> None:
        # The canonical policy order makes "affine,flip" and "flip,affine" one run identity (and a JSON list a tuple).
        object.__setattr__(self, "augment", parse_policy(self.augment, allow_empty=True))
        object.__setattr__(self, "affine_jitter", tuple(float(v) for v in self.affine_jitter))
        checks = {
            "unfreeze": (self.unfreeze == "all" or (isinstance(self.unfreeze, int) and not isinstance(
                self.unfreeze, bool) and self.unfreeze >= 0), "a block count >= 0 or all"),
            "learning_rate": (self.learning_rate >= 0, ">= 0"),
            "backbone_learning_rate": (self.backbone_learning_rate >= 0, ">= 0"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "epochs": (self.epochs >= 0, "an integer >= 0"),
            "batch_size": (self.batch_size >= 1, "an integer >= 1"),
            "patience": (self.patience is None or self.patience >= 1, "an integer >= 1"),
            "image_size": (self.image_size is None or self.image_size >= 8, "an integer >= 8"),
            "crop_scale": (self.crop_scale >= 1.0, ">= 1"),
            "layer_decay": (0.0 <= self.layer_decay <= 1.0, "0 to 1"),
            "schedule": (self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            "warmup_epochs": (self.warmup_epochs >= 0, ">= 0"),
            "label_smoothing": (0.0 <= self.label_smoothing < 1.0, "0 to below 1"),
            "ema_decay": (self.ema_decay is None or 0.0 <= self.ema_decay < 1.0, "0 to below 1"),
            "metric": (self.metric is None or self.metric in METRICS, f"one of {', '.join(METRICS)}"),
            "affine_jitter": (len(self.affine_jitter) == 3 and min(self.affine_jitter) >= 0, "three values >= 0"),
            "optimizer": (self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            "momentum": (0.0 <= self.momentum < 1.0, "0 to below 1"),
            "accumulate": (self.accumulate >= 1, "an integer >= 1"),
            "class_weights": (self.class_weights in CLASS_WEIGHTS, f"one of {', '.join(CLASS_WEIGHTS)}"),
            "sampling": (self.sampling in SAMPLINGS, f"one of {', '.join(SAMPLINGS)}"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ConfigError(name, getattr(self, name), expected)


class ConfigError(ValueError):
    """An invalid FinetuneConfig value: ``field``, ``value`` and what was ``expected`` (the CLI names its flag)."""

    def __init__(self, field: str, value: Any, expected: str):
        super().__init__(f"FinetuneConfig.{field}: invalid value {value!r}; expected {expected}")
        self.field, self.value, self.expected = field, value, expected


def epoch_order(labels: np.ndarray, seed: int, epoch: int, sampling: str) -> np.ndarray:
    """The rows of train that epoch ``epoch`` visits, in order (seeded by ``(seed, epoch)``): a permutation for
    ``"shuffle"``; for ``"balanced"`` as many draws with replacement, a row's chance inversely proportional to
    its class's count, so every present class is drawn equally often in expectation."""
    rng = np.random.default_rng([seed, epoch])
    if sampling == "shuffle":
        return rng.permutation(len(labels))
    counts = np.bincount(labels)
    chance = 1.0 / counts[labels]
    return rng.choice(len(labels), size=len(labels), replace=True, p=chance / chance.sum())


def class_weights(labels: Any, num_classes: int, mode: str) -> list[float]:
    """Per-class weights of the training loss from the train ``labels`` (class ids): all 1 for ``"none"``;
    ``n / (num_classes * n_c)`` for ``"balanced"`` (a class absent from train gets 1, it never weighs a row)."""
    if mode == "none":
        return [1.0] * num_classes
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)[:num_classes]
    total = counts.sum()
    return [float(total / (num_classes * c)) if c else 1.0 for c in counts]


@dataclasses.dataclass
class FinetuneResult:
    """What a fine-tune did. ``before``/``best`` are val metrics of the starting model and of the saved one;
    ``improved`` is False when no epoch beat the starting model (the saved model is then the starting one); an
    epoch beats another by a higher val ``metric`` or, on a tie, a lower val loss."""

    model_dir: Path
    metric: str
    before: dict[str, float]
    best: dict[str, float]
    best_epoch: int
    epochs_run: int
    improved: bool
    trainable_blocks: tuple[str, ...]
    history: list[dict[str, Any]]
    resumed_from_epoch: int
    config: FinetuneConfig
    weight_change: dict[str, float] = dataclasses.field(default_factory=dict)
    """Max |change| of each backbone block's parameters (``params/<block>``) and statistics
    (``batch_stats/<block>``), and of the head (``head``), from the start to the last epoch trained (raw weights,
    not their moving average)."""
    gain: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The saved model against the frozen (starting) one, paired on the same examples: ``{"val": {metric:
    comparison}, "test": {metric: comparison} or None, "level", "n_boot", "method"}``; a comparison is
    :class:`jaxheads.stats.Comparison` as a dict (``a`` frozen, ``b`` fine-tuned, ``diff`` = b - a, ``low``/``high``
    its interval, ``p_b_better``, ``verdict``). Val is optimistic (the epoch was chosen there); test is scored once,
    at the end, and only when the dataset has a test split."""

    def gain_lines(self) -> list[str]:
        """The gain over the frozen head, one line per split (test first: the honest one), in the selection
        metric, e.g. ``test accuracy: frozen 0.8100 -> fine-tuned 0.8350, gain +0.0250 [95% -0.0050, +0.0550],
        P(gain > 0) 0.94, within noise``."""
        lines = []
        for split in ("test", "val"):
            c = (self.gain.get(split) or {}).get(self.metric)
            if c is None:
                continue
            note = " (optimistic: the epoch was chosen on val)" if split == "val" else ""
            lines.append(f"{split} {self.metric}: frozen {c['a']:.4f} -> fine-tuned {c['b']:.4f}, gain "
                         f"{c['diff']:+.4f} [{c['level']:.0%} {c['low']:+.4f}, {c['high']:+.4f}], "
                         f"P(gain > 0) {c['p_b_better']:.2f}, {_verdict(c['verdict'])}{note}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_dir"] = str(self.model_dir)
        d["trainable_blocks"] = list(self.trainable_blocks)
        return d

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> FinetuneResult:
        """Inverse of :meth:`to_dict` (as read back from ``finetune.json``)."""
        return cls(**{**saved, "model_dir": Path(saved["model_dir"]),
                      "trainable_blocks": tuple(saved["trainable_blocks"]),
                      "config": FinetuneConfig(**saved["config"])})


def _verdict(verdict: str) -> str:
    return {"b better": "fine-tuned better", "a better": "frozen better"}.get(verdict, verdict)
