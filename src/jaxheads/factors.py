"""The factors of a head spec: which level of every question axis (pooling, depth, width, ...) a member takes.

The head questions compare levels of one axis between members that agree on every other applicable factor.
"""

from __future__ import annotations

import json
from typing import Any, Hashable, Iterable, Mapping, Sequence

# Axes of the head questions, in the order they are asked, with how their levels are named.
QUESTION_AXES: tuple[tuple[str, str], ...] = (
    ("pooling", "Pooling"),
    ("depth", "Dense layers"),
    ("width", "Width"),
    ("dropout", "Dropout"),
    ("norm", "Normalisation"),
    ("conv", "Conv stage before pooling"),
    ("activation", "Activation"),
    ("learning_rate", "Learning rate"),
    ("weight_decay", "Weight decay"),
    ("optimizer", "Optimiser"),
    ("batch_size", "Batch size"),
    ("input_size", "Input size"),
    ("views", "Views"),
    ("representation", "Representation"),
    ("backbone", "Backbone"),
)
QUESTION_AXES_NAMES = tuple(a for a, _ in QUESTION_AXES)


def format_level(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def conv_text(conv: Sequence[Mapping[str, int]]) -> str:
    """``[{features: 448, kernel: 1, stride: 1, pool: 2}]`` → ``"1x1×448+pool2"``; no stages → ``"none"``."""
    if not conv:
        return "none"
    parts = []
    for c in conv:
        text = f"{c['kernel']}x{c['kernel']}×{c['features']}"
        text += f"/s{c['stride']}" if c.get("stride", 1) > 1 else ""
        text += f"+pool{c['pool']}" if c.get("pool", 1) > 1 else ""
        parts.append(text)
    return ",".join(parts)


def member_factors(spec: Mapping[str, Any]) -> dict[str, Hashable]:
    """The levels of every question axis for one member spec (``MemberSpec.to_dict()``).

    A factor that does not apply is None: a linear head (no hidden layer) has no width, no hidden dropout, no
    normalisation, and — without conv stages — no activation. Members with None on an axis are left out of that
    axis's question, and a comparison against such a level does not match on the factors it lacks.
    """
    head = spec["head"]
    hidden = list(head.get("hidden", []))
    deep = bool(hidden)
    if not deep:
        width: Hashable = None
    elif len(set(hidden)) == 1:
        width = int(hidden[0])
    else:
        width = "-".join(str(w) for w in hidden)
    fixed = {k: head.get(k) for k in ("input_dropout", "label_smoothing", "pos_weight", "class_weights")}
    return {
        "pooling": head.get("pooling"),
        "depth": len(hidden),
        "width": width,
        "dropout": float(head.get("dropout", 0.0)) if deep else None,
        "norm": head.get("norm", "none") if deep else None,
        "conv": conv_text(head.get("conv", [])),
        "activation": head.get("activation") if deep or head.get("conv") else None,
        "learning_rate": float(spec.get("learning_rate", 0.0)),
        "weight_decay": float(spec.get("weight_decay", 0.0)),
        "optimizer": spec.get("optimizer"),
        "batch_size": int(spec.get("batch_size", 0)),
        # Set only in a sweep over several input sizes (jaxheads.sweep.sizes); None elsewhere, so never asked.
        "input_size": spec.get("input_size"),
        "views": spec.get("views"),  # likewise, a sweep over several --views K (jaxheads.sweep.variants)
        "representation": spec.get("representation"),  # likewise, --representation (jaxheads.sweep.representation)
        "backbone": spec.get("backbone"),  # likewise, `jaxheads backbones compare` (jaxheads.compare)
        "fixed": json.dumps(fixed, sort_keys=True),
    }


def varied_axes(result: Mapping[str, Any]) -> list[str]:
    """The question axes on which the sweep's members take at least two (applicable) levels."""
    levels: dict[str, set] = {a: set() for a in QUESTION_AXES_NAMES}
    for m in result.get("members", []):
        for axis, value in member_factors(m["spec"]).items():
            if axis in levels and value is not None:
                levels[axis].add(value)
    return [a for a in QUESTION_AXES_NAMES if len(levels[a]) > 1]


def sort_levels(values: Iterable[Hashable]) -> list[Hashable]:
    """Numbers ascending, then strings; "none" first among strings (it is the "or not" level), and "last" (the
    representation axis's plain features, the level every other is measured against)."""
    values = list(values)
    nums = sorted(v for v in values if isinstance(v, (int, float)))
    strs = sorted((v for v in values if not isinstance(v, (int, float))), key=lambda s: (s not in ("none", "last"),
                                                                                          str(s)))
    return nums + strs


def matching_keys(factors: Sequence[Mapping[str, Hashable]], axis: str, a: Hashable, b: Hashable) -> list[str]:
    """The factors two heads must share to be compared on ``axis`` (level a vs b): every other one that applies at
    both levels. A factor that is None throughout one level (the width of a linear head) cannot be matched on."""
    at = {level: [f for f in factors if f[axis] == level] for level in (a, b)}
    return [k for k in factors[0] if k != axis and not any(all(f[k] is None for f in at[lv]) for lv in (a, b))]
