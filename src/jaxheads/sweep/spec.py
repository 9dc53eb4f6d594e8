"""What a sweep trains, as data: :class:`SweepSpec` (the grid) and :class:`MemberSpec` (one trained member).

Both are frozen and validated on construction; ``from_dict`` refuses unknown keys, naming them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
from typing import Any, Mapping

from jaxheads import stats
from jaxheads.heads import ConvStage, HeadSpec, from_known_fields
from jaxheads.metrics import metric_for_task

OPTIMIZERS = ("adamw", "adam", "sgd")
DEPTH_GROUPINGS = ("separate", "gated")
# The faster of the two in experiments/sweep/bench_depth.py (results/bench_depth.json): gated only saves compiles.
DEPTH_GROUPING_DEFAULT = "separate"
MAP_BATCH_MODES = ("auto", "probe", "vmap")
DESIGNS = ("grid", "one_factor")
# folds="auto": cross-validate while train+val is small enough that which examples a head trained on dominates the
# noise and the trainings stay cheap; above it, the fixed val split (experiments/README.md, "Honest answers").
# repeats="auto": AUTO_REPEATS partitions when folds="auto" cross-validates, else 1. At the main job's member
# budget, R = 2 x K = 3 and R = 3 x K = 2 both gave nominal corrected intervals in every noise regime, narrower
# than K = 5's (experiments/stats/bench_coverage.py); of the two, K = 3's models train on more of train+val.
AUTO_FOLDS, AUTO_REPEATS, AUTO_FOLDS_MAX_EXAMPLES = 3, 2, 10_000


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """One trained member: a head, how it is trained, its seed and (cross-validation) its fold. Everything but
    ``seed`` and ``fold`` identifies its config."""

    head: HeadSpec
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    batch_size: int = 64
    seed: int = 0
    fold: int | None = None  # trains on the other folds of train+val and is scored on this one

    def __post_init__(self) -> None:
        if isinstance(self.head, Mapping):
            object.__setattr__(self, "head", HeadSpec.from_dict(self.head))
        if not (self.learning_rate >= 0):
            raise ValueError(f"MemberSpec.learning_rate: must be >= 0, got {self.learning_rate!r}")
        if not (self.weight_decay >= 0):
            raise ValueError(f"MemberSpec.weight_decay: must be >= 0, got {self.weight_decay!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"MemberSpec.optimizer: {self.optimizer!r} is not one of {OPTIMIZERS}")
        if int(self.batch_size) < 1:
            raise ValueError(f"MemberSpec.batch_size: must be >= 1, got {self.batch_size!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["head"] = self.head.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MemberSpec":
        return cls(**dict(d))

    def config_id(self) -> str:
        """Stable short id of everything except the seed and fold (replicas and folds share it)."""
        d = self.to_dict()
        d.pop("seed")
        d.pop("fold")
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def _tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """The grid, as data. Every tuple field is an axis; the grid is their cross product (times ``seeds``).

    Head axes: ``pooling``, ``conv`` (a tuple of conv stacks, each a tuple of :class:`ConvStage`), ``hidden``
    (explicit width tuples) or, when ``hidden`` is None, ``widths`` × ``depth`` (every layer of a member has the
    same width; depth 0 is the linear probe), ``activation``, ``dropout``, ``norm``. Training axes:
    ``learning_rate``, ``weight_decay``, ``optimizer`` (adamw | adam | sgd with momentum 0.9), ``batch_size``.
    Scalars: ``epochs``, ``seeds`` (replicas of every config, for noise), ``input_dropout``, ``label_smoothing``,
    ``pos_weight``/``class_weights`` (passed to every head), ``patience`` (epochs without val improvement before a
    member stops; None = never), ``halving_every``/``halving_fraction`` (successive halving: every k epochs drop
    that fraction of the still-training members, weakest first; None = off), ``sample`` (train a random subset of
    that many configs, drawn with ``sample_seed``), ``members`` (explicit MemberSpecs, used instead of the grid
    when given), ``ridge_l2`` (L2 strengths of the ridge-probe baseline; None = ``probe.DEFAULT_L2_GRID``, () = no
    baseline), ``map_batch``
    ("auto" = vmap unless the memory cap bounds it or, on a CPU, members are large (``CPU_MEMBER_MAJOR_PARAMS``);
    "probe" = the fastest of a few timed candidates; "vmap"; or an int k for ``lax.map(batch_size=k)``),
    ``member_memory_mb`` (cap on the
    activation memory of the members batched together on one device; bounds k), ``data_seed``.
    ``folds``: K-fold cross-validation over train+val pooled (None: the fixed val split; "auto": ``AUTO_FOLDS``
    up to ``AUTO_FOLDS_MAX_EXAMPLES`` train+val examples, else None, see :meth:`for_splits`); folds are one
    more member axis, so K folds of every config train in the same programs. ``repeats``: R independent K-fold
    partitions (repeated cross-validation, :mod:`.folds`); the member of (repeat r, seed s, fold k) has fold id
    r * K + k and seed r * S + s, so the split, the initialisation and the batch order vary together, and R * K
    members of every config and seed train in the same programs (1: plain K-fold; "auto": ``AUTO_REPEATS`` when
    folds="auto" cross-validates, else 1). ``metric``: the val metric members
    are ranked and stopped by (None: the task's default, ``metrics.metric_for_task``). ``design``: ``"grid"``
    (the cross product) or ``"one_factor"`` (one factor at a time around the base, the first level of every
    axis).
    ``depth_grouping``: ``"separate"`` (one group per depth) or ``"gated"`` (members differing only in depth,
    depth >= 1, share one group padded to its maximum depth and width; shallower members' extra layers are an
    exact identity). Measured in ``experiments/sweep/bench_depth.py``: see ``DEPTH_GROUPING_DEFAULT``.
    """

    pooling: tuple[str, ...] = ("avg",)
    conv: tuple[tuple[ConvStage, ...], ...] = ((),)
    hidden: tuple[tuple[int, ...], ...] | None = None
    widths: tuple[int, ...] = (64,)
    depth: tuple[int, ...] = (1,)
    activation: tuple[str, ...] = ("relu",)
    dropout: tuple[float, ...] = (0.0,)
    norm: tuple[str, ...] = ("none",)
    learning_rate: tuple[float, ...] = (1e-3,)
    weight_decay: tuple[float, ...] = (0.0,)
    optimizer: tuple[str, ...] = ("adamw",)
    batch_size: tuple[int, ...] = (64,)
    epochs: int = 20
    seeds: int = 1
    input_dropout: float = 0.0
    label_smoothing: float = 0.0
    pos_weight: float | tuple[float, ...] | None = None
    class_weights: tuple[float, ...] | None = None
    patience: int | None = 5
    halving_every: int | None = None
    halving_fraction: float = 0.5
    sample: int | None = None
    sample_seed: int = 0
    members: tuple[MemberSpec, ...] = ()
    ridge_l2: tuple[float, ...] | None = None
    map_batch: str | int = "auto"
    member_memory_mb: float = 1024.0
    data_seed: int = 0
    depth_grouping: str = DEPTH_GROUPING_DEFAULT
    folds: int | str | None = None
    repeats: int | str = "auto"
    metric: str | None = None
    design: str = "grid"

    def __post_init__(self) -> None:
        for f in ("pooling", "widths", "depth", "activation", "dropout", "norm", "learning_rate", "weight_decay",
                  "optimizer", "batch_size"):
            object.__setattr__(self, f, _tuple(getattr(self, f)))
        object.__setattr__(self, "conv", tuple(
            tuple(s if isinstance(s, ConvStage) else ConvStage(**s) for s in stack) for stack in self.conv))
        if self.ridge_l2 is not None:
            object.__setattr__(self, "ridge_l2", _tuple(self.ridge_l2))
        if self.hidden is not None:
            object.__setattr__(self, "hidden", tuple(tuple(h) for h in self.hidden))
        object.__setattr__(self, "members", tuple(
            m if isinstance(m, MemberSpec) else MemberSpec.from_dict(m) for m in self.members))
        if int(self.epochs) < 1:
            raise ValueError(f"SweepSpec.epochs: must be >= 1, got {self.epochs!r}")
        if int(self.seeds) < 1:
            raise ValueError(f"SweepSpec.seeds: must be >= 1, got {self.seeds!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"SweepSpec.patience: must be >= 1 or None, got {self.patience!r}")
        if not (0.0 < self.halving_fraction < 1.0):
            raise ValueError(f"SweepSpec.halving_fraction: must be in (0, 1), got {self.halving_fraction!r}")
        if self.depth_grouping not in DEPTH_GROUPINGS:
            raise ValueError(f"SweepSpec.depth_grouping: {self.depth_grouping!r} is not one of {DEPTH_GROUPINGS}")
        if self.folds is not None and self.folds != "auto" and (isinstance(self.folds, bool) or int(self.folds) < 2):
            raise ValueError(f"--folds: must be >= 2 (got {self.folds!r}); leave it out for a fixed validation split")
        self._check_repeats()
        if self.design not in DESIGNS:
            raise ValueError(f"--design: {self.design!r} is not one of {DESIGNS}")
        if not (self.map_batch in MAP_BATCH_MODES or (isinstance(self.map_batch, int) and self.map_batch >= 1)):
            raise ValueError(f"SweepSpec.map_batch: one of {MAP_BATCH_MODES} or an int >= 1, got {self.map_batch!r}")

    def _check_repeats(self) -> None:
        """``repeats`` is "auto" or a whole number >= 1, and above 1 only with folds; a one-line error naming the
        flag."""
        if self.repeats == "auto":
            return
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"--repeats: must be a whole number >= 1 (got {self.repeats!r})")
        if self.repeats > 1 and self.folds is None:
            raise ValueError(f"--repeats {self.repeats}: repeats partition the folds, and --folds none has none; "
                             "pass --folds K (or auto)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["members"] = [m.to_dict() for m in self.members]
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SweepSpec":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        return from_known_fields(cls, d)

    def ranking_metric(self, task: str) -> str:
        """The val metric members of ``task`` are ranked and stopped by (an error naming ``--metric`` otherwise)."""
        return stats.check_metric(self.metric or metric_for_task(task), task)

    def for_splits(self, sizes: Mapping[str, int], owner: str) -> "SweepSpec":
        """This spec for splits of ``sizes`` ({split: examples}): they must hold ``train`` and ``val`` (else a
        one-line DatasetError naming ``owner``, the dataset or caller), and ``folds="auto"`` is decided on their
        train+val examples."""
        from jaxheads.data.dataset import DatasetError

        if "train" not in sizes or "val" not in sizes:
            raise DatasetError(f"{owner}: needs 'train' and 'val' splits, has {sorted(sizes)}")
        if self.folds != "auto":
            return self if self.repeats != "auto" else dataclasses.replace(self, repeats=1)
        folds = AUTO_FOLDS if sizes["train"] + sizes["val"] <= AUTO_FOLDS_MAX_EXAMPLES else None
        if self.repeats == "auto":
            return dataclasses.replace(self, folds=folds, repeats=AUTO_REPEATS if folds else 1)
        if folds is None and self.repeats > 1:
            raise ValueError(f"--repeats {self.repeats}: --folds auto chose the fixed split for "
                             f"{sizes['train'] + sizes['val']:,} train+val examples; pass --folds K to repeat them")
        return dataclasses.replace(self, folds=folds)

    def expand(self, num_classes: int, task: str) -> list[MemberSpec]:
        """Every member: explicit ``members``, else the (sampled) configs of the design, each repeated for every
        seed and, with ``folds``, every fold (in that order: config, repeat, seed, fold)."""
        if self.members:
            return [m if m.head.num_classes == num_classes and m.head.task == task else dataclasses.replace(
                m, head=m.head.replace(num_classes=num_classes, task=task)) for m in self.members]
        # A linear head has no hidden layer to normalise: its norm levels are one config, not several.
        configs = list(dict.fromkeys(self._member(num_classes, task, cell) for cell in self._cells()))
        if self.sample is not None and self.sample < len(configs):
            configs = random.Random(self.sample_seed).sample(configs, self.sample)
        if self.folds == "auto":
            raise ValueError("SweepSpec.folds 'auto': decide it for the dataset first (SweepSpec.for_splits)")
        if not self.folds:
            return [dataclasses.replace(c, seed=s) for c in configs for s in range(self.seeds)]
        k, n_seeds = self.folds, self.seeds
        repeats = 1 if self.repeats == "auto" else self.repeats  # "auto" under explicit folds: one partition
        return [dataclasses.replace(c, seed=r * n_seeds + s, fold=r * k + f) for c in configs
                for r in range(repeats) for s in range(n_seeds) for f in range(k)]

    def _axes(self) -> list[tuple[Any, ...]]:
        """The levels of every axis, in the order of :meth:`_member`'s arguments (the first level is the base)."""
        hidden = self.hidden if self.hidden is not None else tuple(
            dict.fromkeys((w,) * d for d in self.depth for w in self.widths))
        return [self.pooling, self.conv, hidden, self.activation, self.dropout, self.norm, self.learning_rate,
                self.weight_decay, self.optimizer, self.batch_size]

    def _cells(self) -> list[tuple[Any, ...]]:
        """``grid``: the cross product of the axes. ``one_factor``: the base (every axis at its first level), then
        each axis's other levels with the rest at the base; widths and depths vary apart around the first of each."""
        axes = self._axes()
        if self.design == "grid":
            return list(itertools.product(*axes))
        if self.hidden is None:
            axes[2] = tuple(dict.fromkeys([(self.widths[0],) * self.depth[0]]
                                          + [(w,) * self.depth[0] for w in self.widths[1:]]
                                          + [(self.widths[0],) * d for d in self.depth[1:]]))
        base = tuple(levels[0] for levels in axes)
        cells = [base] + [base[:i] + (level,) + base[i + 1:] for i, levels in enumerate(axes) for level in levels[1:]]
        return list(dict.fromkeys(cells))

    def _member(self, num_classes: int, task: str, cell: tuple) -> MemberSpec:
        """The member of one grid cell: (pooling, conv, hidden, activation, dropout, norm, lr, wd, optimizer,
        batch size), the order of :meth:`_cells`' axes."""
        pool, conv, hid, act, drop, norm, lr, wd, opt, bs = cell
        head = HeadSpec(num_classes=num_classes, task=task, pooling=pool, conv=conv, hidden=hid, activation=act,
                        dropout=drop, input_dropout=self.input_dropout, norm=norm if hid else "none",
                        label_smoothing=self.label_smoothing, pos_weight=self.pos_weight,
                        class_weights=self.class_weights)
        return MemberSpec(head, lr, wd, opt, bs)

