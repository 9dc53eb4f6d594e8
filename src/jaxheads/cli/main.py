"""The ``jaxheads`` command: each sub-command's function, reading the parsed flags into the library's calls."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from jaxheads.cli.backbones import backbones_command
from jaxheads.cli.flags import FINETUNE_FLAGS, sweep_spec_from_args
from jaxheads.cli.parser import build_parser
from jaxheads.cli.progress import wide_console

if TYPE_CHECKING:
    from jaxheads.finetuning.config import FinetuneConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow (tf.data / TFDS) start-up chatter
log = logging.getLogger("jaxheads")


def run_key(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """What decides a sweep's plan: a dry run and a later run with the same flags share it."""
    from jaxheads import job
    from jaxheads.sweep import variants

    views = variants.parse_views(args.views)  # one K keys as the int it always was
    return {"dataset": str(args.dataset or job.DEFAULT_DATASET), "backbone": args.backbone or job.DEFAULT_BACKBONE,
            "weights": str(args.weights), "task": args.task, "seed": args.seed, "sweep": spec.to_dict(),
            "input_size": str(args.input_size), "views": views[0] if len(views) == 1 else list(views),
            **({"representation": args.representation} if args.representation != "last" else {})}


def _dry_run(args: argparse.Namespace, spec: Any) -> int:
    """Plan the sweep on the backbone's architecture and the dataset's sizes (at each ``--input-size``), estimate
    its time, run nothing."""
    from jaxheads import data, features, job
    from jaxheads.cli import dry_run
    from jaxheads.sweep import variants
    from jaxheads.backbones import describe

    backbone = args.backbone or job.DEFAULT_BACKBONE
    arch = describe.architecture(backbone)
    pixels = variants.parse_sizes(args.input_size) or (arch.input_size,)
    for px in pixels:
        features.backbone_source(backbone, args.weights, input_size=px)  # a size below the minimum fails here
    ds = data.load_dataset(args.dataset or job.DEFAULT_DATASET, data_dir=args.data_dir, task=args.task,
                           seed=args.seed)
    sizes = ds.split_sizes()
    resolved = spec.for_splits(sizes, f"dataset {ds.name}")
    counts = ", ".join(f"{k} {n}" for k, n in sizes.items())
    log.info("calibrating on this machine (a matmul and a tiny sweep)...")
    calib, totals, plans = dry_run.calibrate(), {}, {}
    for px in pixels:  # each input size is its own sweep on its own feature maps
        shapes = {"pooled": (arch.feature_shape[-1],), "maps": features.feature_map_shape(backbone, px)}
        for k in variants.parse_views(args.views):  # each K is its own sweep too; the largest K's plan is shown
            plan = dry_run.plan_sweep(resolved, shapes, sizes,
                                      ds.num_classes, ds.task, views=k)
            times = dry_run.estimate(plan, calib)
            totals = {key: totals.get(key, 0.0) + v for key, v in times.items()}
        plans[px] = dry_run.plan_json(plan, calib, times)
        dry_run.print_plan(plan, calib, times, console=wide_console(),
                           header=f"{ds.name} ({counts}) on {backbone} at {px} px: ")
    recorded = {**plans[pixels[-1]], "estimate": totals, **({"by_input_size": plans} if len(pixels) > 1 else {})}
    path = dry_run.record(run_key(args, spec), recorded)
    if args.representation != "last":
        log.info("--representation %s: one sweep per level (this plan is the last layer's; a tap level runs only "
                 "the heads that read pooled vectors, on its own width).", args.representation)
    log.info("Nothing ran. The feature pass (%d images at %s px, skipped for images already cached) comes first. "
             "A run with the same flags records this estimate beside its time (%s).", sum(sizes.values()) * len(
                 pixels), ", ".join(map(str, pixels)), path)
    return 0


def _record_estimate(args: argparse.Namespace, spec: Any, output: Any) -> dict[str, Any]:
    """results.json as written, plus the dry run's estimate for the same flags when one was recorded (then the
    report is rendered again to show it)."""
    from jaxheads import checkpoint, report
    from jaxheads.cli import dry_run

    path = output.files.get("results")
    result_json = json.loads(path.read_text()) if path else json.loads(output.result.to_json())
    recorded = dry_run.recorded(run_key(args, spec))
    if path is not None and recorded is not None and recorded.get("estimate"):
        result_json["estimate"] = {**recorded["estimate"], "calibration": recorded.get("calibration")}
        checkpoint.write_json_atomic(path, result_json)
        report.write_documents(result_json, path.parent)
    return result_json


