"""The command line's grammar: every command and flag of ``jaxheads``, how a flag's text becomes a value, and the
help that teaches it (a plain meaning, the real default, an example where the syntax is not obvious).

``SWEEP_FLAGS`` (flag -> (SweepSpec field, parser)) and ``FINETUNE_FLAGS`` are the settable fields. A sweep flag's
default is read from ``jaxheads.job.DEFAULT_SWEEP`` and written back in the flag's own syntax (:func:`flag_text`),
so the help cannot drift from what a run without the flag trains. An *axis* (a tuple field of ``SweepSpec``) takes
comma-separated levels; a *scalar* takes one value. ``jaxheads.cli`` re-exports these names.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import textwrap
from pathlib import Path
from typing import Any, Callable, NamedTuple


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _strs(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _optional_int(text: str) -> int | None:
    """An integer, or ``none`` / ``off`` for None (no folds, never stop early, every config)."""
    return None if text.strip().lower() in ("none", "off") else int(text)


def _folds(text: str) -> int | str | None:
    """``auto`` (cross-validate small datasets), ``none`` / ``off``, or a fold count."""
    return "auto" if text.strip().lower() == "auto" else _optional_int(text)


def _byte_size(text: str) -> int:
    """``--device-memory-budget``: 2GiB, 512MB, 1e9 (bytes); argparse prints the one-line error."""
    from jaxheads.sweep.stream import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).split(": ", 1)[1]) from None


def _conv_stage(text: str) -> Any:
    """``KxK:F[/sS][+poolP]`` -> ConvStage(features=F, kernel=K, stride=S, pool=P)."""
    from jaxheads.heads import ConvStage

    match = re.fullmatch(r"(\d+)x(\d+):(\d+)(?:/s(\d+))?(?:\+pool(\d+))?", text.strip())
    if match is None or match[1] != match[2]:
        raise ValueError(f"conv stage {text!r}: expected KxK:FEATURES[/sSTRIDE][+poolP], e.g. 1x1:448+pool2")
    return ConvStage(features=int(match[3]), kernel=int(match[1]), stride=int(match[4] or 1), pool=int(match[5] or 1))


def conv_stacks(text: str) -> tuple[tuple[Any, ...], ...]:
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
    "--patience": ("patience", _optional_int),
    "--sample": ("sample", _optional_int),
    "--depth-grouping": ("depth_grouping", str),
    "--conv": ("conv", conv_stacks),
    "--folds": ("folds", _folds),
    "--repeats": ("repeats", _folds),
    "--metric": ("metric", str),
    "--design": ("design", str),
    "--map-batch": ("map_batch", lambda text: text if text in ("auto", "probe", "vmap") else int(text)),  # or k
}


class ConfigFlag(NamedTuple):
    """A command-line flag that sets one FinetuneConfig field. ``parse`` is ``bool`` for a switch (no value), which
    sets the field to ``switch_value``; the help's default is read from FinetuneConfig."""

    name: str
    field: str
    parse: Callable[[str], Any]
    help: str
    switch_value: Any = None


def _unfreeze(text: str) -> int | str:
    return "all" if text.strip() == "all" else int(text)


def _policy(text: str) -> tuple[str, ...]:
    """Augmentation names as given ("none": no augmentation); FinetuneConfig checks them, naming --augment."""
    return () if text.strip() == "none" else _strs(text)


