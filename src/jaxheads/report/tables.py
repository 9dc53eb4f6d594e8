"""The report's numbers as rows and sentences: the leaderboard, the ridge baseline, the head questions (the sweep's
bootstrap verdicts, :mod:`jaxheads.sweep.verdicts`; one without them gets a note, not a second method), per-class
recall and the recommendation. Input is the plain JSON dict of ``results.json`` (see :mod:`jaxheads.report`); null numbers read
as NaN. The terminal and the documents (:mod:`jaxheads.report.render`) render these same rows.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence


from jaxheads.factors import QUESTION_AXES_NAMES, member_factors, varied_axes
from jaxheads.factors import format_level as _fmt_level

from jaxheads import stats

NO_VERDICTS = "no per-example predictions: the questions need a rerun"
"""The note for a results.json without the sweep's bootstrap verdicts (written before them, or by a sweep whose
configs have unequal seeds, which the paired draws cannot hold)."""


# ================================================================================================= helpers
def num(x: Any) -> float:
    """JSON number or null → float (null → NaN)."""
    return float("nan") if x is None else float(x)


def fmt(x: Any, digits: int = 3) -> str:
    v = num(x)
    return "—" if not math.isfinite(v) else f"{v:.{digits}f}"


def spec_summary(spec: Mapping[str, Any], axes: Iterable[str] | None = None) -> str:
    """A one-line description of a head, e.g. ``avg · 512-512 relu · drop 0.5 · norm batch``.

    ``axes``: the axes to show (default: all); the leaderboard passes only those the sweep varied, so the line
    says what distinguishes a row. Pooling and the hidden widths are always shown.
    """
    f = member_factors(spec if "head" in spec else {"head": spec})
    show = set(QUESTION_AXES_NAMES if axes is None else axes)
    head = (spec["head"] if "head" in spec else spec)
    parts = ["pooled input" if f["pooling"] == "none" else str(f["pooling"])]
    if f["conv"] != "none":
        parts.append(f"conv {f['conv']}")
    hidden = head.get("hidden", [])
    parts.append("linear" if not hidden else "-".join(str(w) for w in hidden))
    if "activation" in show and f["activation"] is not None and hidden:
        parts[-1] += f" {f['activation']}"
    if "dropout" in show and f["dropout"] is not None:
        parts.append(f"drop {f['dropout']:g}")
    if "norm" in show and f["norm"] is not None:
        parts.append(f"norm {f['norm']}")
    for key, label in (("learning_rate", "lr"), ("weight_decay", "wd"), ("optimizer", ""), ("batch_size", "bs")):
        if key in show and f[key] is not None:
            parts.append(f"{label} {_fmt_level(f[key])}".strip())
    if "input_size" in show and f["input_size"] is not None:
        parts.append(f"{f['input_size']} px")
    if "views" in show and f["views"] is not None:
        parts.append(f"{f['views']} view{'s' if f['views'] != 1 else ''}")
    if "representation" in show and f["representation"] is not None:
        parts.append(f"taps {f['representation']}" if f["representation"] != "last" else "last layer")
    if "backbone" in show and f["backbone"] is not None:
        parts.append(str(f["backbone"]))
    return " · ".join(parts)



# ================================================================================================= leaderboard
def _stat(row_part: Mapping[str, Any] | None, metric: str) -> dict[str, float]:
    s = (row_part or {}).get(metric) or {}
    return {k: num(s.get(k)) for k in ("mean", "std", "sem")}


def leaderboard_rows(result_json: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The leaderboard as display rows (best first): rank, summary, params, val/test mean ± std, epochs, flags."""
    metric = result_json["metric"]
    axes = varied_axes(result_json)
    rows = []
    for rank, row in enumerate(result_json.get("leaderboard", []), start=1):
        rows.append({
            "rank": rank, "config": row["config"], "summary": spec_summary(row["spec"], axes),
            "params": int(row["params"]), "n_seeds": int(row.get("n_seeds", 1)), "val": _stat(row["val"], metric),
            "test": _stat(row.get("test"), metric), "epochs": num(row.get("epochs_run")),
            "diverged": int(row.get("diverged", 0)), "recommended": row["config"] == result_json.get("recommended"),
            "val_ci": row.get("val_interval"), "vs_best": row.get("vs_best"),
        })
    # Configs that differ only where a factor does not apply (a linear head crossed with two dropout rates)
    # read the same: tell them apart by config id.
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["summary"]] = counts.get(r["summary"], 0) + 1
    for r in rows:
        if counts[r["summary"]] > 1:
            r["summary"] += f" [{r['config'][:6]}]"
    return rows


