"""The ``jaxheads`` command: ``sweep`` (the main job), ``predict``, ``finetune``, ``classify``,
``backbones list|compare``.

Every subcommand is a thin shell over the Python API. Errors print one line naming what was wrong (the file, the
field, the name) and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

if TYPE_CHECKING:
    from jaxheads.finetune_config import FinetuneConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow (tf.data / TFDS) start-up chatter


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _strs(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _conv_stage(text: str) -> Any:
    """``KxK:F[/sS][+poolP]`` -> ConvStage(features=F, kernel=K, stride=S, pool=P)."""
    import re

    from jaxheads.heads import ConvStage

    match = re.fullmatch(r"(\d+)x(\d+):(\d+)(?:/s(\d+))?(?:\+pool(\d+))?", text.strip())
    if match is None or match[1] != match[2]:
        raise ValueError(f"conv stage {text!r}: expected KxK:FEATURES[/sSTRIDE][+poolP], e.g. 1x1:448+pool2")
    return ConvStage(features=int(match[3]), kernel=int(match[1]), stride=int(match[4] or 1), pool=int(match[5] or 1))


def _conv_stacks(text: str) -> tuple[tuple[Any, ...], ...]:
    """Comma-separated conv stacks, each "none" or stages joined by ">": ``none,1x1:448+pool2>3x3:256/s2``."""
    return tuple(() if stack.strip() == "none" else tuple(_conv_stage(s) for s in stack.split(">"))
                 for stack in text.split(","))


# Sweep axes settable from the command line: flag -> (SweepSpec field, parser).
SWEEP_FLAGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--pooling": ("pooling", _strs),
    "--widths": ("widths", _ints),
    "--depths": ("depth", _ints),
    "--dropouts": ("dropout", _floats),
    "--norm": ("norm", _strs),
    "--activation": ("activation", _strs),
    "--lr": ("learning_rate", _floats),
    "--weight-decay": ("weight_decay", _floats),
    "--optimizer": ("optimizer", _strs),
    "--batch-size": ("batch_size", _ints),
    "--epochs": ("epochs", int),
    "--seeds": ("seeds", int),
    "--patience": ("patience", int),
    "--sample": ("sample", int),
    "--depth-grouping": ("depth_grouping", str),
    "--conv": ("conv", _conv_stacks),
    "--folds": ("folds", int),
    "--metric": ("metric", str),
    "--design": ("design", str),
    "--map-batch": ("map_batch", lambda text: text if text in ("auto", "probe", "vmap") else int(text)),  # or an int k
}


class ConfigFlag(NamedTuple):
    """A command-line flag that sets one FinetuneConfig field; ``parse`` is ``bool`` for a switch (no value)."""

    name: str
    field: str
    parse: Callable[[str], Any]
    help: str


# Fine-tune settings settable from the command line; an absent flag leaves FinetuneConfig's default.
FINETUNE_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("--unfreeze", "unfreeze", int, "how many top backbone blocks train, 0: head only (default 1)"),
    ConfigFlag("--train-bn", "freeze_bn", bool, "let batch-norm statistics train (default: frozen)"),
    ConfigFlag("--lr", "learning_rate", float, "head learning rate (default 0.001)"),
    ConfigFlag("--backbone-lr", "backbone_learning_rate", float, "unfrozen blocks' learning rate (default 0.0001)"),
    ConfigFlag("--weight-decay", "weight_decay", float, "AdamW weight decay of head and blocks (default 0.0)"),
    ConfigFlag("--epochs", "epochs", int, "most epochs to train (default 10)"),
    ConfigFlag("--batch-size", "batch_size", int, "images per step (default 32)"),
    ConfigFlag("--patience", "patience", int, "epochs without val improvement before stopping (default 3)"),
    ConfigFlag("--image-size", "image_size", int, "input size (default: the backbone's)"),
    ConfigFlag("--seed", "seed", int, "seed of shuffles, crops, flips and dropout (default 0)"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxheads", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    sweep = sub.add_parser("sweep", help="cache backbone features once, train a grid of heads at once, report")
    sweep.add_argument("--dataset", default=None, help="elpv (default), elpv-multilabel, fashion_mnist, an image "
                       "folder, a CSV of path,label rows, or a TFDS name (tfds:NAME)")
    sweep.add_argument("--backbone", default=None, help="registered backbone name (see `jaxheads backbones list`)")
    sweep.add_argument("--weights", default="default", help="'default', 'imagenet', a weights file, or 'none'")
    sweep.add_argument("--config", type=Path, help="a YAML/JSON SweepSpec; flags below override its fields")
    for flag, (field, _) in SWEEP_FLAGS.items():
        sweep.add_argument(flag, dest=f"axis_{field}", default=None, metavar=field.upper(),
                           help=f"SweepSpec.{field} (comma-separated for axes)")
    sweep.add_argument("--out", type=Path, default=Path("runs/latest"), help="output directory")
    sweep.add_argument("--cache-dir", type=Path, help="feature cache (default $JAXHEADS_CACHE/features)")
    sweep.add_argument("--data-dir", type=Path, help="TFDS data_dir")
    sweep.add_argument("--task", choices=("multiclass", "multilabel"), help="for CSV datasets")
    sweep.add_argument("--feature-batch-size", type=int, default=64)
    sweep.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    sweep.add_argument("--seed", type=int, default=0, help="dataset split seed")
    _distributed_flags(sweep)

    predict = sub.add_parser("predict", help="apply a saved head (and its backbone) to images")
    predict.add_argument("head", type=Path, help="a head directory written by `jaxheads sweep` (OUT/head)")
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--top", type=int, default=3)

    ft = sub.add_parser("finetune", help="fine-tune a saved head with the top blocks of its backbone, on images")
    ft.add_argument("head", type=Path, help="a head directory written by `jaxheads sweep` (OUT/head)")
    ft.add_argument("--dataset", default="elpv", help="the dataset the head was swept on (same forms as sweep)")
    ft.add_argument("--out", type=Path, default=Path("runs/finetune"), help="output directory (model/, "
                    "finetune.json); re-running with the same arguments resumes a killed run")
    for flag in FINETUNE_FLAGS:
        if flag.parse is bool:  # a switch: present means the opposite of the field's default
            ft.add_argument(flag.name, dest=f"config_{flag.field}", action="store_true", default=None,
                            help=flag.help)
        else:
            ft.add_argument(flag.name, dest=f"config_{flag.field}", type=flag.parse, default=None,
                            metavar=flag.field.upper(), help=flag.help)
    ft.add_argument("--split-seed", type=int, default=0, help="dataset split seed (the sweep's --seed)")
    ft.add_argument("--data-dir", type=Path, help="TFDS data_dir")
    ft.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")

    classify = sub.add_parser("classify", help="ImageNet top-k of a pretrained backbone (a check of its weights)")
    classify.add_argument("images", nargs="*", type=Path, help="default: the bundled photo")
    classify.add_argument("--backbone", default="efficientnet_lite0")
    classify.add_argument("--top", type=int, default=5)

    bb = sub.add_parser("backbones", help="list backbones, or compare them with the closed-form ridge probe")
    bb_sub = bb.add_subparsers(dest="backbones_command", required=True)
    bb_sub.add_parser("list")
    compare = bb_sub.add_parser("compare", help="ridge probe accuracy of each backbone's cached features")
    compare.add_argument("names", nargs="+")
    compare.add_argument("--dataset", default="elpv")
    compare.add_argument("--cache-dir", type=Path)
    compare.add_argument("--data-dir", type=Path)
    compare.add_argument("--feature-batch-size", type=int, default=64)
    return parser


def _distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-host (else the cluster's environment, if any)")
    group.add_argument("--coordinator", help="host:port of process 0")
    group.add_argument("--num-processes", type=int)
    group.add_argument("--process-id", type=int)


def sweep_spec_from_args(args: argparse.Namespace) -> Any:
    """The SweepSpec of ``--config`` (or the default sweep) with the axis flags applied on top."""
    from jaxheads.job import DEFAULT_SWEEP
    from jaxheads.sweep import SweepSpec

    spec = DEFAULT_SWEEP
    if args.config is not None:
        if not args.config.is_file():
            raise FileNotFoundError(f"--config {args.config}: no such file")
        import yaml

        try:
            loaded = yaml.safe_load(args.config.read_text())  # YAML is a superset of JSON
        except yaml.YAMLError as e:
            raise ValueError(f"--config {args.config}: not valid YAML/JSON ({e})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {args.config}: expected a mapping of SweepSpec fields")
        spec = SweepSpec.from_dict(loaded)
    changes = {}
    for flag, (field, parse) in SWEEP_FLAGS.items():
        text = getattr(args, f"axis_{field}")
        if text is not None:
            try:
                changes[field] = parse(text)
            except ValueError:
                raise ValueError(f"{flag} {text!r}: not a valid value for SweepSpec.{field}") from None
    return SweepSpec.from_dict({**spec.to_dict(), **changes}) if changes else spec


def _cmd_sweep(args: argparse.Namespace) -> int:
    from jaxheads import distributed

    if not distributed.initialize(args.coordinator, args.num_processes, args.process_id):
        distributed.split_cpu_host()  # CPU-only hosts: members run side by side, one JAX device per core
    from jaxheads import job, progress, report

    spec = sweep_spec_from_args(args)
    weights = None if str(args.weights).lower() == "none" else args.weights
    main = distributed.is_main_process()
    with progress.Bars(enabled=main) as bars:
        output = job.sweep_job(
            args.dataset or job.DEFAULT_DATASET, args.backbone or job.DEFAULT_BACKBONE, weights=weights,
            sweep=spec, out_dir=args.out, cache_dir=args.cache_dir, data_dir=args.data_dir, task=args.task,
            seed=args.seed, batch_size=args.feature_batch_size, strict=args.strict,
            feature_progress=bars.features, sweep_progress=bars.sweep,
        )  # fmt: skip
    if main:
        report.print_report(json.loads(output.result.to_json()))
        for name, path in sorted(output.files.items()):
            print(f"{name:>12}: {path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from jaxheads import predict

    for path, labels in zip(args.images, predict.predict_files(args.head, args.images, top=args.top)):
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in labels))
    return 0


def finetune_config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The FinetuneConfig of the finetune flags given; the others keep their defaults."""
    from jaxheads.finetune_config import FinetuneConfig

    defaults = {field.name: field.default for field in dataclasses.fields(FinetuneConfig)}
    changes = {}
    for flag in FINETUNE_FLAGS:
        value = getattr(args, f"config_{flag.field}")
        if value is not None:
            changes[flag.field] = (not defaults[flag.field]) if flag.parse is bool else value
    return FinetuneConfig(**changes)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from jaxheads.finetuning import finetune

    def show(event: dict[str, Any]) -> None:
        loss = "-" if event["train_loss"] is None else f"{event['train_loss']:.4f}"
        print(f"epoch {event['epoch']}/{event['epochs']}  train loss {loss}  val {event['metric']} "
              f"{event['val'][event['metric']]:.4f}  val loss {event['val']['loss']:.4f}", flush=True)

    result = finetune(args.head, args.dataset, finetune_config_from_args(args), out_dir=args.out,
                      split_seed=args.split_seed, data_dir=args.data_dir, strict=args.strict, progress=show)
    before, best = result.before[result.metric], result.best[result.metric]
    verdict = f"improved at epoch {result.best_epoch}" if result.improved else "no epoch beat the starting model"
    print(f"val {result.metric}: {before:.4f} -> {best:.4f} ({verdict})")
    print(f"unfrozen: {', '.join(result.trainable_blocks) or 'none (head only)'}")
    print(f"model: {result.model_dir}")
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


