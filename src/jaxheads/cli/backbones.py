"""``jaxheads backbones list|compare``: the registered backbones as a table, and the same sweep on several
backbones answering "which backbone?" with intervals and a Pareto table (:mod:`jaxheads.compare`)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from jaxheads.cli.flags import add_sweep_flags, quiet_verbose

log = logging.getLogger("jaxheads")


def backbones_parser(sub: Any) -> None:
    """The ``backbones`` command's parser: ``list`` and ``compare`` (which takes the sweep's axis flags)."""
    from jaxheads.compare import COMPARE_SWEEP, DEFAULT_OUT

    bb = sub.add_parser("backbones", help="list the backbones, or compare them with the same sweep on each",
                        description="List the registered backbones, or compare backbones on a dataset.")
    bb_sub = bb.add_subparsers(dest="backbones_command", required=True, metavar="{list,compare}")
    listing = bb_sub.add_parser("list", help="a table: input size, feature map, parameters, ImageNet top-1, where "
                                "the weights come from and whether they are here",
                                description="Every registered backbone as a table; no weights are loaded.")
    listing.add_argument("names", nargs="*", help="only these backbones; default all")
    listing.add_argument("--available", action="store_true", help="only backbones whose weights are on this "
                         "machine now (they run offline)")
    listing.add_argument("--taps", action="store_true", help="also every tap's name (the intermediate outputs "
                         "`jaxheads sweep --taps` caches), input to output")
    quiet_verbose(listing)
    compare = bb_sub.add_parser(
        "compare", help="the same sweep on each backbone's cached features: 'A vs B' with intervals, and each "
        "one's accuracy beside its params and measured images/s (the Pareto front)",
        description="Feature the dataset with each backbone (cached; each at its own input size and default "
                    "weights), train the same heads on each on the same folds and seeds, and answer 'Backbone: A vs "
                    "B' with the paired bootstrap; the report adds each backbone's best head beside its params, "
                    "FLOPs and images/s measured here, and the recommended head is saved with its backbone.")
    compare.add_argument("names", nargs="+", metavar="NAME[=WEIGHTS]", help="two or more backbones, e.g. "
                         "efficientnet_lite0 efficientnet_lite2 xception=model.keras (see `jaxheads backbones list "
                         "--available`); WEIGHTS as sweep --weights takes them, default each one's own")
    compare.add_argument("--dataset", default="elpv", help="same forms as sweep --dataset; default elpv")
    compare.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split drawn from a dataset "
                         "without one; default 0")
    compare.add_argument("--cache-dir", type=Path, help="where features are cached; default $JAXHEADS_CACHE/features")
    compare.add_argument("--data-dir", type=Path, help="TFDS data_dir for tfds:NAME")
    compare.add_argument("--feature-batch-size", type=int, default=64, help="images per backbone call; default 64")
    run = add_sweep_flags(compare, COMPARE_SWEEP)
    run.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"output directory; default {DEFAULT_OUT}")
    quiet_verbose(compare)


def backbones_command(args: argparse.Namespace) -> int:
    return _table(args) if args.backbones_command == "list" else _compare(args)


def _compare(args: argparse.Namespace) -> int:
    """``backbones compare``: :func:`jaxheads.compare.compare_backbones` with the flags, then the printed report
    (leaderboard, the Backbone question, the Pareto table) and the files written."""
    from jaxheads import distributed, features, job, report
    from jaxheads.cli import progress
    from jaxheads.cli.flags import sweep_spec_from_args
    from jaxheads.compare import COMPARE_SWEEP, compare_backbones

    spec = sweep_spec_from_args(args, COMPARE_SWEEP)
    distributed.split_cpu_host()  # CPU-only hosts: members run side by side, one JAX device per core
    main = distributed.is_main_process()
    with progress.Bars(enabled=main and not args.quiet) as bars:
        output = compare_backbones(args.dataset, args.names, sweep=spec,
                                   options=job.JobOptions(out_dir=args.out, data_dir=args.data_dir, seed=args.seed),
                                   extract=features.ExtractOptions(cache_dir=args.cache_dir,
                                                                   batch_size=args.feature_batch_size),
                                   feature_progress=bars.features, sweep_progress=bars.sweep)
    if main:
        report.print_report(json.loads(output.files["results"].read_text()), console=progress.wide_console())
        for name, path in sorted(output.files.items()):
            print(f"{name:>12}: {path}")
    return 0


def _table(args: argparse.Namespace) -> int:
    """``backbones list``: one aligned row per backbone (plain text, so it pipes into grep and awk)."""
    from jaxheads.backbones import describe

    infos = describe.table(args.names or None, available=args.available)
    if not infos:
        print("No backbone has its weights on this machine now; see `jaxheads backbones list` for where they come "
              "from.")
        return 0
    header = ["name", "input", "feature map", "params", "ImageNet top-1", "taps", "weights from", "on this machine"]
    rows = [[i.name, f"{i.architecture.input_size} px", "x".join(map(str, i.architecture.feature_shape)),
             f"{i.architecture.params / 1e6:.1f} M", "—" if i.top1 is None else f"{i.top1:.1f}%", _tap_span(i.taps),
             i.weights.source,
             ("yes: " if i.weights.available else "no: " if i.weights.available is False else "") + i.weights.state]
            for i in infos]
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) if j in (0, 5, 6, 7) else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
              .rstrip())
    for info in infos if args.taps else ():
        print(f"{info.name} taps: {', '.join(info.taps) or 'none (only --taps last)'}")
    log.debug("top-1: as published by each weights' source (Keras's table, the MobileNet and EfficientNet-Lite "
              "READMEs); shapes and parameters at the input size, from the architecture")
    return 0


def _tap_span(taps: tuple[str, ...]) -> str:
    """A tap list in a table cell: how many, the first and the last (``--taps`` lists them all)."""
    return "—" if not taps else f"{len(taps)}: {taps[0]}..{taps[-1]}" if len(taps) > 1 else f"1: {taps[0]}"
