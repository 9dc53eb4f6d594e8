"""The ``jaxheads`` command: ``sweep`` (the main job), ``predict``, ``finetune``, ``classify``,
``backbones list|compare``.

Every subcommand is a thin shell over the Python API. Errors print one line naming what was wrong (the file, the
field, the name) and exit with status 2; ``--debug`` shows the traceback instead. Progress and log lines go to
stderr (``--quiet`` / ``--verbose``, see :mod:`jaxheads.cli.progress`), results to stdout. ``sweep``, ``predict`` and
``finetune`` keep their compiled programs in JAX's persistent cache (:mod:`jaxheads.cli.compile_cache`) unless
``--no-compile-cache``; ``sweep --dry-run`` plans and estimates without running anything (:mod:`jaxheads.cli.dry_run`).
"""

from .main import COMMANDS, finetune_config_from_args, log, main, run_key, sweep_spec_from_args
from .parser import FINETUNE_FLAGS, SWEEP_FLAGS, ConfigFlag, build_parser, conv_stacks

__all__ = [
    "COMMANDS",
    "ConfigFlag",
    "build_parser",
    "conv_stacks",
    "FINETUNE_FLAGS",
    "SWEEP_FLAGS",
    "finetune_config_from_args",
    "log",
    "main",
    "run_key",
    "sweep_spec_from_args",
]
