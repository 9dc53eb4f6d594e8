"""The number of augmented views K as a sweep axis (issue 17, item 1: "the report says what K bought"): several
--views K on one job answer "Views: 1 vs K" with the paired bootstrap and the saved head records its K; bad lists
are one-line errors naming --views. The tiny backbone (conftest) on tiny images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxheads import cli, features
from jaxheads.sweep import variants
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import SweepSpec


@pytest.mark.parametrize(("flags", "named"), [(["--views", "0,4"], "--views 0,4"), (["--views", "a"], "--views a"),
                                              (["--views", "2,2"], "--views 2,2"),
                                              (["--views", "1,2", "--input-size", "40,48"], "--views 1,2"),
                                              (["--views", "1,2", "--input-size", "40,48", "--dry-run"],
                                               "--views 1,2")])
def test_bad_view_lists_fail_with_one_line_naming_the_flag(flags: list[str], named: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str], tiny_backbone) -> None:
    code = cli.main(["sweep", "--out", str(tmp_path), "--backbone", tiny_backbone, "--dataset", str(tmp_path / "no"),
                     *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and named in err, err
    if "--input-size" in flags:  # refused in the job too (jaxheads.job.sweep_job), before any data is read
        assert "--input-size 40,48" in err  # both flags named: several sizes and several K are refused


def test_parse_views_and_truncating_views_to_a_smaller_k() -> None:
    assert variants.parse_views("4, 1") == (1, 4) and variants.parse_views(2) == (2,)
    y = np.arange(6) % 3
    split = FeatureSplit(y, np.zeros((6, 2), np.float32), views=tuple(FeatureSplit(y, np.full((6, 2), v, np.float32))
                                                                      for v in (1, 2, 3)))
    at_two = variants.splits_at_views({"train": split, "val": FeatureSplit(y)}, 2)
    assert len(at_two["train"].views) == 1 and float(at_two["train"].views[0].pooled[0, 0]) == 1.0
    assert at_two["val"].views is None and variants.splits_at_views({"train": split}, 1)["train"].views is None
    with pytest.raises(ValueError, match="has 4 views, asked for 5"):
        variants.splits_at_views({"train": split}, 5)


@pytest.mark.slow
def test_the_job_sweeps_two_view_counts_and_the_saved_head_records_its_k(
        tmp_path: Path, tiny_backbone, make_colour_folder) -> None:
    from jaxheads import job
    from jaxheads.heads import io as heads_io

    root = make_colour_folder(tmp_path / "colours", per_class=10)
    sweep = SweepSpec(pooling=("avg",), widths=(8,), depth=(0,), epochs=2, seeds=2, patience=None,
                      map_batch="vmap", ridge_l2=(), folds=None)
    out = job.sweep_job(root, tiny_backbone, sweep=sweep,
                        options=job.JobOptions(out_dir=tmp_path / "run", views="1,2", tta=True),
                        extract=features.ExtractOptions(cache_dir=tmp_path / "cache", augment="flip"))
    k = out.result.level()
    assert out.result.levels == [1, 2] and [m["spec"]["views"] for m in out.result.members] == [1] * 2 + [2] * 2
    question = [q for q in out.result.questions if q["axis"] == "views"]
    assert len(question) == 1 and question[0]["title"] == "Views: 1 vs 2" and question[0]["n_pairs"] == 1
    assert out.result.recommended.endswith(f"@{k}views")
    # One cache entry per view, not per K: K=1 trains on K=2's view 0 (the plain entry) without featuring again.
    assert len(out.splits["train"].views or ()) == k - 1 and len(list((tmp_path / "cache").iterdir())) == 2
    saved = json.loads(out.files["results"].read_text())
    assert saved["views_swept"] == [1, 2] and saved["provenance"]["views"] == k
    head = heads_io.read_swept_head(out.files["head"])
    assert head.meta["views"] == k and head.meta["views_swept"] == [1, 2] and head.meta["augment"] == ["flip"]
    assert head.meta["test_views"] == k  # TTA only where the test split carries views: K = 1 tests the plain image
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| Views: 1 vs 2 |" in report and f"avg · linear · {k} view" in report
