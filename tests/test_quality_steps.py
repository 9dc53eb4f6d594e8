"""The quality benchmark's steps hold their identities: an ensemble of one member is that member, and a fine-tune
with zero learning rates is the starting model, metric for metric."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxheads import backbones, data, ensembles, finetuning, stats
from jaxheads.heads import io as heads_io
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import SweepSpec, run_sweep


def _splits(seed: int) -> dict[str, FeatureSplit]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("train", 60), ("val", 40), ("test", 40)):
        y = rng.integers(0, 3, n)
        x = rng.normal(size=(n, 6)).astype(np.float32)
        x[:, :3] += 1.5 * np.eye(3, dtype=np.float32)[y]
        out[name] = FeatureSplit(labels=y, pooled=x)
    return out


@pytest.mark.slow
def test_an_ensemble_of_one_member_is_that_member_exactly() -> None:
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("members", "data"))
    sweep = SweepSpec(pooling=("none",), widths=(8,), depth=(1,), epochs=3, seeds=1, batch_size=(16,),
                      patience=None, map_batch="vmap", ridge_l2=(), folds=None)
    result = run_sweep(sweep, _splits(0), num_classes=3, mesh=mesh)
    assert len(result.members) == 1
    val, test = result.predictions["val"][0], result.predictions["test"][0]
    labels = result.predictions["test_labels"]
    for report in (ensembles.top_k_ensemble(result, k=1, metrics=("accuracy", "macro_f1"), n_boot=100),
                   ensembles.greedy_ensemble(result, steps=3, metrics=("accuracy", "macro_f1"), n_boot=100)):
        assert report.configs == (result.members[0]["config"],) and report.weights == (1.0,)
        np.testing.assert_array_equal(report.val_probs, val)
        np.testing.assert_array_equal(report.test_probs, test)
        for metric in ("accuracy", "macro_f1"):
            assert report.test[metric].estimate == stats.point_estimate(test[None], labels, metric, "multiclass")
            assert report.vs_single[metric].diff == 0.0
        assert report.test["accuracy"].estimate == pytest.approx(result.members[0]["test"]["accuracy"])


@pytest.mark.slow
def test_a_finetune_with_zero_learning_rates_returns_the_starting_model(
        tmp_path: Path, tiny_backbone, make_colour_folder, save_tiny_head) -> None:
    root = make_colour_folder(tmp_path / "colours", per_class=10)
    ds = data.load_dataset(root, val_fraction=0.2, test_fraction=0.2)
    head = save_tiny_head(tmp_path / "head", ds.classes)
    config = finetuning.FinetuneConfig(epochs=2, batch_size=6, patience=None, unfreeze=2, learning_rate=0.0,
                                       backbone_learning_rate=0.0)
    run = finetuning.finetune(head, ds, config, out_dir=tmp_path / "ft")
    assert run.epochs_run == 2 and all(h["val"] == run.before for h in run.history[1:])
    assert run.best == run.before and not run.improved
    gain = run.gain["test"]["accuracy"]
    assert gain["a"] == gain["b"] and gain["diff"] == 0.0
    saved = finetuning.load_model(run.model_dir).variables
    start = {"backbone": backbones.load(tiny_backbone).variables, "head": heads_io.load_head(head)[1]}
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(start), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
