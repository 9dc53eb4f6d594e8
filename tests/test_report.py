"""jaxheads.report: head-question numbers on a hand-made result, every artifact written, a real sweep rendered."""

import io
import json

import numpy as np
import pytest
from rich.console import Console

from jaxheads import report
from jaxheads.heads import HeadSpec
from jaxheads.sweep import MemberSpec, leaderboard

# Validation accuracy per (hidden, dropout) config and seed 0, 1 — numbers chosen so the answers are checkable by
# hand (see test_head_questions_by_hand). The linear head appears twice, as the grid crosses it with both dropouts.
VALUES = {
    ((16,), 0.0): (0.80, 0.82),
    ((16,), 0.5): (0.84, 0.85),
    ((32,), 0.0): (0.79, 0.83),
    ((32,), 0.5): (0.86, 0.84),
    ((), 0.0): (0.70, 0.72),
    ((), 0.5): (0.70, 0.72),
}


def _member(i: int, hidden: tuple, dropout: float, seed: int, val: float, num_classes: int = 3) -> dict:
    spec = MemberSpec(HeadSpec(num_classes=num_classes, pooling="none", hidden=hidden, dropout=dropout), seed=seed)
    params = 8 * num_classes + num_classes if not hidden else 8 * hidden[0] + hidden[0] + hidden[0] * 3 + 3
    curve = [val - 0.2, val - 0.05, val]
    return {
        "member": i, "config": spec.config_id(), "group": len(hidden), "spec": spec.to_dict(), "params": params,
        "epochs_run": 3, "best_epoch": 3, "diverged": False, "stopped": "completed",
        "curves": {"train_loss": [1.0, 0.7, 0.5], "val": {"accuracy": curve, "macro_f1": curve}},
        "val": {"accuracy": val, "macro_f1": val - 0.01, "top5": 1.0},
        "test": {"accuracy": val - 0.02, "macro_f1": val - 0.03, "top5": 1.0},
        "per_class": {"val": {}, "test": {}}, "thresholds": None,
    }


def _synthetic_result() -> dict:
    members = []
    for (hidden, dropout), vals in VALUES.items():
        for seed, val in enumerate(vals):
            members.append(_member(len(members), hidden, dropout, seed, val))
    board, recommended = leaderboard(members, "accuracy")
    return {
        "schema": "jaxheads.sweep_result/1", "task": "multiclass", "num_classes": 3, "label_names": ["a", "b", "c"],
        "metric": "accuracy", "feature_shapes": {"pooled": [8], "maps": None}, "sweep": {}, "members": members,
        "leaderboard": board, "recommended": recommended,
        "ridge": [{"l2": 1.0, "val": {"accuracy": 0.75}, "test": {"accuracy": 0.74}, "best": True},
                  {"l2": 10.0, "val": {"accuracy": None}, "test": None, "best": False}],
        "groups": [], "timings": {"total_s": 1.5, "ridge_s": 0.1},
    }


def _by_title(answers: list[dict]) -> dict[str, dict]:
    return {q["title"]: q for q in answers}


def _question(title: str, axis: str, a, b, mean_a: float, mean_b: float, low: float, high: float) -> dict:
    verdict = "within noise" if low <= 0 <= high else f"{b if low > 0 else a} better"
    return {"axis": axis, "title": title, "a": a, "b": b, "mean_a": mean_a, "mean_b": mean_b, "diff": mean_b - mean_a,
            "low": low, "high": high, "p_b_better": 0.5, "level": 0.95, "metric": "accuracy", "n_pairs": 2,
            "verdict": verdict}


def _with_verdicts(result: dict, level: float = 0.95) -> dict:
    """``result`` as the sweep's bootstrap leaves it: its questions and selection record (hand-made numbers)."""
    questions = [_question("Dense layers: 0 vs 1", "depth", 0, 1, 0.71, 0.829, 0.08, 0.16),
                 _question("Width: 16 vs 32", "width", 16, 32, 0.828, 0.830, -0.02, 0.025),
                 _question("Dropout: 0 vs 0.5", "dropout", 0.0, 0.5, 0.81, 0.848, -0.004, 0.08)]
    for q in questions:
        q["level"] = level
    selection = {"metric": "accuracy", "level": level, "n_boot": 2000, "method": "hand-made intervals.",
                 "val": {"estimate": 0.85, "low": 0.8, "high": 0.9, "level": level, "optimistic": True},
                 "test": None}
    if result["task"] == "multiclass":  # the job adds the recommended config's matrices to the selection record
        selection["confusion_matrix"] = {"val": [[5, 1, 0], [0, 6, 1], [1, 0, 7]],
                                         "test": [[4, 2, 0], [0, 7, 0], [1, 1, 6]], "seeds": 1}
    return {**result, "questions": questions, "selection": selection}


