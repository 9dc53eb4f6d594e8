"""Feature variants as a sweep axis: the same sweep run on several variants of the features, merged into one result.

A variant is one level of a feature axis the jitted engine cannot vary inside one program: the input size the
images were featured at (``input_size``, :mod:`jaxheads.sweep.sizes`), the number K of views heads train on
(``views``: the plain image and K-1 augmented views, :mod:`jaxheads.data.augment`), or the pooled vector heads
read (``representation``: a named level such as ``last`` or ``all``, :mod:`jaxheads.sweep.representation`), or the
backbone that made them (``backbone``: ``jaxheads backbones compare``, :mod:`jaxheads.compare`). Each
level is its own :func:`run_sweep` on the same members, folds and seeds (a representation level may run fewer); :func:`merge_variants` joins the results into one
:class:`VariantSweepResult` whose member specs carry the axis as a factor (:func:`jaxheads.factors.member_factors`).
The examples scored are the same at every level (checked on the labels and folds; views only add training rows),
so the members' per-example predictions line up and the verdicts ask "Input size: 224 vs 300" or "Views: 1 vs 4"
with the same paired bootstrap as every other question.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxheads.heads import HeadSpec
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import verdicts
from jaxheads.sweep.result import SweepResult, leaderboard
from jaxheads.sweep.run import run_sweep
from jaxheads.sweep.spec import MemberSpec, SweepSpec

__all__ = ["STRING_AXES", "VARIANT_AXES", "VariantSweepResult", "check_one_axis", "merge_variants", "parse_sizes",
           "parse_views", "run_variants", "splits_at_views", "variant_config"]

# axis -> (config id suffix for a level, what results.json lists the levels as, a level in words)
VARIANT_AXES: dict[str, tuple[str, str, str]] = {
    "input_size": ("{}px", "input_sizes", "{} px"),
    "views": ("{}views", "views_swept", "{} views"),
    "representation": ("{}", "representations", "representation {}"),
    "backbone": ("{}", "backbones", "backbone {}"),
}
STRING_AXES = ("representation", "backbone")
"""Axes whose levels are names, kept in the order given (the others are numbers, sorted)."""


@dataclasses.dataclass
class VariantSweepResult(SweepResult):
    """A :class:`SweepResult` over the levels of one variant axis: every member spec has the axis (``input_size``,
    ``views``, ``representation`` or ``backbone``); ``feature_shapes`` are those of the recommended config's level,
    ``shapes_by_level`` every level's."""

    axis: str = "input_size"
    levels: list[Any] = dataclasses.field(default_factory=list)
    shapes_by_level: dict[Any, dict[str, list[int] | None]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), VARIANT_AXES[self.axis][1]: list(self.levels)}

    def level(self, member: int | None = None) -> Any:
        """The level of the axis member ``member`` (default: the recommended one) was trained at."""
        member = self.recommended_member() if member is None else member
        if member is None:
            raise ValueError("no member to return: the sweep recommended nothing")
        return _level(self.members[member]["spec"][self.axis], self.axis)

    def input_size(self, member: int | None = None) -> int:
        """The input size member ``member`` (default: the recommended one) was trained at (a size sweep only)."""
        if self.axis != "input_size":
            raise ValueError(f"a sweep over {self.axis}, not input sizes: ask level() instead")
        return self.level(member)

    @property
    def input_sizes(self) -> list[int]:
        return list(self.levels) if self.axis == "input_size" else []

    @property
    def shapes_by_size(self) -> dict[int, dict[str, list[int] | None]]:
        return dict(self.shapes_by_level) if self.axis == "input_size" else {}

    def head(self, member: int | None = None) -> tuple[HeadSpec, Any]:
        member = self.recommended_member() if member is None else member
        if member is None:
            raise ValueError("no member to return: the sweep recommended nothing")
        spec = {k: v for k, v in self.members[member]["spec"].items() if k not in VARIANT_AXES}
        return MemberSpec.from_dict(spec).head, self.variables[member]


def _level(value: Any, axis: str) -> Any:
    """A level as its axis keeps it: a name for a string axis, else an int."""
    return str(value) if axis in STRING_AXES else int(value)


def variant_config(config: str, axis: str, level: Any) -> str:
    """A config id at one level: the head's id and the level (the same head at two levels is two configs)."""
    return f"{config}@{VARIANT_AXES[axis][0].format(level)}"


