"""The command line's grammar: every command of ``jaxheads`` and its flags, built from the vocabulary in
:mod:`jaxheads.cli.flags` (re-exported here, and from ``jaxheads.cli``); ``backbones`` is built by
:mod:`jaxheads.cli.backbones`.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

from jaxheads.cli.backbones import backbones_parser
from jaxheads.cli.flags import (EXPECTED, FINETUNE_FLAGS, SWEEP_FLAGS, ConfigFlag, FlagHelp, _byte_size,
                                add_sweep_flags, conv_stack_text, conv_stacks, finetune_flag_help, flag_text, is_axis,
                                quiet_verbose, sweep_flag_help, sweep_help)

__all__ = ["EXPECTED", "FINETUNE_FLAGS", "SWEEP_FLAGS", "ConfigFlag", "FlagHelp", "build_parser", "conv_stack_text",
           "conv_stacks", "finetune_flag_help", "flag_text", "is_axis", "sweep_flag_help", "sweep_help"]


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
    quiet_verbose(sweep)
    _distributed_flags(sweep)


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
    quiet_verbose(ft)


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxheads`` argument parser (every command, flag and help line)."""
    parser = argparse.ArgumentParser(prog="jaxheads", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    quiet_verbose(parser, top=True)
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
    quiet_verbose(predict)
    _finetune_parser(sub)
    classify = sub.add_parser("classify", help="ImageNet top-k of a pretrained backbone (a check of its weights)",
                              description="Classify images into ImageNet's classes with a backbone's own classifier.")
    classify.add_argument("images", nargs="*", type=Path, help="image files; default the bundled photo")
    classify.add_argument("--backbone", default="efficientnet_lite0", help="default efficientnet_lite0")
    classify.add_argument("--top", type=int, default=5, help="classes shown per image; default 5")
    quiet_verbose(classify)
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
