"""Render a sweep's results: terminal leaderboard, Markdown/HTML report, plots, and the head questions answered.

Input is the plain JSON dict of ``SweepResult.to_json()`` (schema ``jaxheads.sweep_result/1``, documented in
``jaxheads/sweep/schema.py``), so a report can be rebuilt from ``results.json`` long after the sweep ran. Non-finite
numbers arrive as ``null`` there; every reader below maps them back to NaN.

The head questions ("avg vs flatten", "1 vs 2 vs 3 dense layers", "width 256 vs 512 vs 1024", "dropout 0 vs 0.5",
"batch norm or not", "1x1 conv first or not", and any training axis the sweep varied) are answered by
:func:`answer_head_questions` from matched comparisons, see its docstring.

Optional fields read when present (not in schema v1): a member's ``"confusion_matrix": {"val": [[int]],
"test": [[int]]}`` (rows true, columns predicted), drawn for the recommended head of a multiclass sweep.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from pathlib import Path
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np

from jaxheads.factors import QUESTION_AXES, QUESTION_AXES_NAMES, member_factors, varied_axes
from jaxheads.factors import conv_text as _conv_text  # noqa: F401
from jaxheads.factors import format_level as _fmt_level
from jaxheads.factors import sort_levels as _sort_levels

NOISE_SE = 2.0
"""A difference counts as within noise when |diff| < NOISE_SE standard errors (≈ 95% two-sided)."""



# ================================================================================================= helpers
def _num(x: Any) -> float:
    """JSON number or null → float (null → NaN)."""
    return float("nan") if x is None else float(x)


def _fmt(x: Any, digits: int = 3) -> str:
    v = _num(x)
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
    # A factor that does not apply at one of the two levels (None there) cannot be matched on: drop it.
    keys = [k for k in factors[0] if k != axis and not any(
        all(factors[i][k] is None for i in at if factors[i][axis] == level) for level in (a, b))]
    sums: dict[tuple, dict[Hashable, dict[int, list[float]]]] = {}
    for i in at:
        value = _num(members[i]["val"].get(metric))
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
    return (q["title"], _fmt(q["mean_a"]), _fmt(q["mean_b"]), f"{q['diff']:+.3f}{se}", q["verdict"],
            f"{q['n_pairs']}/{q['n_contexts']}")


# ================================================================================================= leaderboard
def _stat(row_part: Mapping[str, Any] | None, metric: str) -> dict[str, float]:
    s = (row_part or {}).get(metric) or {}
    return {k: _num(s.get(k)) for k in ("mean", "std", "sem")}


def leaderboard_rows(result_json: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The leaderboard as display rows (best first): rank, summary, params, val/test mean ± std, epochs, flags."""
    metric = result_json["metric"]
    axes = varied_axes(result_json)
    rows = []
    for rank, row in enumerate(result_json.get("leaderboard", []), start=1):
        rows.append({
            "rank": rank, "config": row["config"], "summary": spec_summary(row["spec"], axes),
            "params": int(row["params"]), "n_seeds": int(row.get("n_seeds", 1)), "val": _stat(row["val"], metric),
            "test": _stat(row.get("test"), metric), "epochs": _num(row.get("epochs_run")),
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
    return {"l2": _num(best["l2"]), "val": _num(best["val"].get(metric)),
            "test": _num((best.get("test") or {}).get(metric)), "params": params}


def _pm(stat: Mapping[str, float], n: int | None = None) -> str:
    if not math.isfinite(stat["mean"]):
        return "—"
    text = f"{stat['mean']:.3f}"
    if math.isfinite(stat.get("std", math.nan)) and (n is None or n > 1):
        text += f" ± {stat['std']:.3f}"
    return text


def _ci(i: Mapping[str, Any] | None, signed: bool = False) -> str:
    """``0.790 [0.771, 0.809]`` (``signed``: the estimate as a difference, e.g. ``-0.004 [-0.021, +0.012]``)."""
    if not i:
        return "—"
    est = i.get("estimate", i.get("diff"))
    fmt = "+.3f" if signed else ".3f"
    return f"{_num(est):{fmt}} [{_num(i['low']):{fmt}}, {_num(i['high']):{fmt}}]"


def _table_cells(r: Mapping[str, Any]) -> list[str]:
    mark = "★" if r["recommended"] else ""
    div = f" ({r['diverged']} diverged)" if r["diverged"] else ""
    if r.get("val_ci"):  # intervals from the bootstrap: test is reported once, for the recommended head
        return [f"{r['rank']}{mark}", r["summary"] + div, f"{r['params']:,}", _ci(r["val_ci"]),
                _ci(r["vs_best"], signed=True), f"{r['epochs']:.1f}", str(r["n_seeds"])]
    return [f"{r['rank']}{mark}", r["summary"] + div, f"{r['params']:,}", _pm(r["val"], r["n_seeds"]),
            _pm(r["test"], r["n_seeds"]), f"{r['epochs']:.1f}", str(r["n_seeds"])]


def _columns(result_json: Mapping[str, Any]) -> tuple[str, ...]:
    if result_json.get("selection"):
        return ("rank", "head", "params", "val [95% CI]", "vs best [95% CI]", "epochs", "members")
    return LEADERBOARD_COLUMNS


LEADERBOARD_COLUMNS = ("rank", "head", "params", "val", "test", "epochs", "seeds")
QUESTION_COLUMNS = ("question", "mean A", "mean B", "B − A ± SE", "verdict", "pairs/ctx")
INTERVAL_QUESTION_COLUMNS = ("question", "A", "B", "B − A [95% CI]", "verdict", "P(B > A)")


def _questions_table(result_json: Mapping[str, Any]) -> tuple[tuple[str, ...], list[list[str]]]:
    """The head questions as (columns, rows): the sweep's bootstrap verdicts when present, else seed-SE ones."""
    if result_json.get("questions"):
        return INTERVAL_QUESTION_COLUMNS, [
            [q["title"], _fmt(q["mean_a"]), _fmt(q["mean_b"]), _ci(q, signed=True), q["verdict"],
             f"{_num(q['p_b_better']):.2f}"]
            for q in result_json["questions"]]
    return QUESTION_COLUMNS, [list(_question_line(q)) for q in answer_head_questions(result_json)]


def _selection_lines(result_json: Mapping[str, Any]) -> list[str]:
    """How the intervals were computed, and the warnings about the recommended head."""
    sel = result_json.get("selection") or {}
    lines = [sel["method"]] if sel.get("method") else []
    for split in ("val", "test"):
        never = (sel.get(f"per_class_{split}") or {}).get("never_predicted") or []
        if never:
            lines.append(f"Warning: on {split} the recommended head never predicts {', '.join(map(str, never))}.")
    return lines


def _per_class_table(result_json: Mapping[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    sel = result_json.get("selection") or {}
    val, test = sel.get("per_class_val"), sel.get("per_class_test")
    if not val:
        return None
    names = list(val["recall"])
    return (["class", "val recall", "test recall"],
            [[n, _fmt(val["recall"][n]), _fmt((test or {}).get("recall", {}).get(n))] for n in names])


def print_report(result_json: Mapping[str, Any], console: Any = None, top: int = 20) -> None:
    """Print the leaderboard (top rows; ★ = recommended), the ridge baseline and the head questions with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    metric = result_json["metric"]
    rows = leaderboard_rows(result_json)
    caption = (f"val {metric} with its 95% interval, and the difference to the best row; ★ recommended"
               if result_json.get("selection") else f"val/test: {metric}, mean ± std over seeds; ★ recommended")
    table = Table(title=f"jaxheads leaderboard — {result_json['task']}, ranked by val {metric}", caption=caption)
    for i, name in enumerate(_columns(result_json)):
        table.add_column(name, justify="left" if i == 1 else "right", no_wrap=i != 1)
    shown = rows[:top] + [r for r in rows[top:] if r["recommended"]]
    for r in shown:
        table.add_row(*_table_cells(r), style="bold green" if r["recommended"] else None)
    ridge = ridge_baseline(result_json)
    if ridge is not None:
        table.add_row("—", f"ridge probe, λ={ridge['l2']:g}",
                      f"{ridge['params']:,}" if ridge["params"] else "—", _fmt(ridge["val"]), _fmt(ridge["test"]),
                      "—", "—", style="dim")
    console.print(table)
    if len(rows) > len(shown):
        console.print(f"({len(rows) - len(shown)} more rows in the report)")
    console.print(_recommendation_text(result_json, rows))
    for line in _selection_lines(result_json):
        console.print(line, style="bold red" if line.startswith("Warning") else "dim")
    columns, question_rows = _questions_table(result_json)
    if question_rows:
        rule = ("better only when the 95% interval excludes 0" if result_json.get("questions")
                else f"within noise = |B − A| < {NOISE_SE:g} SE")
        qt = Table(title=f"The head questions (val {metric}; {rule})")
        for i, name in enumerate(columns):
            qt.add_column(name, justify="left" if i in (0, 4) else "right", no_wrap=i in (1, 2, 3))
        for q in question_rows:
            qt.add_row(*q, style="dim" if q[4] == "within noise" else None)
        console.print(qt)


def _recommendation_text(result_json: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    rec = next((r for r in rows if r["recommended"]), None)
    if rec is None:
        return "No head recommended (no finite validation metric)."
    metric = result_json["metric"]
    sel = result_json.get("selection") or {}
    if sel:
        test = (f"test {_ci(sel['test'])} (scored once: the honest estimate)" if sel.get("test")
                else "no test split")
        return (f"Recommended head (the smallest whose 95% interval against the best covers 0): {rec['summary']} — "
                f"{rec['params']:,} params, val {_ci(sel['val'])} (optimistic: chosen on val), {test} "
                f"(rank {rec['rank']}, config {rec['config']}).")
    return (f"Recommended head (smallest within one SEM of the best val {metric}): {rec['summary']} — "
            f"{rec['params']:,} params, val {_pm(rec['val'], rec['n_seeds'])}, test {_pm(rec['test'], rec['n_seeds'])}"
            f" (rank {rec['rank']}, config {rec['config']}).")


# ================================================================================================= plots
def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    """A pyplot-free figure (Agg canvas): no global backend switch, no GUI, safe in threads and tests."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_val_vs_params(result_json: Mapping[str, Any], path: Path) -> Path:
    """Validation metric (mean ± SEM over seeds) against parameter count, log x; recommended head starred,
    ridge baseline as a dashed line."""
    metric = result_json["metric"]
    rows = leaderboard_rows(result_json)
    fig = _figure()
    ax = fig.add_subplot()
    depths = sorted({len(r["spec"]["head"].get("hidden", [])) for r in result_json.get("leaderboard", [])})
    for depth in depths:
        sel = [r for r, raw in zip(rows, result_json["leaderboard"]) if len(raw["spec"]["head"].get("hidden", [])) == depth]
        ax.errorbar([r["params"] for r in sel], [r["val"]["mean"] for r in sel],
                    yerr=[np.nan_to_num(r["val"]["sem"]) for r in sel], fmt="o", ms=4, capsize=2, alpha=0.8,
                    label=f"{depth} dense layer{'s' if depth != 1 else ''}" if depth else "linear")
    rec = next((r for r in rows if r["recommended"]), None)
    if rec is not None:
        ax.plot([rec["params"]], [rec["val"]["mean"]], marker="*", ms=16, color="gold", mec="black",
                ls="none", label="recommended", zorder=5)
    ridge = ridge_baseline(result_json)
    if ridge is not None and math.isfinite(ridge["val"]):
        ax.axhline(ridge["val"], ls="--", color="gray", label=f"ridge probe (λ={ridge['l2']:g})")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"val {metric} (mean ± SEM)")
    ax.set_title("Validation metric vs head size")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


def plot_learning_curves(result_json: Mapping[str, Any], path: Path, top: int = 6) -> Path:
    """Train loss and val metric per epoch of the recommended config's replicas (bold) and the ``top`` best
    configs (thin), so under- and over-fitting and early stopping are visible."""
    metric = result_json["metric"]
    board = result_json.get("leaderboard", [])
    rec = result_json.get("recommended")
    configs = [r["config"] for r in board[:top]]
    if rec is not None and rec not in configs:
        configs.append(rec)
    by_config = {r["config"]: r for r in board}
    members = {m["member"]: m for m in result_json.get("members", [])}
    axes = varied_axes(result_json)
    fig = _figure(10.0, 4.2)
    ax_loss, ax_val = fig.subplots(1, 2)
    colors = _colors(len(configs))
    for color, config in zip(colors, configs):
        row = by_config[config]
        bold = config == rec
        for j, mid in enumerate(row["members"]):
            curves = members[mid].get("curves") or {}
            label = (("★ " if bold else "") + spec_summary(row["spec"], axes)) if j == 0 else None
            kw = {"color": color, "lw": 2.4 if bold else 1.0, "alpha": 1.0 if bold else 0.7, "label": label}
            loss = [_num(v) for v in curves.get("train_loss", [])]
            val = [_num(v) for v in (curves.get("val") or {}).get(metric, [])]
            ax_loss.plot(range(1, len(loss) + 1), loss, **kw)
            ax_val.plot(range(1, len(val) + 1), val, **kw)
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="Training loss")
    ax_val.set(xlabel="epoch", ylabel=f"val {metric}", title="Validation metric")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    ax_val.legend(fontsize="x-small", loc="lower right")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_val):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(path, dpi=110)
    return path


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def recommended_confusion(result_json: Mapping[str, Any]) -> tuple[np.ndarray, str] | None:
    """(confusion matrix, split name) of the recommended config's best replica, when the result holds one."""
    if result_json.get("task") != "multiclass" or result_json.get("recommended") is None:
        return None
    metric = result_json["metric"]
    cands = [m for m in result_json.get("members", []) if m["config"] == result_json["recommended"]]
    cands.sort(key=lambda m: -np.nan_to_num(_num(m["val"].get(metric)), nan=-np.inf))
    for m in cands:
        cm = m.get("confusion_matrix") or {}
        for split in ("test", "val"):
            if cm.get(split) is not None:
                return np.asarray(cm[split], np.int64), split
    return None


def plot_confusion(cm: np.ndarray, labels: Sequence[str] | None, path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (colour) with the raw counts written in each cell."""
    k = cm.shape[0]
    labels = list(labels) if labels else [str(i) for i in range(k)]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(12.0, 2.5 + 0.45 * k)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    if k <= 30:
        for i, j in itertools.product(range(k), range(k)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.savefig(path, dpi=110)
    return path


# ================================================================================================= documents
def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _sections(result_json: Mapping[str, Any], plots: Mapping[str, Path]) -> list[tuple[str, Any]]:
    """The report's content once, as (kind, payload) blocks that both the Markdown and the HTML writer render."""
    metric = result_json["metric"]
    rows = leaderboard_rows(result_json)
    members = result_json.get("members", [])
    timings = result_json.get("timings") or {}
    blocks: list[tuple[str, Any]] = [
        ("h1", "jaxheads sweep report"),
        ("p", f"Task: {result_json['task']}, {result_json['num_classes']} classes; {len(members)} members in "
              f"{len(rows)} configs; ranked by validation {metric}. Total time {_fmt(timings.get('total_s'), 1)} s."),
        ("p", _recommendation_text(result_json, rows)),
        ("h2", "Leaderboard"),
        ("table", ([f"{c} {metric}" if c in ("val", "test") else c for c in _columns(result_json)],
                   [_table_cells(r) for r in rows])),
        ("p", "★ = recommended. " + (" ".join(_selection_lines(result_json)) if result_json.get("selection")
                                     else "Values are mean ± standard deviation over seeds.")),
    ]
    per_class = _per_class_table(result_json)
    if per_class is not None:
        blocks += [("h2", "Per-class recall of the recommended head"), ("table", per_class)]
    ridge = ridge_baseline(result_json)
    if ridge is not None:
        blocks.append(("p", f"Closed-form baseline: ridge linear probe on pooled features, λ={ridge['l2']:g} "
                            f"chosen on val: val {metric} {_fmt(ridge['val'])}, test {_fmt(ridge['test'])}."))
    columns, question_rows = _questions_table(result_json)
    blocks.append(("h2", "The head questions"))
    if question_rows:
        blocks.append(("p", f"Difference B − A in validation {metric} between configs that differ only on that "
                            f"axis; " + ("a side is called better only when the 95% interval of B − A excludes 0."
                                         if result_json.get("questions") else
                                         f"± its standard error from the per-seed values; within noise when "
                                         f"|B − A| < {NOISE_SE:g} SE.")))
        blocks.append(("table", (list(columns), question_rows)))
    else:
        blocks.append(("p", "The sweep varied none of the head axes, so there is nothing to compare."))
    if plots:
        blocks.append(("h2", "Plots"))
        for name, path in plots.items():
            blocks.append(("img", (name.replace("_", " "), path.name)))
    return blocks


def render_markdown(blocks: Sequence[tuple[str, Any]]) -> str:
    out = []
    for kind, payload in blocks:
        if kind == "h1":
            out.append(f"# {payload}")
        elif kind == "h2":
            out.append(f"## {payload}")
        elif kind == "p":
            out.append(str(payload))
        elif kind == "table":
            out.append(_markdown_table(*payload))
        elif kind == "img":
            out.append(f"![{payload[0]}]({payload[1]})")
    return "\n\n".join(out) + "\n"


def render_html(blocks: Sequence[tuple[str, Any]]) -> str:
    e = html.escape
    body = []
    for kind, payload in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{e(str(payload))}</{kind}>")
        elif kind == "table":
            header, rows = payload
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            cells = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif kind == "img":
            body.append(f'<figure><img src="{e(payload[1])}" alt="{e(payload[0])}">'
                        f"<figcaption>{e(payload[0])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}td:nth-child(2),th:nth-child(2){text-align:left}img{max-width:100%}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>jaxheads report</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(result_json: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.html, head_questions.json and the plots into ``out_dir``; return their paths.

    Keys: ``markdown``, ``html``, ``head_questions``, ``val_vs_params``, ``learning_curves`` and, for a multiclass
    result whose recommended member holds a confusion matrix, ``confusion_matrix``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    if result_json.get("leaderboard"):
        plots["val_vs_params"] = plot_val_vs_params(result_json, out / "val_vs_params.png")
        plots["learning_curves"] = plot_learning_curves(result_json, out / "learning_curves.png")
    confusion = recommended_confusion(result_json)
    if confusion is not None:
        cm, split = confusion
        plots["confusion_matrix"] = plot_confusion(cm, result_json.get("label_names"), out / "confusion_matrix.png",
                                                   f"Recommended head, {split} split")
    blocks = _sections(result_json, plots)
    paths = {"markdown": out / "report.md", "html": out / "report.html", "head_questions": out / "head_questions.json"}
    paths["markdown"].write_text(render_markdown(blocks), encoding="utf-8")
    paths["html"].write_text(render_html(blocks), encoding="utf-8")
    questions = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in q.items()}
                 for q in answer_head_questions(result_json)]
    paths["head_questions"].write_text(json.dumps(questions, indent=2, default=str), encoding="utf-8")
    return paths | plots
