"""The representation as a sweep axis (issue 24, part 2): one sweep per level (last, a tap, last-K, all, select:F)
merged on a ``representation`` factor that the verdicts ask about; ``last`` is the plain sweep bit for bit; tap
levels are standardised on the training rows only; a Head2Toe selection never picks a feature that leaks the val
labels; bad levels are one line listing the backbone's taps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxheads import cli, features
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import SweepSpec, representation, run_sweep, variants

TAPS = ("stem", "block0", "block1", "head")
SWEEP = SweepSpec(pooling=("none",), widths=(8,), depth=(0,), learning_rate=(3e-2,), epochs=3, seeds=2,
                  batch_size=(32,), patience=None, map_batch="vmap", ridge_l2=(), folds=None)


def _splits(seed: int = 0, sizes: tuple[int, int, int] = (96, 48, 48)) -> dict[str, FeatureSplit]:
    """Three classes; the last-layer vector is noise, block0's first columns carry the class (a tap that helps)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in zip(("train", "val", "test"), sizes):
        y = rng.integers(0, 3, n)
        taps = {t: rng.normal(3.0 * i, 1.0 + i, size=(n, 4 + 2 * i)).astype(np.float16) for i, t in enumerate(TAPS)}
        taps["block0"][:, :3] += (2.5 * np.eye(3)[y]).astype(np.float16)
        out[name] = FeatureSplit(labels=y, pooled=rng.normal(size=(n, 6)).astype(np.float32), taps=taps)
    return out


@pytest.mark.slow  # four sweeps
def test_a_representation_sweep_merges_on_its_factor_and_last_is_the_plain_sweep() -> None:
    splits = _splits()
    levels = ("last", "block0", "last-2", "all")
    by_level = {lv: representation.level_splits(splits, lv, TAPS, folds=False, num_classes=3) for lv in levels}
    assert by_level["last"]["train"].pooled is splits["train"].pooled  # untouched: today's features
    assert [by_level[lv]["val"].pooled.shape[1] for lv in levels[1:]] == [6, 8 + 10, 4 + 6 + 8 + 10]
    swept = ("last", "block0", "all")  # last-2 only by its width: each level is one more sweep to train
    merged = variants.run_variants(SWEEP, {lv: by_level[lv] for lv in swept}, "representation", num_classes=3)
    plain = run_sweep(SWEEP, splits, num_classes=3)
    assert merged.levels == list(swept) and len(merged.members) == 6
    assert [m["spec"]["representation"] for m in merged.members] == [lv for lv in swept for _ in range(2)]
    np.testing.assert_array_equal(merged.predictions["val"][:2], plain.predictions["val"])  # bit for bit
    np.testing.assert_array_equal(merged.predictions["test"][:2], plain.predictions["test"])
    assert [m["curves"] for m in merged.members[:2]] == [m["curves"] for m in plain.members]
    titles = [q["title"] for q in merged.questions if q["axis"] == "representation"]
    assert "Representation: last vs all" in titles and "Representation: last vs block0" in titles, titles
    assert merged.recommended.split("@")[-1] in swept
    assert json.loads(merged.to_json())["representations"] == list(swept)


def test_tap_levels_are_standardised_on_the_training_rows_only() -> None:
    splits = _splits(1)
    out = representation.level_splits(splits, "all", TAPS, folds=False, num_classes=3)
    np.testing.assert_allclose(out["train"].pooled.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out["train"].pooled.std(0), 1.0, atol=1e-3)
    assert abs(float(out["test"].pooled.mean())) > 1e-3  # the test rows are transformed, never fitted
    shifted = {k: s if k == "train" else FeatureSplit(s.labels, s.pooled, taps={t: v * 7 + 50 for t, v in
                                                                               s.taps.items()})
               for k, s in splits.items()}
    again = representation.level_splits(shifted, "all", TAPS, folds=False, num_classes=3)
    np.testing.assert_array_equal(again["train"].pooled, out["train"].pooled)  # val/test rows move nothing
    # With folds every pooled train+val row is a training row of K-1 folds: they fit it, test never does.
    folded = representation.level_splits(splits, "all", TAPS, folds=True, num_classes=3)
    both = np.concatenate([folded["train"].pooled, folded["val"].pooled])
    np.testing.assert_allclose(both.mean(0), 0.0, atol=1e-4)
    moved_test = {**splits, "test": shifted["test"]}
    np.testing.assert_array_equal(representation.level_splits(moved_test, "all", TAPS, folds=True,
                                                              num_classes=3)["val"].pooled, folded["val"].pooled)


