"""The report as documents: its content once, as blocks (:func:`sections`), rendered to Markdown and to one
self-contained HTML page whose figures are embedded (base64 ``data:`` URIs), so ``report.html`` opens from
anywhere, mailed or moved without its folder.

A block is ``(kind, payload)``: ``h1``/``h2``/``p``/``note``/``warning``/``recommend`` take text; ``table`` takes a
:class:`Table`; ``img`` takes ``(caption, path)``.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from jaxheads.report.backbones import BACKBONE_NOTE, backbone_table
from jaxheads.report.depth import cut_cost_table
from jaxheads.report.tables import (NO_VERDICTS, fmt, has_verdicts, leaderboard_columns, leaderboard_rows,
                                    level_of, per_class_table, questions_table, recommendation_text,
                                    ridge_baseline, selection_lines, table_cells, timing_text)


class Table(NamedTuple):
    """A table block: ``left`` columns are left-aligned, ``wrap`` (one column, or None) may wrap its text, and
    ``marked`` rows are highlighted (the recommended head)."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    left: frozenset[int] = frozenset({0})
    wrap: int | None = 0
    marked: frozenset[int] = frozenset()


def _leaderboard(result_json: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Table:
    metric = result_json["metric"]
    header = [f"{c} {metric}" if c in ("val", "test") else c for c in leaderboard_columns(result_json)]
    marked = frozenset(i for i, r in enumerate(rows) if r["recommended"])
    return Table(header, [table_cells(r) for r in rows], left=frozenset({1}), wrap=1, marked=marked)


def _questions(result_json: Mapping[str, Any], metric: str) -> list[tuple[str, Any]]:
    if not has_verdicts(result_json):
        return [("h2", "The head questions"), ("note", f"The head questions: {NO_VERDICTS}.")]
    columns, rows = questions_table(result_json)
    if not rows:
        return [("h2", "The head questions"),
                ("p", "The sweep varied none of the head axes, so there is nothing to compare.")]
    rule = f"a side is called better only when the {level_of(result_json):.0%} interval of B − A excludes 0."
    return [("h2", "The head questions"),
            ("p", f"Difference B − A in validation {metric} between configs that differ only on that axis; {rule}"),
            ("table", Table(list(columns), rows, left=frozenset({0, 4}), wrap=0))]


def sections(result_json: Mapping[str, Any], plots: Mapping[str, Path]) -> list[tuple[str, Any]]:
    """The report's content once, as blocks that both the Markdown and the HTML writer render."""
    metric = result_json["metric"]
    rows = leaderboard_rows(result_json)
    lines = selection_lines(result_json)
    blocks: list[tuple[str, Any]] = [
        ("h1", "jaxheads sweep report"),
        ("p", f"Task: {result_json['task']}, {result_json['num_classes']} classes; "
              f"{len(result_json.get('members', []))} members in {len(rows)} configs; ranked by validation {metric}."),
        ("p", timing_text(result_json)),
        ("recommend", recommendation_text(result_json, rows)),
        *[("warning", line) for line in lines if line.startswith("Warning")],
        ("h2", "Leaderboard"),
        ("table", _leaderboard(result_json, rows)),
        ("note", "★ = recommended. " + (" ".join(line for line in lines if not line.startswith("Warning"))
                                        if result_json.get("selection")
                                        else "Values are mean ± standard deviation over seeds.")),
    ]
    per_class = per_class_table(result_json)
    if per_class is not None:
        blocks += [("h2", "Per-class recall of the recommended head"), ("table", Table(*per_class, wrap=None))]
    ridge = ridge_baseline(result_json)
    if ridge is not None:
        blocks.append(("p", f"Closed-form baseline: ridge linear probe on pooled features, λ={ridge['l2']:g} "
                            f"chosen on val: val {metric} {fmt(ridge['val'])}, test {fmt(ridge['test'])}."))
    blocks += _questions(result_json, metric)
    cuts = cut_cost_table(result_json)
    if cuts is not None:
        blocks += [("h2", "What each cut of the backbone costs"), ("table", Table(*cuts, wrap=None)),
                   ("note", f"Input {next(iter(result_json['provenance']['cut_costs'].values()))['input_size']} px; "
                            "FLOPs from XLA's cost analysis of the compiled forward; images/s timed on this machine "
                            "(batch 16, best of 3).")]
    backbones = backbone_table(result_json)
    if backbones is not None:
        blocks += [("h2", "Which backbone"), ("table", Table(*backbones, left=frozenset({0, 1, 7}), wrap=1)),
                   ("note", BACKBONE_NOTE)]
    if plots:
        blocks.append(("h2", "Plots"))
        blocks += [("img", (name.replace("_", " "), path)) for name, path in plots.items()]
    return blocks


# ------------------------------------------------------------------------------------------------ Markdown
def _markdown_table(table: Table) -> str:
    def esc(cell: Any) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def render_markdown(blocks: Sequence[tuple[str, Any]]) -> str:
    """Markdown; figures are linked by file name (the PNGs sit beside ``report.md``)."""
    out = []
    for kind, payload in blocks:
        if kind == "h1":
            out.append(f"# {payload}")
        elif kind == "h2":
            out.append(f"## {payload}")
        elif kind in ("p", "note"):
            out.append(str(payload))
        elif kind == "recommend":
            out.append(f"**{payload}**")
        elif kind == "warning":
            out.append(f"> **{payload}**")
        elif kind == "table":
            out.append(_markdown_table(payload))
        elif kind == "img":
            out.append(f"![{payload[0]}]({Path(payload[1]).name})")
    return "\n\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ HTML
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1180px;
  margin:1.5em auto;padding:0 16px;color:#1f2328;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.3em}
h2{font-size:1.25em;margin-top:1.6em;padding-bottom:.2em;border-bottom:1px solid #d0d7de}
.scroll{overflow-x:auto;margin:.5em 0}
table{border-collapse:collapse;font-size:13.5px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:4px 9px;text-align:right;white-space:nowrap;vertical-align:top}
th{background:#f3f5f7;font-weight:600}
td.l,th.l{text-align:left}
td.w,th.w{white-space:normal;min-width:14em;max-width:34em}
td.rec{background:#fff5d1;font-weight:600}
.recommend{background:#eef6ff;border-left:4px solid #2f6fb3;padding:8px 12px}
.warning{color:#b3261e;font-weight:600}
.note{color:#57606a;font-size:.92em}
figure{margin:1.2em 0}
img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.9em}
"""


def data_uri(path: str | Path) -> str:
    """A PNG file as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _html_table(table: Table) -> str:
    e = html.escape

    def cls(j: int, marked: bool) -> str:
        names = ["l"] * (j in table.left) + ["w"] * (j == table.wrap) + ["rec"] * marked
        return f' class="{" ".join(names)}"' if names else ""

    head = "".join(f"<th{cls(j, False)}>{e(str(h))}</th>" for j, h in enumerate(table.header))
    body = "".join("<tr>" + "".join(f"<td{cls(j, i in table.marked)}>{e(str(c))}</td>" for j, c in enumerate(row))
                   + "</tr>" for i, row in enumerate(table.rows))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def render_html(blocks: Sequence[tuple[str, Any]]) -> str:
    """One self-contained page: styles inline, every figure embedded as a data URI."""
    e = html.escape
    body = []
    for kind, payload in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{e(str(payload))}</{kind}>")
        elif kind in ("note", "warning", "recommend"):
            body.append(f'<p class="{kind}">{e(str(payload))}</p>')
        elif kind == "table":
            body.append(_html_table(payload))
        elif kind == "img":
            caption, path = payload
            body.append(f'<figure><img src="{data_uri(path)}" alt="{e(caption)}">'
                        f"<figcaption>{e(caption)} ({e(Path(path).name)})</figcaption></figure>")
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>jaxheads report</title><style>{STYLE}</style></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")
