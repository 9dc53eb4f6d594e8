"""A fine-tune's settings (:class:`FinetuneConfig`) and its outcome (:class:`FinetuneResult`), as plain data."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

__all__ = ["FinetuneConfig", "FinetuneResult"]


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a fine-tune, as data (stored with each checkpoint: a resume must use the same ones).

    unfreeze: how many of the backbone's top ``config.blocks`` train (0: the head alone).
    freeze_bn: batch norm uses (and keeps) its running statistics; False lets them train (see
        :mod:`jaxheads.finetuning`).
    learning_rate / backbone_learning_rate: Adam(W) step sizes of the head and of the unfrozen blocks.
    weight_decay: decoupled weight decay (AdamW) for both.
    epochs, batch_size, patience: the loop; ``patience=None`` never stops early.
    image_size: the input size (default: the backbone's); crop_scale: images are decoded at
        ``round(image_size * crop_scale)`` and randomly cropped to ``image_size`` (1.0: no crop); flip: random
        horizontal flips.
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
    crop_scale: float = 1.125
    flip: bool = True
    seed: int = 0

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
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"FinetuneConfig.{name}: invalid value {getattr(self, name)!r}")


@dataclasses.dataclass
class FinetuneResult:
    """What a fine-tune did. ``before``/``best`` are val metrics of the starting model and of the saved one;
    ``improved`` is False when no epoch beat the starting model (the saved model is then the starting one); an
    epoch beats another by a higher val metric or, on a tie, a lower val loss."""

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
    (``batch_stats/<block>``), and of the head (``head``), from the start to the last epoch trained."""

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