def test_results_without_verdicts_get_a_note_not_a_second_method(tmp_path):
    """An old results.json (no per-example predictions, so no bootstrap verdicts): one note, no question rows."""
    result = json.loads(json.dumps(_synthetic_result()))
    assert report.tables.questions_table(result)[1] == []
    paths = report.write_report(result, tmp_path)
    for doc in (paths["markdown"], paths["html"]):
        text = doc.read_text()
        assert report.NO_VERDICTS in text and "Dropout: 0 vs 0.5" not in text and "± SE" not in text
    assert json.loads(paths["head_questions"].read_text()) == []
    out = io.StringIO()
    report.print_report(result, console=Console(file=out, width=160, color_system=None))
    assert report.NO_VERDICTS in out.getvalue() and "Dropout" not in out.getvalue()


def test_titles_read_the_level():
    result = _with_verdicts(_synthetic_result(), level=0.9)
    columns, rows = report.tables.questions_table(result)
    assert columns[3] == "B − A [90% CI]" and len(rows) == 3
    assert report.question_columns(_with_verdicts(_synthetic_result()))[3] == "B − A [95% CI]"
    assert report.tables.leaderboard_columns(result)[3:5] == ("val [90% CI]", "vs best [90% CI]")
    assert _by_title(result["questions"])["Dense layers: 0 vs 1"]["verdict"] == "1 better"
    assert [r[4] for r in rows] == ["1 better", "within noise", "within noise"]


def test_write_report_writes_every_artifact(tmp_path):
    result = json.loads(json.dumps(_with_verdicts(_synthetic_result())))  # exactly what results.json gives back
    paths = report.write_report(result, tmp_path / "out")
    assert set(paths) == {"markdown", "html", "head_questions", "val_vs_params", "learning_curves",
                          "confusion_matrix"}
    for path in paths.values():
        assert path.exists() and path.stat().st_size > 200, path
    for name in ("val_vs_params", "learning_curves", "confusion_matrix"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert "Dropout: 0 vs 0.5" in md and "within noise" in md and "★" in md and "(val_vs_params.png)" in md
    assert "ridge linear probe" in md
    page = paths["html"].read_text()
    # One row per leaderboard entry and question (plus headers); figures are embedded, not linked (issue 19).
    assert page.count("<tr>") == 1 + len(result["leaderboard"]) + 1 + 3 and 'alt="confusion matrix"' in page
    assert 'src="confusion_matrix.png"' not in page and page.count('src="data:image/png;base64,') == 3
    answers = json.loads(paths["head_questions"].read_text())
    assert [q["title"] for q in answers] == ["Dense layers: 0 vs 1", "Width: 16 vs 32", "Dropout: 0 vs 0.5"]


def test_terminal_leaderboard_marks_the_recommended_head():
    result = _with_verdicts(_synthetic_result())
    out = io.StringIO()
    report.print_report(result, console=Console(file=out, width=160, color_system=None), top=2)
    text = out.getvalue()
    rec_row = next(r for r in report.leaderboard_rows(result) if r["recommended"])
    assert f"{rec_row['rank']}★" in text and "ridge probe" in text and "Width: 16 vs 32" in text
    assert "within noise" in text and "Recommended head" in text


def test_multilabel_result_without_confusion(tmp_path):
    result = _synthetic_result()
    result.update(task="multilabel", metric="macro_roc_auc")
    for m in result["members"]:
        m["val"]["macro_roc_auc"] = m["val"].pop("accuracy")
        m["curves"]["val"]["macro_roc_auc"] = m["curves"]["val"].pop("accuracy")
        m.pop("confusion_matrix", None)
    result["leaderboard"], result["recommended"] = leaderboard(result["members"], "macro_roc_auc")
    result["ridge"] = []
    paths = report.write_report(_with_verdicts(result), tmp_path)
    assert "confusion_matrix" not in paths and paths["val_vs_params"].exists()
    assert len(json.loads(paths["head_questions"].read_text())) == 3


@pytest.mark.slow
def test_report_of_a_real_sweep(tmp_path):
    """A tiny real sweep (one structure group: pooled input, 1 hidden layer, width × dropout × 2 seeds)."""
    import jax
    from jax.sharding import Mesh

    from jaxheads.features.split import FeatureSplit
    from jaxheads.sweep import SweepSpec, run_sweep

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 1.5

    def split(n: int) -> FeatureSplit:
        y = rng.integers(0, 3, n)
        return FeatureSplit(labels=y, pooled=(centres[y] + rng.normal(size=(n, 8))).astype(np.float16))

    sweep = SweepSpec(pooling=("none",), widths=(4, 8), depth=(1,), dropout=(0.0, 0.5), seeds=2, epochs=2,
                      batch_size=(32,), patience=None, map_batch="vmap", ridge_l2=())
    one_device = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("members", "data"))  # fewer programs to build
    result = run_sweep(sweep, {"train": split(128), "val": split(64), "test": split(64)}, num_classes=3,
                       mesh=one_device)
    result_json = json.loads(result.to_json())
    paths = report.write_report(result_json, tmp_path)
    assert {"markdown", "html", "val_vs_params", "learning_curves"} <= set(paths)
    assert all(p.exists() for p in paths.values())
    answers = _by_title(result_json["questions"])  # the sweep's bootstrap verdicts, the report's only source
    assert set(answers) == {"Width: 4 vs 8", "Dropout: 0 vs 0.5"}
    for q in answers.values():
        assert q["n_pairs"] == 2 and q["low"] <= q["diff"] <= q["high"] and q["level"] == report.tables.stats.LEVEL
    md = paths["markdown"].read_text()
    assert "B − A [95% CI]" in md and "Width: 4 vs 8" in md and report.NO_VERDICTS not in md


