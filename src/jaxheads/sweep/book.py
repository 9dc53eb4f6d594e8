"""A group's run on the host: what it trains with (:class:`GroupRun`) and its members' bookkeeping
(:class:`MemberBook`: best scores, epochs, stop reasons and curves, by member position)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

import numpy as np

if TYPE_CHECKING:
    from .group import Programs
    from .inputs import GroupInputs
    from .plan import GroupPlan
    from .spec import MemberSpec, SweepSpec


class GroupRun(NamedTuple):
    """What every stage of one group's training reads: its plan, placed inputs, compiled programs, the sweep, the
    ranking metric, the task, the sweep's members and the group's timings (seconds, accumulated in place)."""

    plan: GroupPlan
    inputs: GroupInputs
    programs: Programs
    sweep: SweepSpec
    metric: str
    task: str
    members: Sequence[MemberSpec]
    timings: dict[str, float]


class MemberBook:
    """Host bookkeeping of a group's members, indexed by member position j (not by device slot); only its own
    methods change it."""

    def __init__(self, n: int):
        self.best = np.full(n, -np.inf)
        self.best_epoch = np.zeros(n, int)
        self.epochs_run = np.zeros(n, int)
        self.since = np.zeros(n, int)  # epochs since the last improvement
        self.active = np.ones(n, bool)
        self.stopped = ["completed"] * n
        self.curves: list[dict[str, Any]] = [{"train_loss": [], "val": {}} for _ in range(n)]
        self.best_val: list[dict[str, np.ndarray] | None] = [None] * n  # val metrics at best_epoch

    def record_epoch(self, epoch: int, slots: np.ndarray, was_active: np.ndarray, improved: np.ndarray,
                     score: np.ndarray, losses: np.ndarray, val: Mapping[str, np.ndarray]) -> None:
        """Book one epoch of the slots that trained in it."""
        for slot in np.flatnonzero(was_active):
            j = slots[slot]
            self.epochs_run[j] = epoch
            self.curves[j]["train_loss"].append(float(np.mean(losses[slot])))
            for k, v in val.items():
                if v[slot].ndim == 0:
                    self.curves[j]["val"].setdefault(k, []).append(float(v[slot]))
            if improved[slot]:
                self.best[j], self.best_epoch[j], self.since[j] = score[slot], epoch, 0
                self.best_val[j] = {k: v[slot] for k, v in val.items()}
            else:
                self.since[j] += 1

    def stop(self, js: np.ndarray, why: str) -> None:
        for j in js:
            self.stopped[j] = why
        self.active[js] = False
