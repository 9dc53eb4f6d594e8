"""The main job as one Python call: dataset -> cached backbone features -> sweep -> report + chosen head.

``jaxheads sweep`` is a thin wrapper around :func:`sweep_job`; research scripts and pod jobs call it directly.
Every process of a multi-host run executes the whole job (the jitted programs are collective); only process 0
writes the report, ``results.json`` and the head.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxheads import checkpoint, data, distributed, export, features, report
from jaxheads.backbones import cut
from jaxheads.heads import io as heads_io
from jaxheads.sweep import representation, variants
from jaxheads.heads import ConvStage
from jaxheads.features.options import ExtractOptions
from jaxheads.features.taps import resolve_taps
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import SweepResult, SweepSpec, abstract_splits, compile_sweep, run_sweep, scores, stream

DEFAULT_DATASET = "elpv"
DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_SWEEP = SweepSpec(
    pooling=("avg", "max", "flatten"),
    conv=((), (ConvStage(features=128, kernel=1),)),
    widths=(128, 512),
    depth=(1, 0, 2),
    dropout=(0.0, 0.5),
    norm=("none", "batch"),
    learning_rate=(1e-3,),
    batch_size=(64,),
    epochs=20,
    seeds=1,
    patience=6,
    folds="auto",
    repeats="auto",
    design="one_factor",
)
"""The README's main job: the six head questions (GAP/max/Flatten, a 1x1 conv first, BN, 0/1/2 dense layers,
width, dropout) one factor at a time around avg · 128 · drop 0 (9 configs), each trained on 2 independent 3-fold
partitions of train+val (folds="auto", repeats="auto": up to 10,000 train+val examples; 6 models per config, each
with its own rows and seed) so every example validates twice; plus the ridge baseline.
experiments/stats/bench_design.py measured this design against a full grid and against more seeds. Accuracy ranks it:
ELPV's classes are imbalanced, but the published figures it is compared with are accuracies; --metric
balanced_accuracy ranks by mean recall."""


log = logging.getLogger("jaxheads")

MODEL_EXPORT = "model.jaxexport"
"""Under ``out_dir``: the recommended models as one image -> probabilities program (:mod:`jaxheads.export`)."""
SWEEP_STATE = "sweep_state"
"""Under ``out_dir``: the finished sweep groups while the sweep runs (a killed job resumes from them)."""


@dataclasses.dataclass
class JobOutput:
    """What :func:`sweep_job` produced: the sweep's result and the files written (empty off process 0)."""

    result: SweepResult
    splits: dict[str, FeatureSplit]
    dataset: data.Dataset
    files: dict[str, Path]


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """What the job runs on besides the sweep and the feature pass: where the data and weights come from, the
    input-size and view-count axes, and where the artifacts go.

    weights:    the backbone's weights ("default", a named source, a file, None for a random init).
    out_dir:    where results.json, the report and the head are written.
    data_dir:   a TFDS data_dir; task: "multiclass" or "multilabel" where the dataset offers both.
    seed:       seeds the carved dataset splits (and a ``weights=None`` init).
    input_size: the images' side before the backbone (default its own); several sizes (``(224, 300)``) run the
                sweep on each size's features and merge them (:mod:`jaxheads.sweep.variants`), so "Input size" is
                a question and the recommended head records the size it was trained at.
    views:      K > 1: heads train on a random one of K views per example per epoch: view 0 is the plain image,
                views 1..K-1 are augmented under ``ExtractOptions.augment`` (:mod:`jaxheads.data.augment`).
                Several K (``"1,4"``): one sweep per K on the same plain val/test rows, merged. Several sizes
                and several K are refused.
    tta:        each K's test figures average its own K views (K = 1: none).
    representation: the pooled vector heads read, as levels (``"last,block12,all"``,
                :mod:`jaxheads.sweep.representation`): ``last`` alone is today's job; any other level caches the
                taps and runs one sweep per level, merged on a ``representation`` factor (not with several sizes
                or K > 1 views).
    """

    weights: Any = "default"
    out_dir: str | os.PathLike[str] = "runs/latest"
    data_dir: str | os.PathLike[str] | None = None
    task: str | None = None
    seed: int = 0
    input_size: int | str | Sequence[int] | None = None
    views: int | str | Sequence[int] = 1
    tta: bool = False
    representation: str | Sequence[str] = "last"


JOB_EXTRACT = ExtractOptions(batch_size=64)
"""The job's feature pass: 64 images per backbone call (what ``--feature-batch-size`` defaults to)."""


