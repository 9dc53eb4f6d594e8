"""Render a sweep's results: terminal leaderboard, Markdown/HTML report, plots, and the head questions answered.

Input is the plain JSON dict of ``SweepResult.to_json()`` (schema ``jaxheads.sweep_result/1``, documented in
``jaxheads/sweep/schema.py``), so a report can be rebuilt from ``results.json`` long after the sweep ran. Non-finite
numbers arrive as ``null`` there; every reader maps them back to NaN.

The head questions ("avg vs flatten", "1 vs 2 vs 3 dense layers", "width 256 vs 512 vs 1024", "dropout 0 vs 0.5",
"batch norm or not", "1x1 conv first or not", and any training axis the sweep varied) are answered by the sweep's
bootstrap (``questions``, :mod:`jaxheads.sweep.verdicts`); a results.json without them (written before the
bootstrap, or by a sweep whose configs have unequal seeds) gets a note that the questions need a rerun.

Optional fields read when present (not in schema v1): a member's ``"confusion_matrix": {"val": [[int]],
"test": [[int]]}`` (rows true, columns predicted), drawn for the recommended head of a multiclass sweep; and
``"estimate"`` (``{"total_s", "compile_s", "train_s"}``), a dry run's estimate of the sweep's time, shown beside
the time it took.

The work is split by kind: :mod:`jaxheads.report.tables` (numbers as rows and sentences),
:mod:`jaxheads.report.plots` (figures), :mod:`jaxheads.report.render` (Markdown and the self-contained HTML page).
Every public name stays importable from here.
"""

from .plots import plot_confusion, plot_learning_curves, plot_val_vs_params, recommended_confusion
from .render import Table, data_uri, render_html, render_markdown, sections
from .tables import LEADERBOARD_COLUMNS, NO_VERDICTS, leaderboard_rows, question_columns, ridge_baseline, spec_summary
from .write import print_report, write_documents, write_report

__all__ = [
    "LEADERBOARD_COLUMNS",
    "NO_VERDICTS",
    "Table",
    "data_uri",
    "leaderboard_rows",
    "plot_confusion",
    "plot_learning_curves",
    "plot_val_vs_params",
    "print_report",
    "question_columns",
    "recommended_confusion",
    "render_html",
    "render_markdown",
    "ridge_baseline",
    "sections",
    "spec_summary",
    "write_documents",
    "write_report",
]