# Fine-tune settings settable from the command line; an absent flag leaves FinetuneConfig's default.
FINETUNE_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("--unfreeze", "unfreeze", _unfreeze, "how many top backbone blocks train: 0 (the head alone) up to "
               "the backbone's depth, or all (the whole network)"),
    ConfigFlag("--train-bn", "freeze_bn", bool, "let batch-norm statistics train", switch_value=False),
    ConfigFlag("--lr", "learning_rate", float, "head learning rate"),
    ConfigFlag("--backbone-lr", "backbone_learning_rate", float, "top unfrozen block's learning rate (each block "
               "below it trains layer-decay times slower)"),
    ConfigFlag("--optimizer", "optimizer", str, "adamw or sgd (with --momentum)"),
    ConfigFlag("--momentum", "momentum", float, "SGD momentum"),
    ConfigFlag("--weight-decay", "weight_decay", float, "weight decay of head and blocks (AdamW: decoupled)"),
    ConfigFlag("--epochs", "epochs", int, "most epochs to train"),
    ConfigFlag("--batch-size", "batch_size", int, "images per batch"),
    ConfigFlag("--accumulate", "accumulate", int, "batches whose gradients make one update (effective batch "
               "size: batch size x N, in one batch's memory)"),
    ConfigFlag("--remat", "remat", bool, "recompute unfrozen blocks in the backward pass (jax.checkpoint): less "
               "memory, more compute", switch_value=True),
    ConfigFlag("--augment", "augment", _policy, "augmentation drawn per image and step on device: comma-separated "
               "names from flip, dihedral, crop, scale, affine (±3° rotation, ±2%% shift and scale), or none; "
               "e.g. dihedral,affine"),
    ConfigFlag("--class-weights", "class_weights", str, "balanced: weigh the training loss by inverse class "
               "frequency of train; none"),
    ConfigFlag("--patience", "patience", int, "epochs without val improvement before stopping"),
    ConfigFlag("--image-size", "image_size", int, "input size"),
    ConfigFlag("--seed", "seed", int, "seed of shuffles, augmentation and dropout"),
)


def finetune_flag_help(flag: ConfigFlag) -> str:
    """A finetune flag's help with FinetuneConfig's default for its field (a switch is off by default)."""
    from jaxheads.finetuning.config import FinetuneConfig

    if flag.parse is bool:
        return f"{flag.help} (default: off)"
    default = next(f.default for f in dataclasses.fields(FinetuneConfig) if f.name == flag.field)
    if isinstance(default, tuple):  # written back in the flag's own syntax
        default = ",".join(default) or "none"
    return f"{flag.help} (default {'the size the head was swept at' if default is None else default})"


DESCRIPTION = "Train and compare classifier heads on the cached features of a pretrained image backbone."
EPILOG = """first steps:
  jaxheads backbones list --available        backbones whose weights are on this machine now
  jaxheads sweep --dry-run                   the default sweep's plan and time estimate; nothing runs
  jaxheads sweep --dataset path/to/images    train on your images (one sub-folder per class)
  jaxheads COMMAND --help                    every flag of a command, with its default
"""
SWEEP_EPILOG = """examples:
  jaxheads sweep --dry-run --folds 5                      plan, memory and time estimate; nothing runs
  jaxheads sweep --dataset photos/ --widths 128,512 --depths 1,2 --design grid
  jaxheads sweep --conv 1x1:448+pool2 --pooling avg --widths 112 --depths 1
      the seed-001 head: a 1x1 conv to 448 channels, a 2x2 max pool, global average pooling, dense 112

--conv takes comma-separated conv stacks, each trained as one level of the axis. A stack is "none" (pool the
backbone's map directly) or stages joined by ">" (quote it in a shell), run in order; a stage is
KxK:FEATURES[/sSTRIDE][+poolP]: a KxK convolution to FEATURES channels (stride STRIDE, default 1), the
activation, then a PxP max pool.
  --conv none,1x1:448+pool2              two levels: no conv, and 1x1 conv to 448 then 2x2 max pool
  --conv '1x1:448>3x3:256/s2'            one level: two stages, the second a stride-2 3x3 conv to 256

Axes take comma-separated levels: --design grid trains every combination, one_factor changes one axis at a
time around the first level of each. Scalars take one value. A --config YAML/JSON file sets any SweepSpec
field; flags override it.
"""