def sweep_job(
    dataset: str | os.PathLike[str] | data.Dataset = DEFAULT_DATASET,
    backbone: str = DEFAULT_BACKBONE,
    *,
    sweep: SweepSpec = DEFAULT_SWEEP,
    options: JobOptions = JobOptions(),
    extract: ExtractOptions = JOB_EXTRACT,
    feature_progress: Callable[[features.PassProgress], None] | None = None,
    sweep_progress: Callable[[dict[str, Any]], None] | None = None,
    device_memory_budget: int | str | None = None,
) -> JobOutput:
    """Run the main job end to end and write its artifacts into ``options.out_dir``.

    ``extract``: the feature pass (cache directory, batch size, strictness, the views' policy); the job itself
    sets what the sweep decides: maps (when some head pools them), the view count and which splits get views, and
    lazy reading. The backbone is built only when some split is not cached yet. ``device_memory_budget`` (bytes
    per device or "2GiB"; default: half the device's memory): a sweep group whose inputs exceed it streams its
    features from the memory-mapped cache (``run_sweep``); when some group may, the features are read lazily.
    """
    view_counts = variants.parse_views(options.views)
    sizes = variants.parse_sizes(options.input_size) or (None,)
    levels = representation.parse_levels(options.representation)
    variants.check_one_axis(",".join(map(str, sizes)) if len(sizes) > 1 else None, ",".join(map(str, view_counts)),
                            ",".join(levels))
    # Every size is checked against the backbone before any data is read.
    sources = {size: features.backbone_source(backbone, options.weights, seed=options.seed, input_size=size)
               for size in sizes}
    first = next(iter(sources.values()))
    resolve_taps(extract.taps, first.taps, first.name)  # an unknown tap: one line, before any data is read
    representation.check_levels(levels, first.taps, first.name)
    if representation.STAGES in levels:
        levels = representation.expand_stages(levels, cut.stage_taps(first.name, first.preprocessing.input_size))
    ds = dataset if isinstance(dataset, data.Dataset) else data.load_dataset(
        dataset, data_dir=options.data_dir, task=options.task, seed=options.seed)  # fmt: skip
    sweep = sweep.for_splits(ds.split_sizes(), f"dataset {ds.name}")
    lazy = any(_may_stream(backbone, source, ds, device_memory_budget) for source in sources.values())
    sweeps = _level_sweeps(sweep, levels, ds)
    extract = extract.replace(views=max(view_counts), view_splits=_view_splits(sweep, ds, options.tta), lazy=lazy,
                              **({"taps": "all"} if representation.needs_taps(levels) else {}))
    by_size = {size: features_for_sweep(source, ds, sweeps.get(representation.LAST, sweeps[levels[0]]), extract,
                                        feature_progress) for size, source in sources.items()}
    run_args = dict(num_classes=ds.num_classes, task=ds.task, progress=sweep_progress, label_names=list(ds.classes),
                    checkpoint_dir=Path(options.out_dir) / SWEEP_STATE, device_memory_budget=device_memory_budget)
    if representation.needs_taps(levels):  # one size, K = 1 (check_one_axis)
        key, trained_views = next(iter(by_size)), view_counts[0]
        result = _run_representations(sweeps, by_size[key], first.taps, run_args)
    else:
        result, key, trained_views = _run_levels(sweep, by_size, view_counts, run_args)
    source, splits = sources[key], variants.splits_at_views(by_size[key], trained_views)
    add_confusion_matrices(result)
    files: dict[str, Path] = {}
    if distributed.is_main_process():
        weights = options.weights
        tap_input = (_tap_input(result, by_size[key], first.taps, bool(sweep.folds), ds.num_classes)
                     if representation.needs_taps(levels) else None)
        files = write_outputs(result, options.out_dir, tap_input=tap_input, backbone=backbone,
                              weights="none" if weights is None else str(weights), weights_id=source.weights_id,
                              dataset=ds.name, input_size=source.preprocessing.input_size,
                              **({"input_sizes": list(sizes)} if len(sizes) > 1 else {}),
                              **_view_provenance(view_counts, trained_views, list(extract.augment), options.tta),
                              **_representation_provenance(result, levels),
                              **_cut_costs(source, levels))
    return JobOutput(result, splits, ds, files)


def _run_levels(sweep: SweepSpec, by_size: dict[Any, dict[str, FeatureSplit]], view_counts: Sequence[int],
                run_args: dict[str, Any]) -> tuple[SweepResult, Any, int]:
    """One sweep, or one per input size or per K merged; with the recommended head's size (key) and K."""
    key, trained_views = next(iter(by_size)), view_counts[0]
    if len(view_counts) > 1:  # the largest K's cache holds every smaller K's views: no backbone work repeats
        by_views = {k: variants.splits_at_views(by_size[key], k) for k in view_counts}
        result = variants.run_variants(sweep, by_views, "views", **run_args)
        trained_views = result.level() if result.recommended is not None else trained_views
    elif len(by_size) == 1:
        result = run_sweep(sweep, by_size[key], **run_args)
    else:
        result = variants.run_variants(sweep, by_size, "input_size", **run_args)
        key = result.input_size() if result.recommended is not None else key
    return result, key, trained_views