def test_selection_never_picks_a_feature_that_leaks_the_val_labels() -> None:
    splits = _splits(2)
    rng = np.random.default_rng(3)
    leak = {name: (s.labels.astype(np.float16) if name == "val" else rng.normal(size=len(s)).astype(np.float16))
            for name, s in splits.items()}  # the val label itself on val rows, noise on train and test rows
    planted = {name: FeatureSplit(s.labels, s.pooled, taps={**s.taps, "head": np.concatenate(
        [s.taps["head"], leak[name][:, None]], axis=1)}) for name, s in splits.items()}
    out = representation.level_splits(planted, "select:0.25", TAPS, folds=False, num_classes=3)
    val = out["val"].pooled
    corr = [abs(np.corrcoef(val[:, j], splits["val"].labels)[0, 1]) for j in range(val.shape[1])]
    assert max(corr) < 0.9, max(corr)  # the leak (correlation 1 on val) was left out
    assert val.shape[1] == int(np.ceil(0.25 * (4 + 6 + 8 + 11)))
    # The same ranking fitted on the val rows would pick it: the test can see a leak when there is one.
    x_val = representation.standardise(np.concatenate([planted["val"].taps[t] for t in TAPS], 1),
                                       np.concatenate([planted["val"].taps[t] for t in TAPS], 1))
    assert x_val.shape[1] - 1 in representation.select_features(x_val, splits["val"].labels, 0.25, 3)
    with pytest.raises(ValueError, match="--folds none"):
        representation.level_splits(planted, "select:0.25", TAPS, folds=True, num_classes=3)


@pytest.mark.parametrize(("level", "says"), [("bogus", "has no tap 'bogus'"),
                                             ("last-9", "last-K takes K from 1 to 4"),
                                             ("select:2", "select:F keeps a fraction F in (0, 1]"),
                                             ("last,last", "distinct")])