def ridge_baseline(result_json: Mapping[str, Any]) -> dict[str, Any] | None:
    """The chosen row of the ridge-probe baseline (``best: true``) with its parameter count, or None."""
    rows = result_json.get("ridge") or []
    best = next((r for r in rows if r.get("best")), None)
    if best is None:
        return None
    metric = result_json["metric"]
    pooled = (result_json.get("feature_shapes") or {}).get("pooled")
    k = int(result_json["num_classes"])
    params = best.get("params") or (int(pooled[-1]) * k + k if pooled else None)
    return {"l2": num(best["l2"]), "val": num(best["val"].get(metric)),
            "test": num((best.get("test") or {}).get(metric)), "params": params}


def pm_text(stat: Mapping[str, float], n: int | None = None) -> str:
    if not math.isfinite(stat["mean"]):
        return "—"
    text = f"{stat['mean']:.3f}"
    if math.isfinite(stat.get("std", math.nan)) and (n is None or n > 1):
        text += f" ± {stat['std']:.3f}"
    return text


def ci_text(i: Mapping[str, Any] | None, signed: bool = False) -> str:
    """``0.790 [0.771, 0.809]`` (``signed``: the estimate as a difference, e.g. ``-0.004 [-0.021, +0.012]``)."""
    if not i:
        return "—"
    est = i.get("estimate", i.get("diff"))
    fmt = "+.3f" if signed else ".3f"
    return f"{num(est):{fmt}} [{num(i['low']):{fmt}}, {num(i['high']):{fmt}}]"


def table_cells(r: Mapping[str, Any]) -> list[str]:
    mark = "★" if r["recommended"] else ""
    div = f" ({r['diverged']} diverged)" if r["diverged"] else ""
    if r.get("val_ci"):  # intervals from the bootstrap: test is reported once, for the recommended head
        return [f"{r['rank']}{mark}", r["summary"] + div, f"{r['params']:,}", ci_text(r["val_ci"]),
                ci_text(r["vs_best"], signed=True), f"{r['epochs']:.1f}", str(r["n_seeds"])]
    return [f"{r['rank']}{mark}", r["summary"] + div, f"{r['params']:,}", pm_text(r["val"], r["n_seeds"]),
            pm_text(r["test"], r["n_seeds"]), f"{r['epochs']:.1f}", str(r["n_seeds"])]


def level_of(result_json: Mapping[str, Any]) -> float:
    """The level of the result's intervals (its selection record's), else the package's :data:`stats.LEVEL`."""
    return float((result_json.get("selection") or {}).get("level") or stats.LEVEL)


def ci_title(result_json: Mapping[str, Any]) -> str:
    """``95% CI`` at the result's level."""
    return f"{level_of(result_json):.0%} CI"


def leaderboard_columns(result_json: Mapping[str, Any]) -> tuple[str, ...]:
    if result_json.get("selection"):
        ci = ci_title(result_json)
        return ("rank", "head", "params", f"val [{ci}]", f"vs best [{ci}]", "epochs", "members")
    return LEADERBOARD_COLUMNS


LEADERBOARD_COLUMNS = ("rank", "head", "params", "val", "test", "epochs", "seeds")


def question_columns(result_json: Mapping[str, Any]) -> tuple[str, ...]:
    return ("question", "A", "B", f"B − A [{ci_title(result_json)}]", "verdict", "P(B > A)")


