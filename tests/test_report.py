"""jaxheads.report: head-question numbers on a hand-made result, every artifact written, a real sweep rendered."""

import io
import json
import math

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
    rec = next(m for m in members if m["config"] == recommended)
    rec["confusion_matrix"] = {"val": [[5, 1, 0], [0, 6, 1], [1, 0, 7]], "test": [[4, 2, 0], [0, 7, 0], [1, 1, 6]]}
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


def test_head_questions_by_hand():
    answers = _by_title(report.answer_head_questions(_synthetic_result()))
    assert set(answers) == {"Dropout: 0 vs 0.5", "Width: 16 vs 32", "Dense layers: 0 vs 1"}  # pooling never varied

    # Dropout, matched within width 16 (d = .84-.80, .85-.82) and width 32 (d = .86-.79, .84-.83), seed by seed.
    q = answers["Dropout: 0 vs 0.5"]
    d16, d32 = np.array([0.04, 0.03]), np.array([0.07, 0.01])
    pooled_var = (((d16 - d16.mean()) ** 2).sum() + ((d32 - d32.mean()) ** 2).sum()) / 2  # 0.000925
    assert q["diff"] == pytest.approx(0.0375)
    assert q["se"] == pytest.approx(math.sqrt(pooled_var * (1 / 2 + 1 / 2)) / 2) == pytest.approx(0.0152069, rel=1e-5)
    assert (q["n_contexts"], q["n_pairs"], q["se_from"]) == (2, 4, "seeds")
    assert q["mean_a"] == pytest.approx(np.mean([0.80, 0.82, 0.79, 0.83]))
    assert q["within_noise"] is False and q["verdict"] == "0.5 better"  # 0.0375 > 2 × 0.0152

    # Width 16 vs 32: d = (-.01, .01) at dropout 0 and (.02, -.01) at 0.5 → diff .0025 ± .0090: within noise.
    q = answers["Width: 16 vs 32"]
    assert q["diff"] == pytest.approx(0.0025)
    assert q["se"] == pytest.approx(math.sqrt((0.0002 + 0.00045) / 2) / 2)
    assert q["within_noise"] is True and q["verdict"] == "within noise"

    # Linear vs one hidden layer: width and dropout do not apply to the linear head, so there is one context;
    # its cells average the members per seed (the two identical linear configs, the four 1-layer configs).
    q = answers["Dense layers: 0 vs 1"]
    d = np.array([np.mean([0.80, 0.84, 0.79, 0.86]) - 0.70, np.mean([0.82, 0.85, 0.83, 0.84]) - 0.72])
    assert q["n_contexts"] == 1 and q["n_pairs"] == 2
    assert q["diff"] == pytest.approx(d.mean()) and q["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(2))
    assert q["z"] == pytest.approx(q["diff"] / q["se"])


def test_single_seed_falls_back_to_context_spread():
    result = _synthetic_result()
    result["members"] = [m for m in result["members"] if m["spec"]["seed"] == 0]
    q = _by_title(report.answer_head_questions(result))["Dropout: 0 vs 0.5"]
    assert q["se_from"] == "contexts" and q["n_pairs"] == 2
    assert q["diff"] == pytest.approx(0.055) and q["se"] == pytest.approx(np.std([0.04, 0.07], ddof=1) / math.sqrt(2))


def test_diverged_nan_members_are_left_out():
    result = _synthetic_result()
    result["members"][0]["val"]["accuracy"] = None  # (16,), dropout 0, seed 0: NaN written as null
    q = _by_title(report.answer_head_questions(result))["Dropout: 0 vs 0.5"]
    assert q["n_pairs"] == 3 and q["diff"] == pytest.approx(np.mean([0.03, np.mean([0.07, 0.01])]))


def test_write_report_writes_every_artifact(tmp_path):
    result = json.loads(json.dumps(_synthetic_result()))  # exactly what results.json gives back
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
    result = _synthetic_result()
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
    paths = report.write_report(result, tmp_path)
    assert "confusion_matrix" not in paths and paths["val_vs_params"].exists()
    assert len(report.answer_head_questions(result)) == 3


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
    answers = _by_title(report.answer_head_questions(result_json))
    assert set(answers) == {"Width: 4 vs 8", "Dropout: 0 vs 0.5"}
    for q in answers.values():
        assert (q["n_contexts"], q["n_pairs"], q["se_from"]) == (2, 4, "seeds") and math.isfinite(q["se"])


def test_html_report_is_self_contained(tmp_path):
    """report.html embeds its figures byte for byte and references no other file, so it opens from anywhere."""
    import base64
    import re

    result = json.loads(json.dumps(_synthetic_result()))
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
    result = json.loads(json.dumps(_synthetic_result()))
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
    for name in ("answer_head_questions", "leaderboard_rows", "print_report", "write_report", "write_documents",
                 "plot_val_vs_params", "plot_learning_curves", "plot_confusion", "recommended_confusion",
                 "render_markdown", "render_html", "ridge_baseline", "spec_summary", "NOISE_SE",
                 "LEADERBOARD_COLUMNS", "QUESTION_COLUMNS", "INTERVAL_QUESTION_COLUMNS"):
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
