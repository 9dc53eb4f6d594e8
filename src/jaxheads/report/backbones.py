"""Which backbone: each compared backbone's best head beside what the backbone costs, and the Pareto front a
practitioner picks from (``jaxheads backbones compare``, :mod:`jaxheads.compare`, measures the costs into
``provenance.backbone_costs``).

A backbone is on the front when no other is at least as accurate, at least as fast and at most as large, and
strictly better on one of the three. Accuracy here is the point estimate of each backbone's best row; the
intervals beside it (and the "Backbone" question's paired verdicts) say how far that ranking can be trusted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from jaxheads.factors import varied_axes
from jaxheads.report.tables import fmt, leaderboard_rows, num, spec_summary


class BackbonePoint(NamedTuple):
    """One backbone's best row and its cost: ``score`` (with ``low``/``high``, NaN without an interval) of config
    ``config`` (summarised as ``summary``), and the backbone's params, GFLOPs per image and images/s."""

    name: str
    config: str
    summary: str
    score: float
    low: float
    high: float
    params: int
    gflops: float
    images_per_s: float


def dominated_by(points: Sequence[BackbonePoint]) -> dict[str, str | None]:
    """Each point's name -> the name of a point that dominates it (higher or equal score and images/s, fewer or
    equal params, one of them strictly), or None for the Pareto front."""
    out: dict[str, str | None] = {}
    for p in points:
        out[p.name] = next((q.name for q in points if q is not p and q.score >= p.score
                            and q.images_per_s >= p.images_per_s and q.params <= p.params
                            and (q.score > p.score or q.images_per_s > p.images_per_s or q.params < p.params)), None)
    return out


def backbone_points(result_json: Mapping[str, Any]) -> list[BackbonePoint]:
    """Every compared backbone's best leaderboard row with its measured cost, best first; [] when the result
    compares no backbones."""
    costs = (result_json.get("provenance") or {}).get("backbone_costs") or {}
    if not costs:
        return []
    axes = [a for a in varied_axes(result_json) if a != "backbone"]  # the table names the backbone itself
    points = []
    for row, raw in zip(leaderboard_rows(result_json), result_json.get("leaderboard", [])):
        name = raw["spec"].get("backbone")
        if name not in costs or any(p.name == name for p in points):
            continue
        ci = row.get("val_ci") or {}
        score = num(ci.get("estimate")) if ci else row["val"]["mean"]
        cost = costs[name]
        points.append(BackbonePoint(name, row["config"], spec_summary(raw["spec"], axes), score, num(ci.get("low")),
                                    num(ci.get("high")), int(cost["params"]), num(cost["flops_per_image"]) / 1e9,
                                    num(cost["images_per_s"])))
    return points


def backbone_table(result_json: Mapping[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of the Pareto table, best first; None when the result compares no backbones."""
    points = backbone_points(result_json)
    if not points:
        return None
    front = dominated_by(points)
    metric = result_json["metric"]
    header = ["backbone", "best head", f"val {metric}", "interval", "params", "GFLOP/image", "images/s here",
              "Pareto front"]
    rows = [[p.name, p.summary, fmt(p.score), f"[{fmt(p.low)}, {fmt(p.high)}]", f"{p.params / 1e6:.2f} M",
             f"{p.gflops:.3f}", f"{p.images_per_s:.1f}", "yes" if front[p.name] is None else
             f"no: {front[p.name]} dominates"] for p in points]
    return header, rows


BACKBONE_NOTE = ("Each backbone's best head on the same examples, folds, seeds and bootstrap draws; each val "
                 "figure is the best of its backbone's heads, so all are optimistic by the same selection. The "
                 "\"Backbone\" question above gives each difference with its paired interval; the test split scores "
                 "only the recommended model. Params and FLOPs are the backbone's (XLA's cost "
                 "analysis of the compiled forward at its input size); images/s is timed on this machine (batch 16, "
                 "best of 3).")
