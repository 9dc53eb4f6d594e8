"""`jaxheads backbones compare`: the same sweep on each backbone, merged on a Backbone factor (the same members,
folds, seeds and paired draws), each backbone's cost measured, the Pareto front, and the recommended head saved
with its own backbone."""

import json
from pathlib import Path

import pytest

from jaxheads import cli, features
from jaxheads.compare import compare_backbones
from jaxheads.heads import io as heads_io
from jaxheads.job import JobOptions
from jaxheads.report.backbones import BackbonePoint, dominated_by
from jaxheads.sweep import SweepSpec

SMALL = SweepSpec(pooling=("none",), widths=(8,), depth=(0, 1), dropout=(0.0,), norm=("none",), epochs=3, seeds=2,
                  batch_size=(8,), patience=None, map_batch="vmap", ridge_l2=(), folds=None, design="grid")


def _point(name: str, score: float, speed: float, params: int) -> BackbonePoint:
    return BackbonePoint(name, name, name, score, score, score, params, 1.0, speed)


def test_the_pareto_front_keeps_exactly_the_undominated_backbones() -> None:
    points = [_point("small_fast", 0.70, 900.0, 1_000), _point("big_best", 0.80, 100.0, 9_000),
              _point("middle", 0.75, 300.0, 4_000), _point("worse_than_middle", 0.74, 250.0, 5_000),
              _point("tie_of_middle", 0.75, 300.0, 4_000)]
    front = dominated_by(points)
    assert front["worse_than_middle"] == "middle"
    assert {n for n, by in front.items() if by is None} == {"small_fast", "big_best", "middle", "tie_of_middle"}


@pytest.mark.slow  # two tiny feature passes, two small sweeps, the backbones timed, one export
def test_the_same_backbone_under_two_names_ties_exactly_and_everything_is_written(
        tmp_path: Path, tiny_backbone, tiny_tapped_backbone, make_colour_folder) -> None:
    root = make_colour_folder(tmp_path / "colours", per_class=10)
    out = compare_backbones(root, [tiny_backbone, tiny_tapped_backbone], sweep=SMALL,
                            options=JobOptions(out_dir=tmp_path / "run"),
                            extract=features.ExtractOptions(cache_dir=tmp_path / "cache"))
    saved = json.loads(out.files["results"].read_text())
    assert saved["backbones"] == [tiny_backbone, tiny_tapped_backbone]
    # The same network and weights: the same features, members and seeds, so every paired difference is 0.
    asked = [q for q in saved["questions"] if q["axis"] == "backbone"]
    assert asked and all(q["diff"] == 0.0 and q["verdict"] == "within noise" for q in asked)
    costs = saved["provenance"]["backbone_costs"]
    assert costs[tiny_backbone]["params"] == costs[tiny_tapped_backbone]["params"] > 0
    assert all(c["images_per_s"] > 0 for c in costs.values())
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Which backbone" in report and f"| {tiny_tapped_backbone} |" in report
    assert (tmp_path / "run" / "backbones.png").is_file() and out.files["model_export"].is_file()
    assert heads_io.load_meta(out.files["head"])["backbone"] == out.result.level() == saved["provenance"]["backbone"]


@pytest.mark.slow  # two tiny feature passes and two small sweeps, through the command
def test_the_command_prints_the_backbone_question_and_the_pareto_table(
        tmp_path: Path, tiny_backbone, tiny_relatives, make_colour_folder, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_colour_folder(tmp_path / "colours", per_class=10)
    other = tiny_relatives[0]  # the same network with other weights: other features
    code = cli.main(["backbones", "compare", tiny_backbone, other, "--dataset", str(root), "--out",
                     str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--depths", "0", "--folds",
                     "none", "--epochs", "3", "--seeds", "2", "--batch-size", "8"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert f"Backbone: {tiny_backbone} vs {other}" in stdout and "Which backbone" in stdout
    assert "Pareto front" in stdout and "model_export" in stdout


def test_one_name_or_a_repeated_name_is_one_line(capsys: pytest.CaptureFixture[str], tiny_backbone) -> None:
    for names in ([tiny_backbone], [tiny_backbone, tiny_backbone]):
        code = cli.main(["backbones", "compare", *names])
        err = capsys.readouterr().err
        assert code == 2 and "at least two distinct backbone names" in err and len(err.strip().splitlines()) == 1