def _quiet_verbose(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """-q/--quiet, -v/--verbose and --debug, accepted before or after the command (the command's own copies leave
    the top level's value alone when absent)."""
    default: Any = False if top else argparse.SUPPRESS
    group = parser.add_argument_group("output") if not top else parser
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="only warnings, errors and the results (no progress bars, no per-file lines)")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="also debug lines (where each skipped image was noticed, timings)")
    group.add_argument("--debug", action="store_true", default=default, help="show tracebacks of errors")


def _no_compile_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not read or write compiled programs in $JAXHEADS_CACHE/xla (default: on, so a "
                             "second run compiles nothing)")


def _sweep_parser(sub: Any) -> None:
    from jaxheads import job

    sweep = sub.add_parser(
        "sweep", help="cache backbone features once, train a grid of heads together, rank them and report",
        description=textwrap.fill("Run the backbone once over a dataset (its features are cached), train every "
                                  "head of the grid in a few compiled programs, rank them on validation, and write "
                                  "results.json, report.html and the recommended head.", 100),
        epilog=SWEEP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = sweep.add_argument_group("what to train on")
    data.add_argument("--dataset", default=None, help=f"elpv, elpv-multilabel, fashion_mnist, animal_mnist, an image "
                      f"folder (a sub-folder per class), a path,label CSV, or tfds:NAME; default {job.DEFAULT_DATASET}")
    data.add_argument("--backbone", default=None, help="a name from `jaxheads backbones list`, or keras:PATH[@TAP] "
                      "(a saved Keras model's zoo base, cut at TAP, default its output); default "
                      f"{job.DEFAULT_BACKBONE}")
    data.add_argument("--weights", default="default", help="the backbone's weights: default (its ImageNet weights), "
                      "imagenet, a weights file (a timm .safetensors/.pth too), timm:NAME (timm's weights from the "
                      "Hugging Face hub), or none (random init); default: default")
    data.add_argument("--task", choices=("multiclass", "multilabel"), help="for a CSV: one label per image or "
                      "several; default multilabel")
    data.add_argument("--data-dir", type=Path, help="TFDS data_dir for tfds:NAME; default TFDS's own")
    data.add_argument("--input-size", default=None, metavar="PX,...", help="the images' side in pixels before the "
                      "backbone; several (e.g. 224,300) feature the images at each and ask 'Input size' as a question; "
                      "default the backbone's own")
    data.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split drawn from a dataset "
                      "without one; default 0")
    data.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    data.add_argument("--feature-batch-size", type=int, default=64, help="images per backbone call; default 64")
    data.add_argument("--cache-dir", type=Path, help="where features are cached; default $JAXHEADS_CACHE/features")
    data.add_argument("--taps", default="last", metavar="last|all|NAME,...", help="intermediate outputs of the "
                      "backbone to cache too, each as its per-channel mean and standard deviation, from the same "
                      "forward pass: last (only the last layer's features), all, or tap names from `jaxheads "
                      "backbones list --taps`; the heads train on the last layer's features; default last")
    data.add_argument("--representation", default="last", metavar="LEVEL,...", help="the pooled vector the heads "
                      "read, one sweep per level: last (the last layer), a tap name (cut the backbone there), last-K "
                      "(the last K taps), all (every tap, standardised on the training rows), select:F (the fraction "
                      "F of all's features a ridge fit on train ranks highest; --folds none), stages (last and each "
                      "resolution stage's end, each cut's cost measured); caches every tap; map-pooling heads read "
                      "the last map (a maps-only grid gets a linear probe at every level); default last")
    _view_flags(sweep)
    run = add_sweep_flags(sweep, job.DEFAULT_SWEEP)
    run.add_argument("--out", type=Path, default=Path("runs/latest"), help="output directory; default runs/latest")
    run.add_argument("--dry-run", action="store_true", help="print the plan (members, groups, padded widths, FLOPs, "
                     "memory per device) and a time estimate calibrated on this machine, then stop; runs nothing")
    run.add_argument("--device-memory-budget", type=_byte_size, default=None, metavar="SIZE",
                     help="bytes per device a group's features may take on the devices (e.g. 2GiB, 512MB); a group "
                          "over it streams them from the memory-mapped cache, double-buffered, with the same "
                          "results; default: half the device's memory (CPU: of the free RAM per device)")
    _no_compile_cache(run)
    _quiet_verbose(sweep)
    _distributed_flags(sweep)


