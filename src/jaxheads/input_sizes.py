"""Input size as a sweep axis: the same sweep run on the features of each input size, merged into one result.

The jitted engine trains on one feature tensor per split, so each input size is its own :func:`run_sweep` on the
same members, folds and seeds; :func:`merge_sizes` then joins the results into one :class:`SizedSweepResult`
whose member specs carry an ``input_size`` factor (:func:`jaxheads.factors.member_factors`). The examples are the
same at every size (checked on the labels and folds), so the members' per-example predictions line up and the
verdicts ask "Input size: 224 vs 300" with the same paired bootstrap as every other question.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxheads.heads import HeadSpec
from jaxheads.splits import FeatureSplit
from jaxheads.sweep import MemberSpec, SweepResult, SweepSpec, leaderboard, run_sweep
from jaxheads.sweep import verdicts

__all__ = ["SizedSweepResult", "merge_sizes", "parse_sizes", "run_sizes", "size_config"]


@dataclasses.dataclass
class SizedSweepResult(SweepResult):
    """A :class:`SweepResult` over several input sizes: every member spec has ``input_size``; ``feature_shapes``
    are those of the recommended config's size, ``shapes_by_size`` every size's."""

    input_sizes: list[int] = dataclasses.field(default_factory=list)
    shapes_by_size: dict[int, dict[str, list[int] | None]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "input_sizes": list(self.input_sizes)}

    def input_size(self, member: int | None = None) -> int:
        """The input size member ``member`` (default: the recommended one) was trained at."""
        member = self.recommended_member() if member is None else member
        if member is None:
            raise ValueError("no member to return: the sweep recommended nothing")
        return int(self.members[member]["spec"]["input_size"])

    def head(self, member: int | None = None) -> tuple[HeadSpec, Any]:
        member = self.recommended_member() if member is None else member
        if member is None:
            raise ValueError("no member to return: the sweep recommended nothing")
        spec = {k: v for k, v in self.members[member]["spec"].items() if k != "input_size"}
        return MemberSpec.from_dict(spec).head, self.variables[member]


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


def size_config(config: str, size: int) -> str:
    """A config id at one input size: the head's id and the size (the same head at two sizes is two configs)."""
    return f"{config}@{size}px"


def run_sizes(sweep: SweepSpec, splits_by_size: Mapping[int, Mapping[str, FeatureSplit]], *, num_classes: int,
              task: str = "multiclass", label_names: Sequence[str] | None = None,
              progress: Callable[[dict[str, Any]], None] | None = None,
              checkpoint_dir: str | os.PathLike[str] | None = None,
              device_memory_budget: int | str | None = None) -> SizedSweepResult:
    """:func:`run_sweep` of ``sweep`` on every size's features (the same members, folds and seeds, the same
    device-memory budget), merged."""
    results = {}
    for size, splits in splits_by_size.items():
        where = None if checkpoint_dir is None else Path(checkpoint_dir) / f"{size}px"
        results[int(size)] = run_sweep(sweep, splits, num_classes=num_classes, task=task, progress=progress,
                                       label_names=label_names, checkpoint_dir=where,
                                       device_memory_budget=device_memory_budget)
    return merge_sizes(results)


def _check_same_examples(results: Mapping[int, SweepResult]) -> None:
    """Predictions pair up only if every size scored the same examples in the same order (and the same folds)."""
    first_size, first = next(iter(results.items()))
    for size, result in results.items():
        for what in ("task", "num_classes", "metric"):
            if getattr(result, what) != getattr(first, what):
                raise ValueError(f"merge_sizes: the {size} px sweep has {what} {getattr(result, what)!r}, the "
                                 f"{first_size} px one {getattr(first, what)!r}")
        if not result.predictions:
            raise ValueError(f"merge_sizes: the {size} px sweep kept no predictions")
        for key in ("val_labels", "val_fold", "test_labels"):
            a, b = first.predictions.get(key), result.predictions.get(key)
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                raise ValueError(f"merge_sizes: {key} differ between the {first_size} px and {size} px sweeps "
                                 "(the sizes must be featured from the same examples, split the same way)")


def _member_at(record: Mapping[str, Any], size: int, member_offset: int, group_offset: int) -> dict[str, Any]:
    out = dict(record)
    out["spec"] = {**record["spec"], "input_size": size}
    out["config"] = size_config(record["config"], size)
    out["member"] = int(record["member"]) + member_offset
    out["group"] = int(record["group"]) + group_offset
    return out


def _merged_predictions(results: Mapping[int, SweepResult]) -> dict[str, np.ndarray]:
    first = next(iter(results.values())).predictions
    out = {k: v for k, v in first.items() if k in ("val_labels", "val_fold", "test_labels")}
    for key in ("val", "test"):
        if key in first:
            out[key] = np.concatenate([r.predictions[key] for r in results.values()])
    return out


def merge_sizes(results: Mapping[int, SweepResult]) -> SizedSweepResult:
    """One result over the input sizes of ``results`` ({size: the sweep on that size's features}): members and
    groups renumbered one size after another, configs named per size (:func:`size_config`), predictions stacked,
    then ranked and analysed again (intervals, the questions with "Input size", the recommendation)."""
    if len(results) < 1:
        raise ValueError("merge_sizes: no sweep results to merge")
    results = dict(sorted((int(s), r) for s, r in results.items()))
    _check_same_examples(results)
    members, variables, groups, ridge = [], [], [], []
    timings: dict[str, float] = {"total_s": 0.0, "ridge_s": 0.0}
    for size, result in results.items():
        member_offset, group_offset = len(members), len(groups)
        members += [_member_at(m, size, member_offset, group_offset) for m in result.members]
        variables += list(result.variables)
        groups += [{**g, "group": int(g["group"]) + group_offset, "input_size": size,
                    "members": [int(i) + member_offset for i in g["members"]]} for g in result.groups]
        ridge += [{**row, "input_size": size} for row in result.ridge]
        for key, seconds in result.timings.items():
            timings[key] = timings.get(key, 0.0) + float(seconds)
            timings[f"{key}@{size}px"] = float(seconds)
    first = next(iter(results.values()))
    board, recommended = leaderboard(members, first.metric)
    shapes = {size: dict(r.feature_shapes) for size, r in results.items()}
    merged = SizedSweepResult(
        task=first.task, num_classes=first.num_classes, metric=first.metric, sweep=first.sweep, members=members,
        leaderboard=board, recommended=recommended, ridge=ridge, groups=groups, timings=timings,
        feature_shapes=shapes[next(iter(shapes))], label_names=first.label_names, variables=variables,
        predictions=_merged_predictions(results), input_sizes=list(results), shapes_by_size=shapes)
    merged = verdicts.analyse(merged)
    if merged.recommended is not None:
        merged.feature_shapes = shapes[merged.input_size()]
    return merged