def _cmd_backbones(args: argparse.Namespace) -> int:
    from jaxheads import backbones

    if args.backbones_command == "list":
        for name in backbones.list_backbones():
            print(name)
        return 0
    from jaxheads import data, features, probe

    ds = data.load_dataset(args.dataset, data_dir=args.data_dir)
    print(f"{'backbone':<24} {'features':>8} {'val':>8} {'test':>8} {'l2':>10}")
    for name in args.names:
        splits = features.extract_all(features.backbone_source(name), ds, cache_dir=args.cache_dir, need_maps=False,
                                      batch_size=args.feature_batch_size)
        out = probe.ridge_probe(splits["train"], splits["val"], splits.get("test"), num_classes=ds.num_classes)
        best = out["best"]
        metric = out["select_metric"]
        test = best.get("test", {}).get(metric, float("nan"))
        print(f"{name:<24} {out['num_features']:>8} {best['val'][metric]:>8.4f} {test:>8.4f} {best['l2']:>10.3g}")
    return 0


COMMANDS = {"sweep": _cmd_sweep, "predict": _cmd_predict, "finetune": _cmd_finetune, "classify": _cmd_classify,
            "backbones": _cmd_backbones}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxheads`` console script."""
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (OSError, ValueError, KeyError) as e:
        if args.debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"jaxheads: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
