"""Which backbone: the same sweep on each backbone's cached features, merged into one result with a ``backbone``
factor, so "A vs B" is a head question like the others (the same members, folds, seeds and paired bootstrap
draws), plus what each backbone costs for the Pareto table (:mod:`jaxheads.report.backbones`).

``jaxheads backbones compare`` is a thin wrapper around :func:`compare_backbones`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from jaxheads import data, distributed, features, job
from jaxheads.backbones import cut
from jaxheads.features.options import ExtractOptions
from jaxheads.sweep import SweepSpec, variants

COMPARE_SWEEP = dataclasses.replace(job.DEFAULT_SWEEP, pooling=("none",), conv=((),), widths=(128,), depth=(0, 1),
                                    dropout=(0.0,), norm=("none",), design="grid")
"""What ``backbones compare`` trains on every backbone by default: a linear head and one dense layer of 128 on
the cached average-pooled vector (every backbone has one; no feature maps are held), trained as the main job trains
(its learning rate, batch, epochs, patience and repeated folds: 2 × 3 up to 10,000 train+val examples), so each
backbone gets 12 models."""

DEFAULT_OUT = "runs/compare"


def compare_backbones(
    dataset: str | os.PathLike[str] | data.Dataset,
    names: Sequence[str],
    *,
    sweep: SweepSpec = COMPARE_SWEEP,
    options: job.JobOptions = job.JobOptions(out_dir=DEFAULT_OUT),
    extract: ExtractOptions = job.JOB_EXTRACT,
    feature_progress: Callable[[features.PassProgress], None] | None = None,
    sweep_progress: Callable[[dict[str, Any]], None] | None = None,
) -> job.JobOutput:
    """Feature the dataset with every backbone in ``names`` (``NAME`` with its default weights, or ``NAME=WEIGHTS``:
    a weights file, a named source or none, as ``sweep --weights`` takes them; each at its own input size; cached),
    run ``sweep`` on each, merge the results on the ``backbone`` factor, measure each backbone's cost
    (:func:`jaxheads.backbones.cut.cut_cost`), and write the job's artifacts into ``options.out_dir``; the saved
    model is the recommended head on its own backbone."""
    weights = _check_names(names)
    sources = {name: features.backbone_source(name, None if w == "none" else w, seed=options.seed)  # unknown: fails
               for name, w in weights.items()}
    ds = dataset if isinstance(dataset, data.Dataset) else data.load_dataset(
        dataset, data_dir=options.data_dir, task=options.task, seed=options.seed)  # fmt: skip
    sweep = sweep.for_splits(ds.split_sizes(), f"dataset {ds.name}")
    by_backbone = {name: job.features_for_sweep(source, ds, sweep, extract, feature_progress)
                   for name, source in sources.items()}
    run_args = dict(num_classes=ds.num_classes, task=ds.task, progress=sweep_progress, label_names=list(ds.classes),
                    checkpoint_dir=os.path.join(options.out_dir, job.SWEEP_STATE))
    result = variants.run_variants(sweep, by_backbone, "backbone", **run_args)
    job.add_confusion_matrices(result)
    chosen = result.level() if result.recommended is not None else next(iter(weights))
    files = {}
    if distributed.is_main_process():
        costs = {name: cut.cut_cost(source.load(), None, source.preprocessing.input_size).to_dict()
                 for name, source in sources.items()}
        source = sources[chosen]
        files = job.write_outputs(result, options.out_dir, backbone=chosen, weights=str(weights[chosen]),
                                  weights_id=source.weights_id, dataset=ds.name,
                                  input_size=source.preprocessing.input_size, backbone_costs=costs)
    return job.JobOutput(result, by_backbone[chosen], ds, files)


def _check_names(names: Sequence[str]) -> dict[str, str]:
    """``NAME[=WEIGHTS]`` arguments -> {name: weights} ("default" when none is given), in the order given; fewer
    than two names, or a name twice, is one line naming them."""
    weights = {}
    for text in map(str, names):
        name, _, given = text.partition("=")
        if name in weights:
            break
        weights[name] = given or "default"
    if len(weights) < 2 or len(weights) != len(names):
        raise ValueError(f"backbones compare {' '.join(map(str, names))}: expected at least two distinct backbone "
                         "names, each NAME or NAME=WEIGHTS (see `jaxheads backbones list`)")
    return weights


__all__ = ["COMPARE_SWEEP", "DEFAULT_OUT", "compare_backbones"]