def has_verdicts(result_json: Mapping[str, Any]) -> bool:
    """Whether the sweep's bootstrap answered the questions (a selection record is written with them)."""
    return bool(result_json.get("selection")) and result_json.get("questions") is not None


def questions_table(result_json: Mapping[str, Any]) -> tuple[tuple[str, ...], list[list[str]]]:
    """The head questions as (columns, rows), from the sweep's bootstrap verdicts (no rows without them)."""
    asked = result_json.get("questions") or [] if has_verdicts(result_json) else []
    return question_columns(result_json), [
        [q["title"], fmt(q["mean_a"]), fmt(q["mean_b"]), ci_text(q, signed=True), q["verdict"],
         f"{num(q['p_b_better']):.2f}"]
        for q in asked]


RARE_RECALL = 0.2


def selection_lines(result_json: Mapping[str, Any]) -> list[str]:
    """How the intervals were computed, and the warnings about the recommended head."""
    sel = result_json.get("selection") or {}
    lines = [sel[k] for k in ("method", "best_rule") if sel.get(k)]
    for split in ("val", "test"):
        per_class = sel.get(f"per_class_{split}") or {}
        never = per_class.get("never_predicted") or []
        if never:
            lines.append(f"Warning: on {split} the recommended head never predicts {', '.join(map(str, never))}.")
        rare = {k: v for k, v in (per_class.get("recall") or {}).items() if k not in never and v < RARE_RECALL}
        if rare:  # accuracy on imbalanced classes hides a class the head almost never gets right
            text = ", ".join(f"{k} {v:.0%}" for k, v in rare.items())
            lines.append(f"Warning: on {split} the recommended head recalls under {RARE_RECALL:.0%} of: {text}.")
    return lines


def per_class_table(result_json: Mapping[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    sel = result_json.get("selection") or {}
    val, test = sel.get("per_class_val"), sel.get("per_class_test")
    if not val:
        return None
    names = list(val["recall"])
    return (["class", "val recall", "test recall"],
            [[n, fmt(val["recall"][n]), fmt((test or {}).get("recall", {}).get(n))] for n in names])


def recommendation_text(result_json: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    rec = next((r for r in rows if r["recommended"]), None)
    if rec is None:
        return "No head recommended (no finite validation metric)."
    metric = result_json["metric"]
    sel = result_json.get("selection") or {}
    if sel:
        test = (f"test {ci_text(sel['test'])} (scored once: the honest estimate)" if sel.get("test")
                else "no test split")
        against = ("the best, re-chosen in every draw, reaches 0: it could be the best" if sel.get("best_rule")
                   else "the best covers 0")
        return (f"Recommended head (the smallest whose {level_of(result_json):.0%} interval against {against}): "
                f"{rec['summary']} — "
                f"{rec['params']:,} params, val {ci_text(sel['val'])} (optimistic: chosen on val), {test} "
                f"(rank {rec['rank']}, config {rec['config']}).")
    return (f"Recommended head (smallest within one SEM of the best val {metric}): {rec['summary']} — "
            f"{rec['params']:,} params, val {pm_text(rec['val'], rec['n_seeds'])}, "
            f"test {pm_text(rec['test'], rec['n_seeds'])} (rank {rec['rank']}, config {rec['config']}).")


def timing_text(result_json: Mapping[str, Any]) -> str:
    """How long the sweep took and, when a dry run's estimate was recorded (``estimate``), what it expected."""
    total = num((result_json.get("timings") or {}).get("total_s"))
    text = f"The sweep took {fmt(total, 1)} s"
    estimate = result_json.get("estimate") or {}
    if estimate.get("total_s") is not None:
        text += (f"; its dry run estimated about {fmt(estimate['total_s'], 0)} s "
                 f"({fmt(estimate.get('compile_s'), 0)} s compiling, {fmt(estimate.get('train_s'), 0)} s training)")
    return text + "."
