"""Write a sweep's report: the printed leaderboard and answers, ``report.md``, ``report.html`` and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from jaxheads.report.backbones import backbone_points, backbone_table
from jaxheads.report.plots import (plot_backbones, plot_confusion, plot_learning_curves, plot_val_vs_params,
                                   recommended_confusion)
from jaxheads.report.render import render_html, render_markdown, sections
from jaxheads.report.tables import (
    NO_VERDICTS,
    fmt,
    has_verdicts,
    leaderboard_columns,
    leaderboard_rows,
    level_of,
    questions_table,
    recommendation_text,
    ridge_baseline,
    selection_lines,
    table_cells,
    timing_text,
)

__all__ = ["print_report", "write_documents", "write_report"]

PLOT_FILES = {"val_vs_params": "val_vs_params.png", "learning_curves": "learning_curves.png",
              "confusion_matrix": "confusion_matrix.png", "backbones": "backbones.png"}


def print_report(result_json: Mapping[str, Any], console: Any = None, top: int = 20) -> None:
    """Print the leaderboard (top rows; ★ = recommended), the ridge baseline and the head questions with rich."""
    from rich.console import Console
    from rich.table import Table as RichTable

    console = console or Console()
    metric = result_json["metric"]
    rows = leaderboard_rows(result_json)
    caption = (f"val {metric} with its {level_of(result_json):.0%} interval, and the difference to the best row; ★ recommended"
               if result_json.get("selection") else f"val/test: {metric}, mean ± std over seeds; ★ recommended")
    table = RichTable(title=f"jaxheads leaderboard — {result_json['task']}, ranked by val {metric}", caption=caption)
    for i, name in enumerate(leaderboard_columns(result_json)):
        table.add_column(name, justify="left" if i == 1 else "right", no_wrap=i != 1, min_width=24 if i == 1 else None)
    shown = rows[:top] + [r for r in rows[top:] if r["recommended"]]
    for r in shown:
        table.add_row(*table_cells(r), style="bold green" if r["recommended"] else None)
    ridge = ridge_baseline(result_json)
    if ridge is not None:  # with intervals the test column is "vs best": the probe's test figure is in the text
        second = "—" if result_json.get("selection") else fmt(ridge["test"])
        table.add_row("—", f"ridge probe, λ={ridge['l2']:g}", f"{ridge['params']:,}" if ridge["params"] else "—",
                      fmt(ridge["val"]), second, "—", "—", style="dim")
    console.print(table)
    if len(rows) > len(shown):
        console.print(f"({len(rows) - len(shown)} more rows in the report)")
    console.print(recommendation_text(result_json, rows))
    for line in selection_lines(result_json):
        console.print(line, style="bold red" if line.startswith("Warning") else "dim")
    columns, question_rows = questions_table(result_json)
    if not has_verdicts(result_json):
        console.print(f"The head questions: {NO_VERDICTS}.", style="dim")
    elif question_rows:
        rule = f"better only when the {level_of(result_json):.0%} interval excludes 0"
        qt = RichTable(title=f"The head questions (val {metric}; {rule})")
        for i, name in enumerate(columns):
            qt.add_column(name, justify="left" if i in (0, 4) else "right", no_wrap=i in (1, 2, 3))
        for q in question_rows:
            qt.add_row(*q, style="dim" if q[4] == "within noise" else None)
        console.print(qt)
    backbones = backbone_table(result_json)
    if backbones is not None:
        bt = RichTable(title="Which backbone: each one's best head (in the leaderboard) and its cost")
        shown = [j for j, name in enumerate(backbones[0]) if name != "best head"]  # the terminal's 120 columns
        for j in shown:
            bt.add_column(backbones[0][j], justify="left" if j in (0, 7) else "right", no_wrap=j != 7)
        for row in backbones[1]:
            bt.add_row(*(row[j] for j in shown), style="dim" if not row[-1].startswith("yes") else None)
        console.print(bt)
    console.print(timing_text(result_json), style="dim")


def _plots(result_json: Mapping[str, Any], out: Path) -> dict[str, Path]:
    plots: dict[str, Path] = {}
    if result_json.get("leaderboard"):
        plots["val_vs_params"] = plot_val_vs_params(result_json, out / PLOT_FILES["val_vs_params"])
        plots["learning_curves"] = plot_learning_curves(result_json, out / PLOT_FILES["learning_curves"])
    if backbone_points(result_json):
        plots["backbones"] = plot_backbones(result_json, out / PLOT_FILES["backbones"])
    confusion = recommended_confusion(result_json)
    if confusion is not None:
        cm, split = confusion
        plots["confusion_matrix"] = plot_confusion(cm, result_json.get("label_names"),
                                                   out / PLOT_FILES["confusion_matrix"],
                                                   _confusion_title(split, result_json))
    return plots


def _confusion_title(split: str, result_json: Mapping[str, Any]) -> str:
    seeds = int(result_json["selection"]["confusion_matrix"].get("seeds", 1))
    return f"Recommended head, {split} split" + (f" (summed over {seeds} seeds)" if seeds > 1 else "")


def write_documents(result_json: Mapping[str, Any], out_dir: str | Path,
                    plots: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """Write report.md and report.html (and head_questions.json) into ``out_dir``; ``plots`` default to the PNGs
    :func:`write_report` left there. Re-renders the documents after ``results.json`` changed without drawing the
    figures again."""
    out = Path(out_dir)
    if plots is None:
        plots = {k: out / name for k, name in PLOT_FILES.items() if (out / name).is_file()}
    blocks = sections(result_json, plots)
    paths = {"markdown": out / "report.md", "html": out / "report.html", "head_questions": out / "head_questions.json"}
    paths["markdown"].write_text(render_markdown(blocks), encoding="utf-8")
    paths["html"].write_text(render_html(blocks), encoding="utf-8")
    asked = result_json.get("questions") or [] if has_verdicts(result_json) else []  # the sweep's bootstrap verdicts
    questions = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in q.items()}
                 for q in asked]
    paths["head_questions"].write_text(json.dumps(questions, indent=2, default=str), encoding="utf-8")
    return paths


def write_report(result_json: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.html, head_questions.json and the plots into ``out_dir``; return their paths.

    Keys: ``markdown``, ``html``, ``head_questions``, ``val_vs_params``, ``learning_curves`` and, for a multiclass
    result whose recommended member holds a confusion matrix, ``confusion_matrix``. ``report.html`` embeds the
    plots; ``report.md`` links them.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(result_json, out)
    return write_documents(result_json, out, plots) | plots