def parse_sizes(text: str | int | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"224,300"`` (or an int, or ints) -> (224, 300); None stays None (the backbone's own size). Sizes must be
    distinct positive integers; anything else is a one-line error naming ``--input-size``."""
    if text is None:
        return None
    items = [text] if isinstance(text, int) else text.split(",") if isinstance(text, str) else list(text)
    try:
        sizes = tuple(int(str(v).strip()) for v in items)
    except ValueError:
        raise ValueError(f"--input-size {text!r}: expected comma-separated pixel sizes, e.g. 224,300") from None
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise ValueError(f"--input-size {text!r}: expected distinct positive pixel sizes, e.g. 224,300")
    return sizes


def parse_views(text: str | int | Sequence[int]) -> tuple[int, ...]:
    """``"1,4"`` (or an int, or ints) -> (1, 4): distinct view counts K >= 1, ascending; anything else is a one-line
    error naming ``--views``."""
    items = [text] if isinstance(text, (int, np.integer)) else text.split(",") if isinstance(text, str) else list(text)
    try:
        counts = tuple(int(str(v).strip()) for v in items)
    except ValueError:
        raise ValueError(f"--views {text}: expected a view count K >= 1 or a comma list of them, e.g. 4 or "
                         "1,4") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts) or any(isinstance(v, bool) for v in items):
        raise ValueError(f"--views {text}: expected distinct view counts K >= 1 (1 = the plain image only), e.g. "
                         "4 or 1,4")
    return tuple(sorted(counts))


def check_one_axis(input_size: Any, views: Any, representation: Any = "last") -> None:
    """Several input sizes and several K in one job are refused (one merge axis at a time), and so is a
    representation other than ``last`` beside several sizes or K > 1 views (the views carry no standardised taps):
    a one-line error naming the flags."""
    sizes = str(input_size).split(",") if input_size is not None else []
    if len(sizes) > 1 and len(parse_views(views)) > 1:
        raise ValueError(f"--input-size {input_size} with --views {views}: sweep several input sizes or several "
                         "view counts, not both")
    if str(representation).strip() != "last" and (len(sizes) > 1 or max(parse_views(views)) > 1):
        other = f"--input-size {input_size}" if len(sizes) > 1 else f"--views {views}"
        raise ValueError(f"--representation {representation} with {other}: a representation axis runs on one input "
                         "size and the plain images (views 1)")


def splits_at_views(splits: Mapping[str, FeatureSplit], views: int) -> dict[str, FeatureSplit]:
    """The splits as :func:`features.extract_all` gives them at ``views`` K, from splits extracted at some K' >= K:
    views 1..K-1 kept (view v's cache entry does not depend on K), the rest dropped; K = 1 keeps no views."""
    out = {}
    for name, split in splits.items():
        kept = tuple(split.views or ())[:views - 1]
        if split.views is not None and len(kept) < views - 1:
            raise ValueError(f"splits_at_views: split {name!r} has {1 + len(split.views)} views, asked for {views}")
        # The constructor, not _replace: FeatureSplit's __len__ (examples) breaks NamedTuple._replace.
        out[name] = FeatureSplit(split.labels, split.pooled, split.maps, kept or None) if split.views else split
    return out


def run_variants(sweep: SweepSpec | Mapping[Any, SweepSpec],
                 splits_by_level: Mapping[Any, Mapping[str, FeatureSplit]], axis: str,
                 **run_args: Any) -> VariantSweepResult:
    """:func:`run_sweep` of ``sweep`` on every level's features with the same ``run_args`` (its keyword arguments:
    the same members, folds, seeds and device-memory budget; each level resumes from its own folder under
    ``checkpoint_dir``), merged. ``sweep`` may be one spec per level ({level: spec}: a representation level runs
    only the heads that read pooled vectors)."""
    results = {}
    checkpoint_dir = run_args.pop("checkpoint_dir", None)
    for level, splits in splits_by_level.items():
        suffix = re.sub(r"[^\w.-]", "_", VARIANT_AXES[axis][0].format(level))  # a folder name (keras:PATH too)
        where = None if checkpoint_dir is None else Path(checkpoint_dir) / suffix
        spec = sweep[level] if isinstance(sweep, Mapping) else sweep
        results[_level(level, axis)] = run_sweep(spec, splits, checkpoint_dir=where, **run_args)
    return merge_variants(results, axis)


def _check_same_examples(results: Mapping[Any, SweepResult], axis: str) -> None:
    """Predictions pair up only if every level scored the same examples in the same order (and the same folds)."""
    name = {level: VARIANT_AXES[axis][2].format(level) for level in results}
    first_level, first = next(iter(results.items()))
    for level, result in results.items():
        for what in ("task", "num_classes", "metric"):
            if getattr(result, what) != getattr(first, what):
                raise ValueError(f"merge: the {name[level]} sweep has {what} {getattr(result, what)!r}, the "
                                 f"{name[first_level]} one {getattr(first, what)!r}")
        if not result.predictions:
            raise ValueError(f"merge: the {name[level]} sweep kept no predictions")
        for key in ("val_labels", "val_fold", "test_labels"):
            a, b = first.predictions.get(key), result.predictions.get(key)
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                raise ValueError(f"merge: {key} differ between the {name[first_level]} and {name[level]} sweeps "
                                 "(every level must be featured from the same examples, split the same way)")


def _member_at(record: Mapping[str, Any], axis: str, level: Any, member_offset: int,
               group_offset: int) -> dict[str, Any]:
    out = dict(record)
    out["spec"] = {**record["spec"], axis: level}
    out["config"] = variant_config(record["config"], axis, level)
    out["member"] = int(record["member"]) + member_offset
    out["group"] = int(record["group"]) + group_offset
    return out


def _merged_predictions(results: Mapping[Any, SweepResult]) -> dict[str, np.ndarray]:
    first = next(iter(results.values())).predictions
    out = {k: v for k, v in first.items() if k in ("val_labels", "val_fold", "test_labels")}
    for key in ("val", "test"):
        if key in first:
            out[key] = np.concatenate([r.predictions[key] for r in results.values()])
    return out


def merge_variants(results: Mapping[Any, SweepResult], axis: str) -> VariantSweepResult:
    """One result over the levels of ``axis`` in ``results`` ({level: the sweep on that level's features}):
    members and groups renumbered one level after another, configs named per level (:func:`variant_config`),
    predictions stacked, then ranked and analysed again (intervals, the questions with the axis, the
    recommendation). The recommended level's test-time-augmentation count (``selection.test_views``) carries over."""
    if axis not in VARIANT_AXES:
        raise ValueError(f"merge_variants: axis {axis!r}: expected one of {', '.join(VARIANT_AXES)}")
    if len(results) < 1:
        raise ValueError("merge_variants: no sweep results to merge")
    results = {_level(level, axis): r for level, r in results.items()}  # names in the order given, numbers sorted
    results = results if axis in STRING_AXES else dict(sorted(results.items()))
    _check_same_examples(results, axis)
    members, variables, groups, ridge = [], [], [], []
    timings: dict[str, float] = {"total_s": 0.0, "ridge_s": 0.0}
    for level, result in results.items():
        member_offset, group_offset = len(members), len(groups)
        members += [_member_at(m, axis, level, member_offset, group_offset) for m in result.members]
        variables += list(result.variables)
        groups += [{**g, "group": int(g["group"]) + group_offset, axis: level,
                    "members": [int(i) + member_offset for i in g["members"]]} for g in result.groups]
        ridge += [{**row, axis: level} for row in result.ridge]
        for key, seconds in result.timings.items():
            timings[key] = timings.get(key, 0.0) + float(seconds)
            timings[f"{key}@{VARIANT_AXES[axis][0].format(level)}"] = float(seconds)
    first = next(iter(results.values()))
    board, recommended = leaderboard(members, first.metric)
    shapes = {level: dict(r.feature_shapes) for level, r in results.items()}
    merged = VariantSweepResult(
        task=first.task, num_classes=first.num_classes, metric=first.metric, sweep=first.sweep, members=members,
        leaderboard=board, recommended=recommended, ridge=ridge, groups=groups, timings=timings,
        feature_shapes=shapes[next(iter(shapes))], label_names=first.label_names, variables=variables,
        predictions=_merged_predictions(results), axis=axis, levels=list(results), shapes_by_level=shapes)
    merged = verdicts.analyse(merged)
    if merged.recommended is not None:
        level = merged.level()
        merged.feature_shapes = shapes[level]
        test_views = results[level].selection.get("test_views")
        if test_views is not None and merged.selection.get("test") is not None:
            merged.selection["test_views"] = test_views
    return merged
