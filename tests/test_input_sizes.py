"""Input size as a sweep axis: a size below the backbone's minimum is a one-line error naming the flag, and the
same sweep on two sizes' features merges into one result that answers "Input size" with the paired bootstrap."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxheads import cli, ensembles, features
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import SweepSpec, run_sweep, variants

SWEEP = SweepSpec(pooling=("none",), widths=(8,), depth=(0, 1), learning_rate=(3e-2,), epochs=6, seeds=2,
                  batch_size=(32,), patience=None, map_batch="vmap", ridge_l2=(), folds=None)


def _splits(labels: dict[str, np.ndarray], signal: float, seed: int) -> dict[str, FeatureSplit]:
    """Pooled features of fixed examples: three of eight dimensions carry the class with strength ``signal``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, y in labels.items():
        x = rng.normal(size=(len(y), 8)).astype(np.float32)
        x[:, :3] += signal * np.eye(3, dtype=np.float32)[y]
        out[name] = FeatureSplit(labels=y, pooled=x)
    return out


@pytest.fixture(scope="module")
def labels() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"train": rng.integers(0, 3, 96), "val": rng.integers(0, 3, 240), "test": rng.integers(0, 3, 60)}


def test_an_input_size_below_the_backbone_minimum_is_a_one_line_error_naming_the_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert features.min_input_size("efficientnet_lite0") == 32  # five stride-2 stages
    code = cli.main(["sweep", "--input-size", "8", "--dataset", str(tmp_path / "none"), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--input-size 8" in err and "at least 32 px" in err
    with pytest.raises(ValueError, match="--input-size 'a,224': expected comma-separated pixel sizes"):
        variants.parse_sizes("a,224")
    assert variants.parse_sizes("224, 300") == (224, 300) and variants.parse_sizes(None) is None
    assert features.backbone_source("efficientnet_lite0", input_size=300).preprocessing.input_size == 300


@pytest.mark.slow
def test_two_input_sizes_answer_the_input_size_question(labels: dict[str, np.ndarray]) -> None:
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("members", "data"))
    by_size = {32: _splits(labels, 0.0, 1), 64: _splits(labels, 2.5, 2)}  # the larger size sees the class
    alone = {size: run_sweep(SWEEP, splits, num_classes=3, mesh=mesh) for size, splits in by_size.items()}
    merged = variants.merge_variants(alone, "input_size")
    assert merged.input_sizes == [32, 64] and len(merged.members) == 8
    assert [m["spec"]["input_size"] for m in merged.members] == [32] * 4 + [64] * 4
    # The members' predictions are the per-size sweeps' own, side by side.
    np.testing.assert_array_equal(merged.predictions["val"], np.concatenate([alone[32].predictions["val"],
                                                                             alone[64].predictions["val"]]))
    question = [q for q in merged.questions if q["axis"] == "input_size"]
    assert len(question) == 1 and question[0]["title"] == "Input size: 32 vs 64"
    assert question[0]["verdict"] == "64 better" and question[0]["n_pairs"] == 2 and question[0]["low"] > 0
    # The recommended head is one of the informative size's, and its spec and weights come back for saving.
    assert merged.input_size() == 64 and merged.recommended.endswith("@64px")
    spec, variables = merged.head()
    assert spec.pooling == "none" and variables is merged.variables[merged.recommended_member()]
    assert merged.to_dict()["input_sizes"] == [32, 64]
    # The head soup of the recommended config (its two seeds) reads the merged spec through the result's head().
    soup = ensembles.head_soup(merged, by_size[64])
    assert soup.config == merged.recommended and len(soup.members) == 2 and 0.5 < soup.val <= 1.0
    assert all(merged.members[m]["spec"]["input_size"] == 64 for m in soup.members)


@pytest.mark.slow
def test_merging_sizes_of_other_examples_is_refused(labels: dict[str, np.ndarray]) -> None:
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("members", "data"))
    sweep = SweepSpec(pooling=("none",), depth=(0,), epochs=1, seeds=1, patience=None, map_batch="vmap",
                      ridge_l2=(), folds=None)
    other = {**labels, "val": np.roll(labels["val"], 1)}
    results = {32: run_sweep(sweep, _splits(labels, 1.0, 1), num_classes=3, mesh=mesh),
               64: run_sweep(sweep, _splits(other, 1.0, 1), num_classes=3, mesh=mesh)}
    with pytest.raises(ValueError, match="val_labels differ between the 32 px and 64 px sweeps"):
        variants.merge_variants(results, "input_size")


@pytest.mark.slow
def test_the_job_sweeps_two_sizes_and_the_saved_head_predicts_at_its_own(tmp_path: Path, tiny_backbone: str,
                                                                         make_colour_folder) -> None:
    from jaxheads import job, predict
    from jaxheads.heads import io as heads_io

    root = make_colour_folder(tmp_path / "colours", per_class=10)
    sweep = SweepSpec(pooling=("flatten",), widths=(8,), depth=(1,), epochs=2, seeds=2, patience=None,
                      map_batch="vmap", ridge_l2=(), folds=None)
    out = job.sweep_job(root, tiny_backbone, sweep=sweep,
                        options=job.JobOptions(out_dir=tmp_path / "run", input_size="40,48"),
                        extract=features.ExtractOptions(cache_dir=tmp_path / "cache"))  # neither the backbone's own 32
    size = out.result.input_size()
    assert [q["title"] for q in out.result.questions if q["axis"] == "input_size"] == ["Input size: 40 vs 48"]
    head = heads_io.read_swept_head(out.files["head"])
    assert head.meta["input_size"] == size and head.meta["input_sizes"] == [40, 48]
    assert head.meta["feature_shape"] == [size // 4, size // 4, 16]  # trained on that size's maps
    image = sorted(root.glob("red/*.png"))[:1]
    # A flattened map has the trained size's shape: an image featured at another size would not fit the head.
    assert len(predict.predict_files(out.files["head"], image, top=1)) == 1