def add_sweep_flags(parser: argparse.ArgumentParser, defaults: Any) -> argparse._ArgumentGroup:
    """The sweep's axis and scalar flags (their help naming ``defaults``, a SweepSpec) and ``--config``; returns
    the "run" group they end with."""
    axes = parser.add_argument_group("axes: comma-separated levels, e.g. --widths 128,512 (see the end)")
    scalars = parser.add_argument_group("scalars: one value each")
    for flag, (field, _) in SWEEP_FLAGS.items():
        default = getattr(defaults, field)
        text, metavar = sweep_flag_help(flag, field, default)
        group = axes if is_axis(default) else scalars
        group.add_argument(flag, dest=f"axis_{field}", default=None, metavar=metavar, help=text.replace("%", "%%"))
    run = parser.add_argument_group("run")
    run.add_argument("--config", type=Path, help="a YAML/JSON file of SweepSpec fields; the flags above override it")
    return run


def _finetune_parser(sub: Any) -> None:
    ft = sub.add_parser("finetune", help="fine-tune a saved head with the top blocks of its backbone, on images",
                        description="Train a saved head together with the top blocks of its backbone, on images.")
    ft.add_argument("head", type=Path, help="a head directory written by `jaxheads sweep` (OUT/head)")
    ft.add_argument("--dataset", default="elpv", help="the dataset the head was swept on (same forms as sweep); "
                    "default elpv")
    ft.add_argument("--out", type=Path, default=Path("runs/finetune"), help="output directory (model/, "
                    "finetune.json, the epoch checkpoints); default runs/finetune")
    ft.add_argument("--resume", action="store_true", help="continue a killed run in --out from its last epoch "
                    "checkpoint (the same flags; it ends with the weights an uninterrupted run ends with); without "
                    "it, an unfinished run in --out is an error")
    for flag in FINETUNE_FLAGS:
        if flag.parse is bool:  # a switch: present means the opposite of the field's default
            ft.add_argument(flag.name, dest=f"config_{flag.field}", action="store_true", default=None,
                            help=finetune_flag_help(flag))
        else:
            ft.add_argument(flag.name, dest=f"config_{flag.field}", type=flag.parse, default=None,
                            metavar=flag.field.upper(), help=finetune_flag_help(flag))
    ft.add_argument("--split-seed", type=int, default=0, help="dataset split seed (the sweep's --seed); default 0")
    ft.add_argument("--data-dir", type=Path, help="TFDS data_dir for tfds:NAME")
    ft.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    _no_compile_cache(ft)
    _quiet_verbose(ft)


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxheads`` argument parser (every command, flag and help line)."""
    parser = argparse.ArgumentParser(prog="jaxheads", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _quiet_verbose(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _sweep_parser(sub)
    predict = sub.add_parser("predict", help="apply a saved head (and its backbone) or fine-tuned model to images",
                             description="Print the top classes a saved head (the bag of fold models the sweep "
                             "scored) or a fine-tuned model gives each image; OUT/model.jaxexport is the same program "
                             "for use without jaxheads.")
    predict.add_argument("head", type=Path, help="a head directory written by `jaxheads sweep` (OUT/head) or a model "
                         "directory written by `jaxheads finetune` (OUT/model)")
    predict.add_argument("images", nargs="+", type=Path, help="image files")
    predict.add_argument("--top", type=int, default=3, help="classes shown per image; default 3")
    _no_compile_cache(predict)
    _quiet_verbose(predict)
    _finetune_parser(sub)
    classify = sub.add_parser("classify", help="ImageNet top-k of a pretrained backbone (a check of its weights)",
                              description="Classify images into ImageNet's classes with a backbone's own classifier.")
    classify.add_argument("images", nargs="*", type=Path, help="image files; default the bundled photo")
    classify.add_argument("--backbone", default="efficientnet_lite0", help="default efficientnet_lite0")
    classify.add_argument("--top", type=int, default=5, help="classes shown per image; default 5")
    _quiet_verbose(classify)
    from jaxheads.cli.backbones import backbones_parser

    backbones_parser(sub)
    return parser


def _view_flags(parser: argparse.ArgumentParser) -> None:
    from jaxheads.data.augment import AUGMENTATIONS, DEFAULT_POLICY

    group = parser.add_argument_group("augmented views (the backbone runs once per view; cached like the images)")
    group.add_argument("--views", default="1", metavar="K[,K...]", help="heads train on a random one of K views "
                       "of each image per epoch: the plain image and K-1 augmented; default 1 (no augmentation); "
                       "several (e.g. 1,4) sweep at each K and ask 'Views' as a question")
    group.add_argument("--augment", default=",".join(DEFAULT_POLICY), metavar="NAME,...", help="what the views do: "
                       f"{', '.join(AUGMENTATIONS)} (crop: random-resized, 60-100%% of the area; dihedral: the 8 "
                       "rotations and reflections, for images without an up); default "
                       f"{','.join(DEFAULT_POLICY)}; e.g. dihedral,crop")
    group.add_argument("--tta", action="store_true", help="test-time augmentation: the test figures average each "
                       "test image's K views (its views are computed too)")


def _distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-host (default: the cluster's environment, if any; else one process)")
    group.add_argument("--coordinator", help="host:port of process 0, e.g. 10.0.0.1:1234")
    group.add_argument("--num-processes", type=int, help="how many processes take part")
    group.add_argument("--process-id", type=int, help="this process's rank, 0 to num-processes - 1")


EXPECTED = {_ints: "comma-separated integers", _floats: "comma-separated numbers", int: "an integer",
             _optional_int: "an integer or none", _strs: "comma-separated names", _folds: "auto, or an integer or none"}


class FlagHelp(NamedTuple):
    """What one sweep flag means: ``meaning`` (one plain line), ``metavar``, ``example`` (or None), and what its
    value None means (for scalars whose default is None)."""

    meaning: str
    metavar: str
    example: str | None = None
    none: str = "off"


@functools.cache
def sweep_help() -> dict[str, FlagHelp]:
    """Flag -> :class:`FlagHelp` of every sweep flag (built on first use: it reads the sweep's constants)."""
    from jaxheads.heads.spec import ACTIVATIONS, NORMS, POOLINGS
    from jaxheads.metrics import DEFAULT_METRIC
    from jaxheads.stats import RANKING_METRICS
    from jaxheads.sweep.spec import DEPTH_GROUPINGS, DESIGNS, MAP_BATCH_MODES, OPTIMIZERS

    poolings = ", ".join(p for p in POOLINGS if p != "none")
    return {
        "--pooling": FlagHelp(f"how the feature map becomes a vector: {poolings}; none = the cached "
                              "average-pooled vector", "P", "avg,flatten"),
        "--conv": FlagHelp("conv stages on the feature map before pooling; a stack is none or stages KxK:FEATURES"
                           "[/sSTRIDE][+poolP] joined by '>'", "STACK", "none,1x1:448+pool2 or '1x1:448>3x3:256/s2'"),
        "--widths": FlagHelp("units of every dense hidden layer", "N", "128,512"),
        "--depths": FlagHelp("dense hidden layers; 0 = a linear head on the pooled features", "N", "0,1,2"),
        "--dropouts": FlagHelp("dropout rate after each hidden layer", "RATE", "0,0.5"),
        "--norm": FlagHelp(f"normalisation in each hidden layer: {', '.join(NORMS)}", "NORM", "none,batch"),
        "--activation": FlagHelp(f"activation of hidden layers and conv stages: {', '.join(ACTIVATIONS)}", "ACT"),
        "--lr": FlagHelp("learning rate", "LR", "1e-3,3e-4"),
        "--weight-decay": FlagHelp("decoupled weight decay of the kernels", "WD", "0,1e-4"),
        "--optimizer": FlagHelp(f"optimiser: {', '.join(OPTIMIZERS)} (sgd with momentum 0.9)", "OPT"),
        "--batch-size": FlagHelp("training examples per step", "N"),
        "--epochs": FlagHelp("most epochs each head trains", "N"),
        "--seeds": FlagHelp("replicas of every config with other seeds (to measure noise)", "N"),
        "--patience": FlagHelp("epochs without val improvement before a head stops; none = never stop early", "N",
                               none="never stop early"),
        "--sample": FlagHelp("train a random subset of this many configs; none = all of them", "N",
                             none="all configs"),
        "--folds": FlagHelp("K-fold cross-validation over train+val, so every example validates once; auto = 3 "
                            "folds up to 10,000 train+val examples, else none; none = train on train, validate on "
                            "the fixed val split", "K", none="the fixed val split"),
        "--repeats": FlagHelp("independent K-fold partitions (repeated cross-validation), each (repeat, fold) "
                              "member with its own rows and seed; auto = 2 under --folds auto, else 1", "R", "3"),
        "--metric": FlagHelp("val metric that ranks and early-stops heads: "
                             f"{' | '.join(RANKING_METRICS['multiclass'])}; multilabel: "
                             f"{' | '.join(RANKING_METRICS['multilabel'])}", "METRIC",
                             none=f"the task's own ({DEFAULT_METRIC['multiclass']}; multilabel "
                                  f"{DEFAULT_METRIC['multilabel']})"),
        "--design": FlagHelp(f"{' | '.join(DESIGNS)}: grid trains every combination of the axes; one_factor "
                             "changes one axis at a time around the first level of each", "DESIGN"),
        "--depth-grouping": FlagHelp(f"{' | '.join(DEPTH_GROUPINGS)}: one program per depth, or depths >= 1 "
                                     "sharing one padded program", "MODE"),
        "--map-batch": FlagHelp(f"how members share a device: {' | '.join(MAP_BATCH_MODES)} (probe times a few) "
                                "or an int k (lax.map in chunks of k)", "MODE"),
    }


def is_axis(value: Any) -> bool:
    """A SweepSpec field is an axis when its value is a tuple of levels."""
    return isinstance(value, tuple)


def conv_stack_text(stack: Any) -> str:
    """One conv stack in ``--conv`` syntax: ``()`` -> ``none``; stages -> ``1x1:448+pool2>3x3:256/s2``."""
    if not stack:
        return "none"
    parts = []
    for s in stack:
        text = f"{s.kernel}x{s.kernel}:{s.features}"
        text += f"/s{s.stride}" if s.stride != 1 else ""
        text += f"+pool{s.pool}" if s.pool != 1 else ""
        parts.append(text)
    return ">".join(parts)


def flag_text(field: str, value: Any) -> str | None:
    """``value`` of SweepSpec ``field`` written as its flag takes it (None stays None): the inverse of the flag's
    parser, so ``parse(flag_text(f, v)) == v`` for every value but None."""
    if value is None:
        return None
    if field == "conv":
        return ",".join(conv_stack_text(stack) for stack in value)
    one = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    return ",".join(one(v) for v in value) if is_axis(value) else one(value)


def sweep_flag_help(flag: str, field: str, default: Any) -> tuple[str, str]:
    """(help line, metavar) of one sweep flag, its default taken from ``default`` (DEFAULT_SWEEP's value)."""
    info = sweep_help().get(flag, FlagHelp(f"SweepSpec.{field}", field.upper()))
    axis = is_axis(default)
    text = flag_text(field, default)
    parts = [("axis: " if axis else "") + info.meaning]
    parts.append(f"default {text}" if text is not None else f"default: {info.none}")
    if info.example:
        parts.append(f"e.g. {info.example}")
    metavar = f"{info.metavar},..." if axis else info.metavar
    return "; ".join(parts), metavar
