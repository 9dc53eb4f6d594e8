"""jaxheads: pick the classifier head for a frozen pretrained CNN in one run.

The backbone runs once and its features are cached; a grid of heads then trains at once in one jitted,
vmapped program sharded over every device JAX sees. The names below load their module on first use, so
``import jaxheads`` stays cheap (no TensorFlow, no backbone code until asked for).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "sweep_job": "jaxheads.job",
    "compare_backbones": "jaxheads.compare",
    "HeadSpec": "jaxheads.heads",
    "ConvStage": "jaxheads.heads",
    "init_head": "jaxheads.heads",
    "apply_head": "jaxheads.heads",
    "SweepSpec": "jaxheads.sweep",
    "MemberSpec": "jaxheads.sweep",
    "SweepResult": "jaxheads.sweep",
    "run_sweep": "jaxheads.sweep",
    "compile_sweep": "jaxheads.sweep",
    "abstract_splits": "jaxheads.sweep",
    "save_head": "jaxheads.heads.io",
    "load_head": "jaxheads.heads.io",
    "export_head": "jaxheads.heads.io",
    "FeatureSplit": "jaxheads.features.split",
    "load_dataset": "jaxheads.data",
    "extract_all": "jaxheads.features",
    "ExtractOptions": "jaxheads.features",
    "JobOptions": "jaxheads.job",
    "ridge_probe": "jaxheads.probe",
    "write_report": "jaxheads.report",
    "finetune": "jaxheads.finetuning",
    "load_model": "jaxheads.finetuning",
    "split_cpu_host": "jaxheads.distributed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jaxheads' has no attribute {name!r}")