@pytest.mark.parametrize("dry", [False, True])
def test_bad_levels_are_one_line_listing_the_taps(level: str, says: str, dry: bool, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str], tiny_tapped_backbone) -> None:
    code = cli.main(["sweep", "--out", str(tmp_path), "--backbone", tiny_tapped_backbone, "--dataset",
                     str(tmp_path / "no"), "--representation", level, *(["--dry-run"] if dry else [])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and says in err, err
    if "tap" in says:
        assert "stem, block0, block1, head" in err


def test_maps_only_sweeps_get_a_linear_probe_at_every_level_and_mixed_ones_keep_maps_at_last() -> None:
    maps_only = SweepSpec(pooling=("avg", "max"), widths=(8,), depth=(1,), seeds=2, folds=None)
    grid = maps_only.expand(3, "multiclass")
    sweeps = representation.level_sweeps(maps_only, ("last", "all", "block0"), 3, "multiclass")
    probes = sweeps["all"].expand(3, "multiclass")
    assert sweeps["block0"].expand(3, "multiclass") == probes
    # the first average-pooled config's seeds, as a linear head on the pooled vector, trained as that config is
    assert [(m.head.pooling, m.head.hidden, m.seed) for m in probes] == [("none", (), 0), ("none", (), 1)]
    assert {(m.learning_rate, m.batch_size) for m in probes} == {(grid[0].learning_rate, grid[0].batch_size)}
    assert sweeps["last"].expand(3, "multiclass") == [*grid, *probes]  # the whole grid and the same probes
    assert representation.level_sweeps(maps_only, ("last",), 3, "multiclass")["last"] is maps_only  # the default
    assert not representation.needs_taps(("last",))  # the default job: no taps, the plain sweep, nothing new runs
    mixed = SweepSpec(pooling=("avg", "none"), widths=(8,), depth=(0, 1), folds=None)
    at = representation.level_sweeps(mixed, ("last", "all"), 3, "multiclass")
    assert at["last"] is mixed
    assert {m.head.pooling for m in at["all"].expand(3, "multiclass")} == {"none"}
    assert len(at["all"].expand(3, "multiclass")) == len(mixed.expand(3, "multiclass")) // 2
    assert representation.level_sweeps(SWEEP, ("all",), 3, "multiclass")["all"] is SWEEP  # pooled only: the same


def test_stages_is_last_and_the_end_of_every_resolution_stage(tiny_tapped_backbone) -> None:
    from jaxheads import backbones
    from jaxheads.backbones import cut

    shapes = cut.tap_shapes(backbones.get_config(tiny_tapped_backbone), 32)
    assert list(shapes) == list(TAPS)
    ends = cut.stage_ends(shapes)
    assert ends == tuple(a for a, b in zip(TAPS, TAPS[1:]) if shapes[a][:2] != shapes[b][:2]) and ends
    assert ends == cut.stage_taps(tiny_tapped_backbone, 32)
    levels = representation.expand_stages(("all", "stages"), ("block0",))
    assert levels == ("all", "last", "block0")
    assert representation.expand_stages(("stages", "block0"), ("block0",)) == ("last", "block0")


def test_a_cut_backbone_costs_less_and_the_whole_one_is_its_architecture(tiny_tapped_backbone) -> None:
    from jaxheads import backbones
    from jaxheads.backbones import cut, describe

    backbone = backbones.load(tiny_tapped_backbone, None)
    costs = [cut.cut_cost(backbone, tap, 32, batch=2, repeats=1) for tap in (*TAPS[:-1], None)]
    assert costs[-1].params == describe.trace_architecture(backbone.config).params
    assert [c.params for c in costs] == sorted(c.params for c in costs) and costs[0].params < costs[-1].params
    assert all(c.images_per_s > 0 for c in costs)
    flops = [c.flops_per_image for c in costs]
    assert flops == sorted(flops) and flops[0] < flops[-1]


@pytest.mark.slow  # the tiny backbone's feature pass and three sweeps
def test_the_job_caches_the_taps_and_records_the_representation(tmp_path: Path, tiny_tapped_backbone,
                                                                make_colour_folder) -> None:
    from jaxheads import job

    root = make_colour_folder(tmp_path / "colours", per_class=10)
    sweep = SweepSpec(pooling=("none",), widths=(8,), depth=(0,), epochs=2, seeds=1, patience=None,
                      map_batch="vmap", ridge_l2=(), folds=None)
    out = job.sweep_job(root, tiny_tapped_backbone, sweep=sweep,
                        options=job.JobOptions(out_dir=tmp_path / "run", representation="last,block1,all"),
                        extract=features.ExtractOptions(cache_dir=tmp_path / "cache"))
    assert out.result.levels == ["last", "block1", "all"] and set(out.splits["train"].taps) == set(TAPS)
    saved = json.loads(out.files["results"].read_text())
    assert saved["provenance"]["representations"] == ["last", "block1", "all"]
    assert saved["provenance"]["representation"] == out.result.level()
    assert any(q["title"] == "Representation: last vs block1" for q in saved["questions"])


@pytest.mark.slow  # the tiny backbone's feature pass, a sweep per stage and the cut backbones timed
def test_stages_answers_the_depth_question_with_the_default_grid_and_prices_each_cut(
        tmp_path: Path, tiny_tapped_backbone, make_colour_folder) -> None:
    from jaxheads import job
    from jaxheads.backbones import cut

    root = make_colour_folder(tmp_path / "colours", per_class=10)
    sweep = SweepSpec(pooling=("avg",), widths=(8,), depth=(1,), epochs=2, seeds=1, patience=None,
                      map_batch="vmap", ridge_l2=(), folds=None)  # maps only, as the main job's grid
    out = job.sweep_job(root, tiny_tapped_backbone, sweep=sweep,
                        options=job.JobOptions(out_dir=tmp_path / "run", representation="stages"),
                        extract=features.ExtractOptions(cache_dir=tmp_path / "cache"))
    ends = cut.stage_taps(tiny_tapped_backbone, 32)
    assert out.result.levels == ["last", *ends]
    saved = json.loads(out.files["results"].read_text())
    titles = {q["title"] for q in saved["questions"]}
    assert {f"Representation: last vs {end}" for end in ends} <= titles, titles
    costs = saved["provenance"]["cut_costs"]
    assert set(costs) == {"last", *ends} and all(costs[e]["params"] < costs["last"]["params"] for e in ends)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## What each cut of the backbone costs" in report and "| last (whole backbone) |" in report


@pytest.mark.slow  # the dry run calibrates on this machine (a matmul and a tiny sweep)
def test_a_dry_run_accepts_a_representation_axis(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 tiny_tapped_backbone, make_colour_folder, jaxheads_cache) -> None:
    root = make_colour_folder(tmp_path / "colours", per_class=6)
    code = cli.main(["sweep", "--out", str(tmp_path / "run"), "--backbone", tiny_tapped_backbone, "--dataset",
                     str(root), "--pooling", "none", "--conv", "none", "--representation", "last,block1,all",
                     "--dry-run"])
    err = capsys.readouterr().err
    assert code == 0 and "one sweep per level" in err, err
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow  # two sweeps with folds
def test_with_folds_map_heads_train_at_last_only_and_the_question_pairs_pooled_heads() -> None:
    rng = np.random.default_rng(4)
    splits = {k: FeatureSplit(s.labels, s.pooled, rng.normal(size=(len(s), 2, 2, 4)).astype(np.float32),
                              taps=s.taps) for k, s in _splits(4).items()}
    mixed = SweepSpec(pooling=("none", "avg"), widths=(8,), depth=(0,), learning_rate=(3e-2,), epochs=2, seeds=1,
                      batch_size=(32,), patience=None, map_batch="vmap", ridge_l2=(), folds=2)
    sweeps = representation.level_sweeps(mixed, ("last", "all"), 3, "multiclass")
    by_level = {lv: representation.level_splits(splits, lv, TAPS, folds=True, num_classes=3) for lv in sweeps}
    merged = variants.run_variants(sweeps, by_level, "representation", num_classes=3)
    pooling = {(m["spec"]["representation"], m["spec"]["head"]["pooling"]) for m in merged.members}
    assert pooling == {("last", "none"), ("last", "avg"), ("all", "none")} and len(merged.members) == 6
    (question,) = [q for q in merged.questions if q["axis"] == "representation"]
    assert question["title"] == "Representation: last vs all" and question["n_pairs"] == 1