def _level_sweeps(sweep: SweepSpec, levels: Sequence[str], ds: data.Dataset) -> dict[str, SweepSpec]:
    """The sweep each representation level runs (:func:`jaxheads.sweep.representation.level_sweeps`)."""
    return representation.level_sweeps(sweep, levels, ds.num_classes, ds.task)


def _run_representations(sweeps: dict[str, SweepSpec], splits: dict[str, FeatureSplit], taps: Sequence[str],
                         run_args: dict[str, Any]) -> SweepResult:
    """One sweep per representation level on that level's pooled vectors (standardised on the training rows),
    merged on the ``representation`` factor."""
    folds = bool(next(iter(sweeps.values())).folds)
    by_level = {level: representation.level_splits(splits, level, taps, folds=folds,
                                                    num_classes=run_args["num_classes"]) for level in sweeps}
    result = variants.run_variants(sweeps, by_level, "representation", **run_args)
    if result.recommended is not None and result.level() != representation.LAST:
        # Said aloud because the saved head looks like any other: only its width and meta tell it apart.
        log.warning("The recommended head reads representation %s (standardised taps): head.jaxexport takes that "
                    "vector; the saved head records how to rebuild it, so `jaxheads predict` and model.jaxexport "
                    "run on images, but `jaxheads finetune` refuses it.", result.level())
    return result


def _representation_provenance(result: SweepResult, levels: Sequence[str]) -> dict[str, Any]:
    """What results.json and the saved head record of the representation: the recommended head's level and every
    level swept (nothing for today's ``last`` alone)."""
    if not representation.needs_taps(levels):
        return {}
    chosen = result.level() if isinstance(result, variants.VariantSweepResult) and result.recommended else None
    return {"representation": chosen, "representations": list(levels)}


def _cut_costs(source: features.BackboneSource, levels: Sequence[str]) -> dict[str, Any]:
    """What each depth level costs (:func:`jaxheads.backbones.cut.cut_cost`): the backbone cut at every level that
    is one tap, and whole (``last``), measured here; nothing when no level cuts it."""
    cuts = [level for level in levels if level in source.taps]
    if not cuts:
        return {}
    backbone, size = source.load(), source.preprocessing.input_size
    costs = {level: cut.cut_cost(backbone, level, size).to_dict() for level in cuts}
    return {"cut_costs": {representation.LAST: cut.cut_cost(backbone, None, size).to_dict(), **costs}}


def _view_provenance(view_counts: Sequence[int], trained_views: int, policy: list[str], tta: bool) -> dict[str, Any]:
    """What the saved head and results.json record of the views: the recommended head's K, every K swept, the
    policy, and how many views its test figures average (TTA applies where a K > 1 gave the test split views)."""
    if max(view_counts) == 1:
        return {}
    swept = {"views_swept": list(view_counts)} if len(view_counts) > 1 else {}
    return {"views": trained_views, **swept, "augment": policy, "test_views": trained_views if tta else 1}


def _view_splits(sweep: SweepSpec, ds: data.Dataset, tta: bool) -> tuple[str, ...]:
    """The splits that get augmented views: those heads train on (with folds, train and val), and test for TTA."""
    return ("train", "val")[:2 if sweep.folds else 1] + (("test",) if tta and "test" in ds.splits else ())


def _may_stream(backbone: str, source: features.BackboneSource, ds: data.Dataset, budget: int | str | None) -> bool:
    """Whether a group reading the backbone's feature maps (at the source's input size) could exceed the budget."""
    shape = features.feature_map_shape(backbone, source.preprocessing.input_size)
    return stream.may_stream(sum(len(ds.split(name)) for name in ds.splits), shape, budget)


def features_for_sweep(
    source: features.BackboneSource,
    ds: data.Dataset,
    sweep: SweepSpec,
    options: ExtractOptions = JOB_EXTRACT,
    progress: Callable[[features.PassProgress], None] | None = None,
) -> dict[str, FeatureSplit]:
    """``features.extract_all`` of every split ``sweep`` needs (maps only if some head pools them) under
    ``options``. While the backbone runs, the sweep's programs compile in a thread from the features' shapes
    (``sweep.compile_sweep``), so ``run_sweep`` on the result starts training at once. Single-process only; on a
    cache hit nothing compiles early (there is nothing to overlap)."""
    need_maps = any(m.head.pooling != "none" for m in sweep.expand(ds.num_classes, ds.task))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxheads-sweep-compile")
    compiled: list[concurrent.futures.Future] = []

    def compile_early(shapes: dict[str, Any]) -> None:
        if compiled or jax.process_count() > 1 or options.views > 1:  # views: other shapes
            return
        labels = ds.split("train").labels
        abstract = abstract_splits({name: len(ds.split(name)) for name in ds.splits}, pooled=shapes["pooled"],
                                   maps=shapes["maps"], label_shape=labels.shape[1:], label_dtype=labels.dtype)
        compiled.append(pool.submit(compile_sweep, sweep, abstract, num_classes=ds.num_classes, task=ds.task))

    try:
        splits = features.extract_all(source, ds, options.replace(need_maps=need_maps), progress=progress,
                                      on_shapes=compile_early)
        for future in compiled:
            future.result()
    finally:
        pool.shutdown(wait=True)
    return splits