def _cmd_sweep(args: argparse.Namespace) -> int:
    from jaxheads import distributed
    from jaxheads.data import augment
    from jaxheads.sweep import variants

    variants.parse_views(args.views), augment.parse_policy(args.augment)  # bad flags fail before any work
    variants.check_one_axis(args.input_size, args.views, args.representation)  # a dry run too
    _check_taps(args.taps, args.backbone, args.representation)
    if not distributed.initialize(args.coordinator, args.num_processes, args.process_id):
        distributed.split_cpu_host()  # CPU-only hosts: members run side by side, one JAX device per core
    spec = sweep_spec_from_args(args)
    if args.dry_run:
        return _dry_run(args, spec)
    from jaxheads import features, job, report
    from jaxheads.cli import progress

    weights = None if str(args.weights).lower() == "none" else args.weights
    main = distributed.is_main_process()
    with _compile_cache(args), progress.Bars(enabled=main and not args.quiet) as bars:
        options = job.JobOptions(weights=weights, out_dir=args.out, data_dir=args.data_dir, task=args.task,
                                 seed=args.seed, input_size=args.input_size, views=args.views, tta=args.tta,
                                 representation=args.representation)
        extract = features.ExtractOptions(cache_dir=args.cache_dir, batch_size=args.feature_batch_size,
                                          strict=args.strict, augment=args.augment, taps=args.taps)
        output = job.sweep_job(args.dataset or job.DEFAULT_DATASET, args.backbone or job.DEFAULT_BACKBONE,
                               sweep=spec, options=options, extract=extract, feature_progress=bars.features,
                               sweep_progress=bars.sweep, device_memory_budget=args.device_memory_budget)
    if main:
        report.print_report(_record_estimate(args, spec, output), console=wide_console())
        for name, path in sorted(output.files.items()):
            print(f"{name:>12}: {path}")
    return 0


def _check_taps(taps: str, backbone: str | None, levels: str = "last") -> None:
    """``--taps`` and ``--representation`` against the backbone's tap names (a dry run too): one line listing them
    when a name is unknown."""
    from jaxheads import backbones, job
    from jaxheads.features.taps import parse_taps, resolve_taps
    from jaxheads.sweep import representation

    config = backbones.get_config(backbone or job.DEFAULT_BACKBONE)
    resolve_taps(parse_taps(taps), config.taps, config.name)
    representation.check_levels(representation.parse_levels(levels), config.taps, config.name)


@contextlib.contextmanager
def _compile_cache(args: argparse.Namespace) -> Iterator[None]:
    """The persistent compilation cache around a command (unless --no-compile-cache); says what it did."""
    from jaxheads.cli import compile_cache

    with compile_cache.persistent(not getattr(args, "no_compile_cache", False)) as stats:
        yield
    if stats.path is not None:
        log.info(stats.line())


def _cmd_predict(args: argparse.Namespace) -> int:
    from jaxheads import predict

    with _compile_cache(args):
        predictions = predict.predict_files(args.head, args.images, top=args.top)
    for path, labels in zip(args.images, predictions):
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in labels))
    return 0


def finetune_config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The FinetuneConfig of the finetune flags given; the others keep their defaults. An invalid value is a
    one-line error naming its flag."""
    from jaxheads.finetuning.config import ConfigError, FinetuneConfig

    changes = {}
    for flag in FINETUNE_FLAGS:
        value = getattr(args, f"config_{flag.field}")
        if value is not None:
            changes[flag.field] = flag.switch_value if flag.parse is bool else value
    try:
        return FinetuneConfig(**changes)
    except ConfigError as e:
        name = next((f.name for f in FINETUNE_FLAGS if f.field == e.field), f"FinetuneConfig.{e.field}")
        raise ValueError(f"{name} {e.value}: expected {e.expected}") from None


def _cmd_finetune(args: argparse.Namespace) -> int:
    from jaxheads.finetuning import finetune

    def show(event: dict[str, Any]) -> None:
        loss = "-" if event["train_loss"] is None else f"{event['train_loss']:.4f}"
        print(f"epoch {event['epoch']}/{event['epochs']}  train loss {loss}  val {event['metric']} "
              f"{event['val'][event['metric']]:.4f}  val loss {event['val']['loss']:.4f}", flush=True)

    with _compile_cache(args):
        result = finetune(args.head, args.dataset, finetune_config_from_args(args), out_dir=args.out,
                          split_seed=args.split_seed, data_dir=args.data_dir, strict=args.strict, progress=show,
                          resume=args.resume)
    before, best = result.before[result.metric], result.best[result.metric]
    verdict = f"improved at epoch {result.best_epoch}" if result.improved else "no epoch beat the starting model"
    print(f"val {result.metric}: {before:.4f} -> {best:.4f} ({verdict})")
    for line in result.gain_lines():  # the gain over the frozen head, with its interval (test first)
        print(line)
    print(f"unfrozen: {', '.join(result.trainable_blocks) or 'none (head only)'}")
    print(f"model: {result.model_dir}")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from jaxheads.classify import classify, demo_photo_path

    images = args.images or [demo_photo_path()]
    for path in images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} does not exist")
    for path, preds in zip(images, classify([str(p) for p in images], backbone=args.backbone, top_k=args.top)):
        print(f"{path}:")
        for class_id, name, prob in preds:
            print(f"  {prob:6.3f}  {class_id:4d}  {name}")
    return 0


COMMANDS = {"sweep": _cmd_sweep, "predict": _cmd_predict, "finetune": _cmd_finetune, "classify": _cmd_classify,
            "backbones": backbones_command}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxheads`` console script."""
    args = build_parser().parse_args(argv)
    from jaxheads.cli import progress

    try:
        with progress.console_log(progress.level_of(args.quiet, args.verbose)):
            return COMMANDS[args.command](args)
    except (OSError, ValueError, KeyError) as e:
        if args.debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"jaxheads: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
