"""Input size as a sweep axis: the same sweep run on the features of each input size, merged into one result.

The jitted engine trains on one feature tensor per split, so each input size is its own :func:`run_sweep` on the
same members, folds and seeds; :func:`merge_sizes` (:func:`jaxheads.variants.merge_variants` on the
``input_size`` axis) then joins the results into one :class:`SizedSweepResult` whose member specs carry an
``input_size`` factor, so the verdicts ask "Input size: 224 vs 300" with the same paired bootstrap as every other
question.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

from jaxheads.splits import FeatureSplit
from jaxheads.sweep import SweepResult, SweepSpec
from jaxheads.variants import VariantSweepResult, merge_variants, run_variants, variant_config

__all__ = ["SizedSweepResult", "merge_sizes", "parse_sizes", "run_sizes", "size_config"]

SizedSweepResult = VariantSweepResult
"""A sweep over input sizes: ``input_sizes``, ``input_size(member)``, ``shapes_by_size``."""


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
    return variant_config(config, "input_size", size)


def run_sizes(sweep: SweepSpec, splits_by_size: Mapping[int, Mapping[str, FeatureSplit]], *, num_classes: int,
              task: str = "multiclass", label_names: Sequence[str] | None = None,
              progress: Callable[[dict[str, Any]], None] | None = None,
              checkpoint_dir: str | os.PathLike[str] | None = None,
              device_memory_budget: int | str | None = None) -> SizedSweepResult:
    """:func:`run_sweep` of ``sweep`` on every size's features (the same members, folds and seeds, the same
    device-memory budget), merged."""
    return run_variants(sweep, splits_by_size, "input_size", num_classes=num_classes, task=task,
                        label_names=label_names, progress=progress, checkpoint_dir=checkpoint_dir,
                        device_memory_budget=device_memory_budget)


def merge_sizes(results: Mapping[int, SweepResult]) -> SizedSweepResult:
    """One result over the input sizes of ``results`` ({size: the sweep on that size's features}):
    :func:`jaxheads.variants.merge_variants` on the ``input_size`` axis."""
    return merge_variants(results, "input_size")
