"""The report's numbers as rows and sentences: the leaderboard, the ridge baseline, the head questions (the sweep's
bootstrap verdicts when present, else :func:`answer_head_questions` from seed noise), per-class recall and the
recommendation. Input is the plain JSON dict of ``results.json`` (see :mod:`jaxheads.report`); null numbers read
as NaN. The terminal and the documents (:mod:`jaxheads.report.render`) render these same rows.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np

from jaxheads.factors import QUESTION_AXES, QUESTION_AXES_NAMES, matching_keys, member_factors, varied_axes
from jaxheads.factors import format_level as _fmt_level
from jaxheads.factors import sort_levels as _sort_levels

NOISE_SE = 2.0
"""A difference counts as within noise when |diff| < NOISE_SE standard errors (≈ 95% two-sided)."""


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
    return " · ".join(parts)



# ================================================================================================= questions
def _compare(cells: dict[tuple, dict[Hashable, dict[int, float]]], a: Hashable, b: Hashable) -> dict[str, Any]:
    """Paired comparison of level ``b`` against ``a`` over matched contexts.

    ``cells[context][level][seed]`` is the mean validation metric of the members in that cell. For every context
    holding both levels, the seeds present at both give paired differences d_cs = v_b - v_a. The answer is

    * ``diff`` = mean over contexts of (mean over seeds of d_cs): every matched context weighs the same;
    * ``se`` = sqrt(s_p² · Σ_c 1/n_c) / C with s_p² the pooled within-context variance of d_cs over seeds (seed
      noise only, not how the effect varies between contexts), when some context has ≥ 2 seeds; with a single seed
      everywhere it falls back to the spread of the per-context differences, std_c(d_c) / sqrt(C)
      (``se_from = "contexts"``); NaN if neither exists.
    """
    diffs, mean_a, mean_b = [], [], []
    for by_level in cells.values():
        if a not in by_level or b not in by_level:
            continue
        seeds = sorted(set(by_level[a]) & set(by_level[b]))
        if not seeds:
            continue
        va = np.array([by_level[a][s] for s in seeds])
        vb = np.array([by_level[b][s] for s in seeds])
        diffs.append(vb - va)
        mean_a.append(va.mean())
        mean_b.append(vb.mean())
    n_contexts = len(diffs)
    out: dict[str, Any] = {"a": a, "b": b, "n_contexts": n_contexts, "n_pairs": int(sum(len(d) for d in diffs))}
    if not n_contexts:
        return out | {"mean_a": math.nan, "mean_b": math.nan, "diff": math.nan, "se": math.nan, "se_from": None}
    per_context = np.array([d.mean() for d in diffs])
    dof = sum(len(d) - 1 for d in diffs)
    if dof > 0:
        pooled_var = sum(float(((d - d.mean()) ** 2).sum()) for d in diffs) / dof
        se = math.sqrt(pooled_var * sum(1.0 / len(d) for d in diffs)) / n_contexts
        se_from = "seeds"
    elif n_contexts > 1:
        se = float(per_context.std(ddof=1) / math.sqrt(n_contexts))
        se_from = "contexts"
    else:
        se, se_from = math.nan, None
    return out | {"mean_a": float(np.mean(mean_a)), "mean_b": float(np.mean(mean_b)),
                  "diff": float(per_context.mean()), "se": se, "se_from": se_from}


def _cells(members: Sequence[Mapping[str, Any]], metric: str, axis: str, a: Hashable, b: Hashable,
           factors: Sequence[dict[str, Hashable]]) -> dict[tuple, dict[Hashable, dict[int, float]]]:
    """Group the members at level a or b of ``axis`` by context (every other applicable factor) and seed."""
    at = [i for i, f in enumerate(factors) if f[axis] in (a, b)]
    keys = matching_keys(factors, axis, a, b)
    sums: dict[tuple, dict[Hashable, dict[int, list[float]]]] = {}
    for i in at:
        value = num(members[i]["val"].get(metric))
        if not math.isfinite(value):
            continue
        context = tuple(factors[i][k] for k in keys)
        seed = int(members[i]["spec"].get("seed", 0))
        sums.setdefault(context, {}).setdefault(factors[i][axis], {}).setdefault(seed, []).append(value)
    return {c: {lvl: {s: float(np.mean(v)) for s, v in seeds.items()} for lvl, seeds in by_level.items()}
            for c, by_level in sums.items()}


def _verdict(q: Mapping[str, Any]) -> str:
    if q["n_contexts"] == 0:
        return "no matched pair"
    if q["within_noise"] is None:
        return "no noise estimate"
    if q["within_noise"]:
        return "within noise"
    return f"{_fmt_level(q['b'] if q['diff'] > 0 else q['a'])} better"


def answer_head_questions(result_json: Mapping[str, Any], noise_se: float = NOISE_SE) -> list[dict[str, Any]]:
    """Answer "is level B better than level A?" for every question axis the sweep varied, from its own numbers.

    For each axis (pooling, depth, width, dropout, norm, conv, then any varied training axis) and each pair of its
    levels (ascending; "none" first), members are matched when they differ only on that axis: same value of every
    other factor (factors that do not apply at one level, like the width of a linear head, are not matched on;
    members sharing a context and seed are averaged). See :func:`_compare` for ``diff`` and its standard error.

    Returns one dict per comparison::

        {"axis", "title" ("Pooling: avg vs flatten"), "metric", "a", "b", "mean_a", "mean_b",
         "diff" (mean_b - mean_a), "se", "se_from" ("seeds" | "contexts" | None), "z" (diff / se),
         "n_contexts", "n_pairs", "within_noise" (|diff| < noise_se·se; None without an se), "verdict"}

    Axes with one level, and level pairs that never occur in matched contexts, are left out.
    """
    members = [m for m in result_json.get("members", []) if m.get("val")]
    metric = result_json["metric"]
    if not members:
        return []
    factors = [member_factors(m["spec"]) for m in members]
    titles = dict(QUESTION_AXES)
    answers = []
    for axis in varied_axes({"members": members}):
        levels = _sort_levels({f[axis] for f in factors if f[axis] is not None})
        for a, b in itertools.combinations(levels, 2):
            q = _compare(_cells(members, metric, axis, a, b, factors), a, b)
            if q["n_contexts"] == 0:
                continue
            se_ok = math.isfinite(q["se"]) and math.isfinite(q["diff"])
            q["z"] = q["diff"] / q["se"] if se_ok and q["se"] > 0 else (math.inf if se_ok and q["diff"] else math.nan)
            q["within_noise"] = bool(abs(q["diff"]) < noise_se * q["se"]) if se_ok else None
            q.update(axis=axis, metric=metric, title=f"{titles[axis]}: {_fmt_level(a)} vs {_fmt_level(b)}")
            q["verdict"] = _verdict(q)
            answers.append(q)
    return answers


def _question_line(q: Mapping[str, Any]) -> tuple[str, str, str, str, str, str]:
    """(question, mean A, mean B, diff ± se, verdict, matched) as text."""
    se = f" ± {q['se']:.3f}" if math.isfinite(q["se"]) else ""
    return (q["title"], fmt(q["mean_a"]), fmt(q["mean_b"]), f"{q['diff']:+.3f}{se}", q["verdict"],
            f"{q['n_pairs']}/{q['n_contexts']}")


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


def leaderboard_columns(result_json: Mapping[str, Any]) -> tuple[str, ...]:
    if result_json.get("selection"):
        return ("rank", "head", "params", "val [95% CI]", "vs best [95% CI]", "epochs", "members")
    return LEADERBOARD_COLUMNS


LEADERBOARD_COLUMNS = ("rank", "head", "params", "val", "test", "epochs", "seeds")
QUESTION_COLUMNS = ("question", "mean A", "mean B", "B − A ± SE", "verdict", "pairs/ctx")
INTERVAL_QUESTION_COLUMNS = ("question", "A", "B", "B − A [95% CI]", "verdict", "P(B > A)")


def questions_table(result_json: Mapping[str, Any]) -> tuple[tuple[str, ...], list[list[str]]]:
    """The head questions as (columns, rows): the sweep's bootstrap verdicts when present, else seed-SE ones."""
    if result_json.get("questions"):
        return INTERVAL_QUESTION_COLUMNS, [
            [q["title"], fmt(q["mean_a"]), fmt(q["mean_b"]), ci_text(q, signed=True), q["verdict"],
             f"{num(q['p_b_better']):.2f}"]
            for q in result_json["questions"]]
    return QUESTION_COLUMNS, [list(_question_line(q)) for q in answer_head_questions(result_json)]


RARE_RECALL = 0.2


def selection_lines(result_json: Mapping[str, Any]) -> list[str]:
    """How the intervals were computed, and the warnings about the recommended head."""
    sel = result_json.get("selection") or {}
    lines = [sel["method"]] if sel.get("method") else []
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
        return (f"Recommended head (the smallest whose 95% interval against the best covers 0): {rec['summary']} — "
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
