"""A classifier head as data: :class:`HeadSpec` (and its :class:`ConvStage`), validated at construction, and
the shapes that follow from a spec alone (:func:`check_input`, :func:`pooled_dim`, :func:`flops_per_example`).

No arrays here: :mod:`jaxheads.heads` turns a spec into variables and logits, and re-exports every name below.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

POOLINGS = ("avg", "max", "avgmax", "catavgmax", "flatten", "none")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
NORMS = ("none", "batch", "layer")
TASKS = ("multiclass", "multilabel")


def from_known_fields(cls: type, d: Mapping[str, Any]) -> Any:
    """``cls(**d)`` for a dataclass, refusing keys that are not its fields with an error naming them."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    return cls(**dict(d))


def _fail(field: str, message: str) -> None:
    raise ValueError(f"HeadSpec.{field}: {message}")


@dataclasses.dataclass(frozen=True)
class ConvStage:
    """One conv stage on the feature map: ``kernel``×``kernel`` conv with ``features`` outputs and ``stride``
    ("SAME" padding), the head's activation, then an optional ``pool``×``pool`` max pool (stride ``pool``)."""

    features: int
    kernel: int = 1
    stride: int = 1
    pool: int = 1

    def __post_init__(self) -> None:
        for name in ("features", "kernel", "stride", "pool"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                _fail(f"conv.{name}", f"must be an integer >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """One head, as data. Validated at construction; a bad value raises ``ValueError`` naming its field.

    pooling: ``avg`` | ``max`` | ``avgmax`` (mean of avg and max) | ``catavgmax`` (concatenation) | ``flatten`` |
        ``none`` (the input is already pooled, shape (N, C); no conv stages possible).
    conv: conv stages applied to the (N, H, W, C) map before pooling.
    hidden: dense widths (``()`` = linear probe). ``activation`` follows each hidden layer (and each conv stage).
    dropout: rate after each hidden activation; ``input_dropout``: rate on the pooled input. Both in [0, 1).
    norm: ``none`` | ``batch`` | ``layer`` between each hidden dense layer and its activation.
    num_classes, task: ``multiclass`` (softmax cross-entropy with ``label_smoothing``) or ``multilabel`` (sigmoid
        binary cross-entropy with ``pos_weight``, a scalar or one per class).
    class_weights: optional per-class loss weights (imbalance).
    """

    num_classes: int = 2
    task: str = "multiclass"
    pooling: str = "avg"
    conv: tuple[ConvStage, ...] = ()
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    dropout: float = 0.0
    input_dropout: float = 0.0
    norm: str = "none"
    label_smoothing: float = 0.0
    pos_weight: float | tuple[float, ...] | None = None
    class_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # Normalise containers so that specs read from JSON/YAML compare and hash equal to those built in code.
        object.__setattr__(self, "conv", tuple(c if isinstance(c, ConvStage) else ConvStage(**c) for c in self.conv))
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if isinstance(self.pos_weight, (list, tuple)):
            object.__setattr__(self, "pos_weight", tuple(float(v) for v in self.pos_weight))
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(v) for v in self.class_weights))
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.num_classes, (int, np.integer)) or self.num_classes < 2:
            _fail("num_classes", f"need at least 2 classes, got {self.num_classes!r}")
        if self.task not in TASKS:
            _fail("task", f"{self.task!r} is not one of {TASKS}")
        if self.pooling not in POOLINGS:
            _fail("pooling", f"{self.pooling!r} is not one of {POOLINGS}")
        if self.pooling == "none" and self.conv:
            _fail("conv", "conv stages need a spatial feature map, but pooling='none' takes pooled features")
        for i, w in enumerate(self.hidden):
            if not isinstance(w, (int, np.integer)) or isinstance(w, bool) or w < 1:
                _fail("hidden", f"width {i} must be an integer >= 1, got {w!r}")
        if self.activation not in ACTIVATIONS:
            _fail("activation", f"{self.activation!r} is not one of {ACTIVATIONS}")
        for name in ("dropout", "input_dropout", "label_smoothing"):
            value = getattr(self, name)
            if not (0.0 <= float(value) < 1.0):
                _fail(name, f"must be in [0, 1), got {value!r}")
        if self.norm not in NORMS:
            _fail("norm", f"{self.norm!r} is not one of {NORMS}")
        if self.label_smoothing and self.task != "multiclass":
            _fail("label_smoothing", "only applies to multiclass heads")
        if self.pos_weight is not None:
            if self.task != "multilabel":
                _fail("pos_weight", "only applies to multilabel heads")
            weights = self.pos_weight if isinstance(self.pos_weight, tuple) else (self.pos_weight,)
            if isinstance(self.pos_weight, tuple) and len(weights) != self.num_classes:
                _fail("pos_weight", f"needs {self.num_classes} values, got {len(weights)}")
            if any(w <= 0 for w in weights):
                _fail("pos_weight", "must be > 0")
        if self.class_weights is not None:
            if len(self.class_weights) != self.num_classes:
                _fail("class_weights", f"needs {self.num_classes} values, got {len(self.class_weights)}")
            if any(w < 0 for w in self.class_weights):
                _fail("class_weights", "must be >= 0")

    # ---- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HeadSpec":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        return from_known_fields(cls, d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "HeadSpec":
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls, text: str) -> "HeadSpec":
        import yaml

        return cls.from_dict(yaml.safe_load(text))

    def replace(self, **changes: Any) -> "HeadSpec":
        return dataclasses.replace(self, **changes)

    @property
    def feature_kind(self) -> str:
        """The cached features the head reads: ``"pooled"`` vectors (pooling "none"), else the spatial ``"maps"``."""
        return "pooled" if self.pooling == "none" else "maps"

    # ---- grouping ------------------------------------------------------------------------------------------
    def structure(self) -> "HeadSpec":
        """The spec with everything that may vary inside one compiled group blanked out (widths → 1, dropout
        rates → 0): two members share a program iff their structures are equal."""
        return dataclasses.replace(self, hidden=(1,) * len(self.hidden), dropout=0.0, input_dropout=0.0)


# ---- shapes ----------------------------------------------------------------------------------------------------
def check_input(spec: HeadSpec, feature_shape: Sequence[int]) -> None:
    """Raise ``ValueError`` naming ``pooling`` when the features do not fit the spec (e.g. flatten on pooled)."""
    shape = tuple(feature_shape)
    if spec.pooling == "none" and len(shape) != 1:
        _fail("pooling", f"'none' takes pooled features (C,), got a map of shape {shape}")
    if spec.pooling != "none" and len(shape) != 3:
        _fail("pooling", f"{spec.pooling!r} needs a spatial map (H, W, C), got already-pooled features {shape}")


def _conv_out_hw(h: int, w: int, stage: ConvStage) -> tuple[int, int]:
    h, w = math.ceil(h / stage.stride), math.ceil(w / stage.stride)
    return h // stage.pool, w // stage.pool


def pooled_dim(spec: HeadSpec, feature_shape: Sequence[int]) -> int:
    """Width of the vector the first dense layer sees."""
    check_input(spec, feature_shape)
    if spec.pooling == "none":
        return int(feature_shape[0])
    h, w, c = feature_shape
    for stage in spec.conv:
        h, w = _conv_out_hw(h, w, stage)
        c = stage.features
        if h < 1 or w < 1:
            _fail("conv", f"stages shrink the {tuple(feature_shape)} map to nothing")
    if spec.pooling == "flatten":
        return h * w * c
    return 2 * c if spec.pooling == "catavgmax" else c


def flops_per_example(spec: HeadSpec, feature_shape: Sequence[int]) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass of one example through the head's conv and dense layers."""
    total = 0
    if spec.pooling != "none":
        h, w, c = feature_shape
        for stage in spec.conv:
            ho, wo = math.ceil(h / stage.stride), math.ceil(w / stage.stride)
            total += 2 * ho * wo * stage.kernel * stage.kernel * c * stage.features
            h, w, c = ho // stage.pool, wo // stage.pool, stage.features
    dims = (pooled_dim(spec, feature_shape), *spec.hidden, spec.num_classes)
    return total + sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))
