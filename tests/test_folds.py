"""Cross-validation as a member axis: a fold member is the standalone head trained on its fold's rows; the
per-example predictions and intervals a sweep reports; bad fold and metric settings fail at once."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import SweepSpec, run_sweep
from jaxheads.sweep.folds import assign_folds

TOL = 1e-5


def _split(rng, n, k=3, d=10):
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, :k] += 1.5 * np.eye(k)[y]
    return FeatureSplit(labels=y, pooled=x)


def _splits(seed=0):
    rng = np.random.default_rng(seed)
    return {"train": _split(rng, 80), "val": _split(rng, 40), "test": _split(rng, 30)}


def _one_device():
    return Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("members", "data"))


def _sweep(**kw):
    base = dict(pooling=("none",), widths=(8,), epochs=3, batch_size=(16,), learning_rate=(1e-2,), patience=None,
                map_batch="vmap", ridge_l2=(), dropout=(0.3,))
    return SweepSpec(**{**base, **kw})


def _curve(member):
    return np.asarray(member["curves"]["train_loss"] + member["curves"]["val"]["loss"])


@pytest.mark.slow
def test_a_fold_member_equals_the_standalone_head_on_its_folds_rows():
    splits = _splits()
    swept = run_sweep(_sweep(folds=3), splits, num_classes=3, mesh=_one_device())
    pool_x = np.concatenate([splits["train"].pooled, splits["val"].pooled])
    pool_y = np.concatenate([splits["train"].labels, splits["val"].labels])
    fold_of = assign_folds(pool_y, 3, seed=0)
    assert np.array_equal(swept.predictions["val_fold"], fold_of)
    for fold in range(3):
        train, held = fold_of != fold, fold_of == fold
        alone = run_sweep(_sweep(), {"train": FeatureSplit(pool_y[train], pool_x[train]),
                                     "val": FeatureSplit(pool_y[held], pool_x[held])},
                          num_classes=3, mesh=_one_device())
        member = next(m for m in swept.members if m["spec"]["fold"] == fold)
        np.testing.assert_allclose(_curve(member), _curve(alone.members[0]), atol=TOL)
        # Its kept predictions on its own rows are the standalone head's val predictions when both keep the same
        # epoch (the fold member's is chosen on its other folds, the standalone head's on its own val rows).
        if member["best_epoch"] == alone.members[0]["best_epoch"]:
            np.testing.assert_allclose(swept.predictions["val"][member["member"]][held],
                                       alone.predictions["val"][0], atol=TOL)


@pytest.mark.slow
def test_the_sweep_reports_intervals_questions_and_one_test_figure():
    result = run_sweep(_sweep(widths=(4, 16), seeds=2, folds=3, metric="balanced_accuracy"), _splits(),
                       num_classes=3, label_names=["a", "b", "c"])
    assert result.predictions["val"].shape == (12, 120, 3) and result.predictions["test"].shape == (12, 30, 3)
    for row in result.leaderboard:
        ci = row["val_interval"]
        assert ci["low"] <= ci["estimate"] <= ci["high"]
        assert row["vs_best"]["low"] <= row["vs_best"]["diff"] <= row["vs_best"]["high"]
    assert result.leaderboard[0]["vs_best"]["diff"] == 0.0
    (question,) = result.questions
    assert question["title"] == "Width: 4 vs 16" and question["verdict"] in ("4 better", "16 better", "within noise")
    sel = result.selection
    assert sel["val"]["optimistic"] and 0.0 <= sel["test"]["low"] <= sel["test"]["estimate"] <= sel["test"]["high"]
    assert set(sel["per_class_test"]["recall"]) == {"a", "b", "c"} and "3 cross-validation folds" in sel["method"]


@pytest.mark.parametrize("change, message", [
    (dict(folds=1), "--folds"),
    (dict(folds=50), "--folds 50: larger than the smallest class"),
    (dict(metric="top1"), "--metric"),
])
def test_bad_fold_or_metric_settings_fail_naming_the_flag(change, message):
    with pytest.raises(ValueError, match=message):
        run_sweep(_sweep(**change), _splits(), num_classes=3)


@pytest.mark.slow
def test_auto_folds_cross_validate_small_datasets_only():
    from jaxheads.sweep.spec import AUTO_FOLDS, AUTO_FOLDS_MAX_EXAMPLES, AUTO_REPEATS

    auto = _sweep(folds="auto")
    assert auto.for_splits({"train": AUTO_FOLDS_MAX_EXAMPLES, "val": 0}, "test").folds == AUTO_FOLDS
    assert auto.for_splits({"train": AUTO_FOLDS_MAX_EXAMPLES, "val": 1}, "test").folds is None
    result = run_sweep(auto, _splits(), num_classes=3)  # 120 train+val examples: cross-validated
    assert {m["spec"]["fold"] for m in result.members} == set(range(AUTO_FOLDS * AUTO_REPEATS))
