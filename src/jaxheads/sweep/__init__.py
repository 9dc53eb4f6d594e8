"""The sweep: train a whole grid of heads at once on cached features and rank them with noise.

The data flow, one module each::

    spec.py     SweepSpec (the grid) -> MemberSpec per member
    plan.py     members -> GroupPlan per group of one program structure (host only: padding, layout, memory)
    inputs.py   cached features -> each group's program input, pooled once and placed on the mesh
    program.py  the jitted heart: optimiser, member step, epoch, evaluation, init
    group.py    a group's init run in the background and its programs compiled
    loop.py     the epoch loop: early stopping, halving and compaction between epochs
    records.py  each member's final metrics and unpadded weights
    result.py   SweepResult and the leaderboard (layout in schema.py)
    resume.py   finished groups on disk, so a killed sweep resumes

``run_sweep`` needs ``"train"`` and ``"val"`` splits; ``"test"`` is optional.
"""

from . import stream, verdicts
from .inputs import abstract_splits
from .plan import CPU_MEMBER_MAJOR_PARAMS
from .program import make_optimizer
from .result import SweepResult, leaderboard
from .run import compile_sweep, run_sweep
from .schema import SCHEMA
from .spec import DEPTH_GROUPING_DEFAULT, MemberSpec, SweepSpec

__all__ = [
    "CPU_MEMBER_MAJOR_PARAMS",
    "DEPTH_GROUPING_DEFAULT",
    "MemberSpec",
    "SCHEMA",
    "SweepResult",
    "SweepSpec",
    "abstract_splits",
    "compile_sweep",
    "leaderboard",
    "make_optimizer",
    "run_sweep",
    "stream",
    "verdicts",
]
