"""A fine-tune's settings (:class:`FinetuneConfig`) and its outcome (:class:`FinetuneResult`), as plain data."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

__all__ = ["METRICS", "SCHEDULES", "FinetuneConfig", "FinetuneResult"]

SCHEDULES = ("warmup_cosine", "constant")
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_average_precision", "macro_roc_auc")
"""What early stopping can select on (those of :mod:`jaxheads.stats`; the task must have it)."""


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a fine-tune, as data (stored with each checkpoint: a resume must use the same ones).

    The defaults are a small-data recipe that starts from the swept head and keeps only gains: epoch 0 is the
    frozen model, so a fine-tune that helps nothing saves the frozen model.

    unfreeze: how many of the backbone's top ``config.blocks`` train (0: the head alone).
    freeze_bn: batch norm uses (and keeps) its running statistics; False lets them train (see
        :mod:`jaxheads.finetuning`).
    learning_rate / backbone_learning_rate: peak AdamW step sizes of the head and of the top unfrozen block.
    layer_decay: layer-wise learning-rate decay: the k-th unfrozen block below the top trains at
        ``backbone_learning_rate * layer_decay ** k`` (1.0: one rate for all).
    weight_decay: decoupled weight decay (AdamW) for both.
    schedule: ``"warmup_cosine"`` (every rate rises linearly from ~0 over ``warmup_epochs``, then follows a cosine
        to 0 at ``epochs``) or ``"constant"`` (after the same warm-up).
    label_smoothing: of the multiclass training loss (replaces the head's own; val loss is never smoothed).
    ema_decay: per-step decay of an exponential moving average of the weights (and statistics), started at the
        swept model; when set, the average is what is evaluated each epoch, selected and saved (None: the raw
        weights).
    metric: what early stopping and the selection of the saved epoch use (None: the task's default metric,
        :func:`jaxheads.metrics.metric_for_task`); ties are broken by the lower val loss.
    epochs, batch_size, patience: the loop; ``patience=None`` never stops early.
    image_size: the input size (default: the backbone's); crop_scale: images are decoded at
        ``round(image_size * crop_scale)`` and randomly cropped to ``image_size`` (1.0, the default: no crop, as
        the head was swept on whole centre-resized images; zoomed crops move the features away from those the head
        learnt, and on ELPV their first epoch's train loss started far above the head's and val loss rose);
        flip: random horizontal flips.
    seed: decides the shuffles, crops, flips and dropout masks.
    """

    unfreeze: int = 1
    freeze_bn: bool = True
    learning_rate: float = 1e-3
    backbone_learning_rate: float = 1e-4
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    patience: int | None = 3
    image_size: int | None = None
    crop_scale: float = 1.0
    flip: bool = True
    seed: int = 0
    layer_decay: float = 0.7
    schedule: str = "warmup_cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    ema_decay: float | None = 0.99
    metric: str | None = None

    def __post_init__(self) -> None:
        checks = {
            "unfreeze": self.unfreeze >= 0,
            "learning_rate": self.learning_rate >= 0,
            "backbone_learning_rate": self.backbone_learning_rate >= 0,
            "weight_decay": self.weight_decay >= 0,
            "epochs": self.epochs >= 0,
            "batch_size": self.batch_size >= 1,
            "patience": self.patience is None or self.patience >= 1,
            "image_size": self.image_size is None or self.image_size >= 8,
            "crop_scale": self.crop_scale >= 1.0,
            "layer_decay": 0.0 <= self.layer_decay <= 1.0,
            "schedule": self.schedule in SCHEDULES,
            "warmup_epochs": self.warmup_epochs >= 0,
            "label_smoothing": 0.0 <= self.label_smoothing < 1.0,
            "ema_decay": self.ema_decay is None or 0.0 <= self.ema_decay < 1.0,
            "metric": self.metric is None or self.metric in METRICS,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"FinetuneConfig.{name}: invalid value {getattr(self, name)!r}")


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
