"""The command line's vocabulary: how each flag's text becomes a value, which flags set which SweepSpec and
FinetuneConfig fields, and the help that teaches them (a plain meaning, the real default, an example where the
syntax is not obvious). :mod:`jaxheads.cli.parser` and :mod:`jaxheads.cli.backbones` build their commands from it.

``SWEEP_FLAGS`` (flag -> (SweepSpec field, parser)) and ``FINETUNE_FLAGS`` are the settable fields. A sweep flag's
default is read from the command's default SweepSpec and written back in the flag's own syntax (:func:`flag_text`),
so the help cannot drift from what a run without the flag trains. An *axis* (a tuple field of ``SweepSpec``) takes
comma-separated levels; a *scalar* takes one value.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
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
               "e.g. flip,affine (dihedral adds quarter turns, which a model swept on upright images must first "
               "learn)"),
    ConfigFlag("--class-weights", "class_weights", str, "balanced: weigh the training loss by inverse class "
               "frequency of train; none"),
    ConfigFlag("--sampling", "sampling", str, "each epoch's order: shuffle (train permuted) or balanced (draws "
               "with replacement, every class equally likely)"),
    ConfigFlag("--patience", "patience", int, "epochs without val improvement before stopping"),
    ConfigFlag("--metric", "metric", lambda text: None if text.strip().lower() == "none" else text.strip(),
               "val metric that early-stops and picks the saved epoch, e.g. balanced_accuracy or macro_f1 on "
               "imbalanced classes"),
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
    if default is None:
        default = {"image_size": "the size the head was swept at", "metric": "the task's own"}.get(flag.field)
    return f"{flag.help} (default {default})"


def quiet_verbose(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """-q/--quiet, -v/--verbose and --debug, accepted before or after the command (the command's own copies leave
    the top level's value alone when absent)."""
    default: Any = False if top else argparse.SUPPRESS
    group = parser.add_argument_group("output") if not top else parser
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="only warnings, errors and the results (no progress bars, no per-file lines)")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="also debug lines (where each skipped image was noticed, timings)")
    group.add_argument("--debug", action="store_true", default=default, help="show tracebacks of errors")


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


def sweep_spec_from_args(args: argparse.Namespace, default: Any = None) -> Any:
    """The SweepSpec of ``--config`` (or ``default``, else the main job's sweep) with the axis flags applied on
    top."""
    from jaxheads.job import DEFAULT_SWEEP
    from jaxheads.sweep import SweepSpec

    spec = DEFAULT_SWEEP if default is None else default
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
            except ValueError as e:
                expected = EXPECTED.get(parse, str(e))
                raise ValueError(f"{flag} {text!r}: not a valid value for SweepSpec.{field} (expected "
                                 f"{expected})") from None
    return SweepSpec.from_dict({**spec.to_dict(), **changes}) if changes else spec