def test_html_report_is_self_contained(tmp_path):
    """report.html embeds its figures byte for byte and references no other file, so it opens from anywhere."""
    import base64
    import re

    result = json.loads(json.dumps(_with_verdicts(_synthetic_result())))
    paths = report.write_report(result, tmp_path / "out")
    page = paths["html"].read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and not re.search(r'href="(?!#)', page)
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in sources}
    assert embedded == {paths[name].read_bytes() for name in ("val_vs_params", "learning_curves", "confusion_matrix")}
    moved = tmp_path / "elsewhere" / "report.html"  # mailed or moved without its folder: nothing is lost
    moved.parent.mkdir()
    paths["html"].rename(moved)
    assert moved.read_text() == page
    # Numbers never wrap (the head column does), and the recommended row is marked, at any width.
    assert "th,td{" in page and "white-space:nowrap" in page and 'class="l w rec"' in page


def test_estimate_is_shown_and_documents_render_again_without_plots(tmp_path):
    result = json.loads(json.dumps(_with_verdicts(_synthetic_result())))
    paths = report.write_report(result, tmp_path)
    before = {name: paths[name].stat().st_mtime_ns for name in ("val_vs_params", "learning_curves")}
    assert "dry run" not in paths["markdown"].read_text()
    result["estimate"] = {"total_s": 42.0, "compile_s": 12.0, "train_s": 30.0}
    again = report.write_documents(result, tmp_path)
    assert {name: paths[name].stat().st_mtime_ns for name in before} == before  # figures untouched
    for doc in (again["markdown"], again["html"]):
        text = doc.read_text()
        assert "The sweep took 1.5 s; its dry run estimated about 42 s (12 s compiling, 30 s training)" in text
    assert again["html"].read_text().count('src="data:image/png;base64,') == 3  # the PNGs already there
    out = io.StringIO()
    report.print_report(result, console=Console(file=out, width=160, color_system=None))
    assert "estimated about 42 s" in out.getvalue()


def test_report_names_stay_importable_after_the_split():
    for name in ("leaderboard_rows", "print_report", "write_report", "write_documents",
                 "plot_val_vs_params", "plot_learning_curves", "plot_confusion", "recommended_confusion",
                 "render_markdown", "render_html", "ridge_baseline", "spec_summary", "NO_VERDICTS",
                 "LEADERBOARD_COLUMNS", "question_columns"):
        assert hasattr(report, name), name
    import inspect

    from jaxheads.report import plots as report_plots
    from jaxheads.report import render as report_render
    from jaxheads.report import tables as report_tables

    for module in (report, report_plots, report_render, report_tables):
        lines = inspect.getsource(module).splitlines()
        assert len(lines) < 450, module.__name__
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__:
                assert len(inspect.getsource(fn).splitlines()) <= 60, f"{module.__name__}.{name}"