def write_outputs(result: SweepResult, out_dir: str | os.PathLike[str], *, tap_input: heads_io.TapInput | None = None,
                  **provenance: Any) -> dict[str, Path]:
    """results.json, the report (Markdown, HTML, plots) and the recommended config's models as scored: ``head``
    (a bag, orbax), ``head.jaxexport`` (features -> logits) and ``model.jaxexport`` (images -> probabilities,
    :mod:`jaxheads.export`). ``tap_input``: how the recommended head's tap vector is made (a tap level's head)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result_json = json.loads(result.to_json())  # NaN -> null, as the schema says
    result_json["provenance"] = provenance
    results_path = out / "results.json"
    checkpoint.write_json_atomic(results_path, result_json)
    files = {"results": results_path, **report.write_report(result_json, out)}
    if result.predictions:  # every member's per-example probabilities, for re-analysis (SweepResult.predictions)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **result.predictions)
        files["predictions"] = out / "predictions.npz"
        checkpoint.write_bytes_atomic(files["predictions"], buffer.getvalue())
    if result.recommended_member() is not None:
        files.update(_write_models(result, out, provenance, tap_input))
    return files


def bag_members(result: SweepResult) -> list[int]:
    """The members whose mean probability the recommended config's test figure scores (its fold models, for every
    seed and repeat; :func:`jaxheads.sweep.scores.test_scores`): what the saved head bags."""
    return [int(m["member"]) for m in result.members if m["config"] == result.recommended]


def _write_models(result: SweepResult, out: Path, provenance: dict[str, Any],
                  tap_input: heads_io.TapInput | None) -> dict[str, Path]:
    """The recommended config's members saved as one bag (``head``) and exported twice, both read back from it."""
    members = bag_members(result)
    spec = result.head(members[0])[0]
    if any(result.head(m)[0] != spec for m in members):
        raise ValueError(f"config {result.recommended}: its members' head specs differ; they cannot be bagged")
    passes = len({int(result.members[m]["spec"]["seed"]) for m in members})
    scored = ("the report's test figure" if passes == 1 else
              f"the mean over its {passes} seeds of each seed's fold models; the report's figure is the mean of "
              "their per-seed figures")
    views = int(provenance.get("test_views", 1))
    if views > 1:  # the figure is of a TTA predictor; the saved models read each image once
        scored += f"; that figure averages {views} views of each test image (TTA), the saved model the plain one"
    extra = {"config": result.recommended, "members": members, "bag_best": members.index(result.recommended_member()),
             "bag_predicts": "the mean of the members' probabilities", "bag_scored_as": scored, **provenance}
    shape = result.feature_shapes[spec.feature_kind]
    head = heads_io.save_bag(out / "head", spec, [result.variables[m] for m in members], shape,
                             label_names=result.label_names, extra=extra, tap_input=tap_input)
    saved_spec, variables, _ = heads_io.load_head(head)  # exported as saved
    files = {"head": head, "head_export": heads_io.export_head(out / "head.jaxexport", saved_spec, variables, shape,
                                                               bagged=len(members) > 1)}
    files["model_export"] = export.export_saved(head, out / MODEL_EXPORT)
    return files


def _tap_input(result: SweepResult, splits: dict[str, FeatureSplit], taps: Sequence[str], folds: bool,
               num_classes: int) -> heads_io.TapInput | None:
    """How the recommended head's input is made when it reads a tap level (refitted exactly as the sweep fitted
    it, :func:`jaxheads.sweep.representation.level_input`); None for the last layer's features."""
    level = result.level() if isinstance(result, variants.VariantSweepResult) and result.recommended else None
    if level is None or level == representation.LAST:
        return None
    made = representation.level_input(splits, level, taps, folds=folds, num_classes=num_classes)
    return heads_io.TapInput(level, made.taps, made.mean, made.scale, made.keep)


def add_confusion_matrices(result: SweepResult) -> None:
    """The recommended config's confusion matrices (:func:`jaxheads.sweep.scores.confusion_matrices`: the very
    predictions of its val and test figures) in the selection record of a multiclass sweep."""
    if result.task == "multiclass" and result.recommended is not None and result.predictions:
        result.selection["confusion_matrix"] = scores.confusion_matrices(result, result.recommended)
