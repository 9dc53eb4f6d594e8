"""What a sweep found: :class:`SweepResult`, the leaderboard that aggregates replicas, and the group records.

The JSON layout is documented field by field in :mod:`.schema`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

from jaxheads.checkpoint import json_ready
from jaxheads.heads import HeadSpec

from .plan import GroupPlan
from .schema import SCHEMA
from .spec import MemberSpec, SweepSpec


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "sem": float("nan")}
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {"mean": float(a.mean()), "std": std, "sem": std / math.sqrt(a.size)}


@dataclasses.dataclass
class SweepResult:
    """What a sweep found. ``to_json()`` gives the layout documented in :mod:`.schema`; ``variables`` holds the
    kept (best-epoch) weights of every member, unpadded, for :meth:`head` / saving; it is not part of the JSON."""

    task: str
    num_classes: int
    metric: str
    sweep: SweepSpec
    members: list[dict[str, Any]]
    leaderboard: list[dict[str, Any]]
    recommended: str | None
    ridge: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    timings: dict[str, float]
    feature_shapes: dict[str, list[int] | None]
    label_names: list[str] | None = None
    variables: list[Any] = dataclasses.field(default_factory=list, repr=False)
    # Per-example probabilities of every member at its kept epoch (not part of the JSON; see write_predictions):
    # "val" (members, rows, classes) on every val row (with folds: every pooled train+val row, a member's own
    # rows being those whose "val_fold" is its fold), "val_labels", "val_fold" (folds only), "test", "test_labels".
    predictions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    questions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    selection: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "task": self.task, "num_classes": self.num_classes,
                "label_names": self.label_names, "metric": self.metric, "feature_shapes": self.feature_shapes,
                "sweep": self.sweep.to_dict(), "members": self.members, "leaderboard": self.leaderboard,
                "recommended": self.recommended, "ridge": self.ridge, "groups": self.groups,
                "timings": self.timings, "questions": self.questions, "selection": self.selection}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(json_ready(self.to_dict()), indent=indent)

    def recommended_member(self) -> int | None:
        """Index of the recommended config's best replica (highest val metric)."""
        if self.recommended is None:
            return None
        ids = [m["member"] for m in self.members if m["config"] == self.recommended]
        return max(ids, key=lambda i: _nan_low(self.members[i]["val"].get(self.metric)))

    def head(self, member: int | None = None) -> tuple[HeadSpec, Any]:
        """(HeadSpec, unpadded variables) of a member (default: the recommended one), ready for save_head."""
        member = self.recommended_member() if member is None else member
        if member is None:
            raise ValueError("no member to return: the sweep recommended nothing")
        return MemberSpec.from_dict(self.members[member]["spec"]).head, self.variables[member]


def _nan_low(x: float | None) -> float:
    return -math.inf if x is None or not math.isfinite(x) else x



def leaderboard(members: list[dict[str, Any]], metric: str) -> tuple[list[dict[str, Any]], str | None]:
    """Aggregate replicas by config (mean/std/sem over seeds) and pick a recommended config: the smallest by
    parameter count whose mean val ``metric`` is within one SEM (the best row's) of the best mean. A sweep's own
    result replaces this rule by the bootstrap one (:func:`.verdicts.analyse`) whenever its replicas pair up."""
    rows: dict[str, dict[str, Any]] = {}
    for m in members:
        rows.setdefault(m["config"], {"members": []})["members"].append(m)
    board = []
    for config, row in rows.items():
        ms = row["members"]
        spec = dict(ms[0]["spec"])
        spec.pop("seed", None)
        names = sorted({k for x in ms for k in x["val"]})
        test = None
        if all(x["test"] is not None for x in ms):
            test = {k: _stats([x["test"].get(k, float("nan")) for x in ms]) for k in sorted(ms[0]["test"])}
        board.append({"config": config, "group": ms[0]["group"], "members": [x["member"] for x in ms],
                      "spec": spec, "params": ms[0]["params"], "n_seeds": len(ms),
                      "diverged": sum(bool(x["diverged"]) for x in ms),
                      "epochs_run": float(np.mean([x["epochs_run"] for x in ms])),
                      "val": {k: _stats([x["val"].get(k, float("nan")) for x in ms]) for k in names},
                      "test": test})
    board.sort(key=lambda r: (-_nan_low(r["val"].get(metric, {}).get("mean")), r["params"]))
    recommended = None
    if board and math.isfinite(_nan_low(board[0]["val"].get(metric, {}).get("mean"))):
        best = board[0]["val"][metric]
        floor = best["mean"] - (best["sem"] if math.isfinite(best["sem"]) else 0.0)
        ok = [r for r in board if _nan_low(r["val"][metric]["mean"]) >= floor]
        recommended = min(ok, key=lambda r: (r["params"], -r["val"][metric]["mean"]))["config"]
    return board, recommended



def group_record(plan: GroupPlan, epochs: int, map_batch: int | str, probe: Mapping[str, float] | None,
                 slots_per_epoch: Sequence[int], timings: Mapping[str, float]) -> dict[str, Any]:
    """The group's entry in ``SweepResult.groups`` (:class:`.schema.GroupRecord`)."""
    return {"group": plan.gid, "structure": plan.structure.to_dict(), "poolings": list(plan.sources),
            "optimizer": plan.optimizer, "batch_size": plan.batch, "members": list(plan.ids),
            "padded_members": plan.slots, "padded_hidden": list(plan.padded),
            "gated_depths": plan.depths if plan.gated else None,
            "mesh": {k: int(v) for k, v in plan.mesh.shape.items()}, "map_batch": map_batch,
            "map_batch_probe": probe, "steps_per_epoch": plan.steps_per_epoch, "epochs": epochs,
            "slots_per_epoch": list(slots_per_epoch), "timings": dict(timings)}
