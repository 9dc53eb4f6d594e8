"""The closed-form ridge probe: parity with scikit-learn's Ridge, and it learns a separable problem."""

import json

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from jaxheads import probe
from jaxheads.features.split import FeatureSplit


def _regression_data(n: int, d: int, c: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.1, 5.0, d)  # uneven feature scales, so standardisation matters
    x = (rng.normal(size=(n, d)) * scale[None, :] + 3.0).astype(np.float32)
    y = (x @ rng.normal(size=(d, c)) + rng.normal(size=(n, c))).astype(np.float32)
    x_eval = (rng.normal(size=(40, d)) * scale[None, :] + 3.0).astype(np.float32)
    return x, y, x_eval


@pytest.mark.parametrize("n,d", [(150, 24), (30, 60)], ids=["primal_N>D", "dual_N<D"])
@pytest.mark.parametrize("standardize", [True, False])
def test_matches_sklearn_ridge(n, d, standardize):
    x, y, x_eval = _regression_data(n, d, 3)
    alphas = [0.5, 10.0, 300.0]
    cache = probe.fit_ridge_eig(x, y, standardize=standardize)
    ours = np.asarray(probe.ridge_predict(cache, x_eval, alphas))
    scaler = StandardScaler(with_std=standardize).fit(x.astype(np.float64))
    for i, alpha in enumerate(alphas):
        ref = Ridge(alpha=alpha).fit(scaler.transform(x), y).predict(scaler.transform(x_eval))
        scale = np.abs(ref).max()
        np.testing.assert_allclose(ours[i] / scale, ref / scale, atol=1e-4, err_msg=f"alpha={alpha}")
        w, b = probe.ridge_weights(cache, alpha)  # the same predictions on the original feature scale
        np.testing.assert_allclose((x_eval @ np.asarray(w) + np.asarray(b)) / scale, ref / scale, atol=1e-4)


def _blobs(n_per_class: int, seed: int, num_classes: int = 4, dim: int = 16):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(num_classes, dim)) * 4.0
    labels = np.repeat(np.arange(num_classes), n_per_class)
    feats = centres[labels] + rng.normal(size=(len(labels), dim))
    return FeatureSplit(labels=labels, pooled=feats.astype(np.float16))  # the cache stores float16


def test_learns_separable_multiclass_and_reports_json():
    result = probe.ridge_probe(_blobs(30, 0), _blobs(10, 1), _blobs(10, 2), l2_grid=[1e-2, 1.0, 1e2, 1e6])
    assert result["task"] == "multiclass" and result["select_metric"] == "accuracy"
    assert result["best"]["val"]["accuracy"] == 1.0 and result["best"]["test"]["accuracy"] == 1.0
    perfect = [l2 for l2, acc in zip(result["l2_grid"], result["val"]["accuracy"]) if acc == 1.0]
    assert result["best"]["l2"] == max(perfect)  # equal validation accuracy: the largest such λ wins
    assert len(result["test"]["macro_f1"]) == 4 and result["params"] == 16 * 4 + 4
    assert json.loads(json.dumps(result)) == result


@pytest.mark.slow
def test_multilabel_probe_and_maps_only_split():
    rng = np.random.default_rng(0)

    def split(n):
        x = rng.normal(size=(n, 2, 2, 12)).astype(np.float32)
        pooled = x.mean(axis=(1, 2))
        labels = np.stack([pooled[:, 0] > 0, pooled[:, 1] + pooled[:, 2] > 0, pooled[:, 3] > 0.3], 1)
        return FeatureSplit(labels=labels.astype(np.int32), maps=x)

    result = probe.ridge_probe(split(200), split(60), split(60), l2_grid=[0.1, 10.0])
    assert result["task"] == "multilabel" and result["select_metric"] == "macro_average_precision"
    best = result["best"]
    assert best["test"]["macro_roc_auc"] > 0.95 and best["test"]["macro_f1"] > 0.8
    assert len(best["val"]["roc_auc"]) == 3  # per-class values at the chosen λ
    assert set(result["val"]) == {"macro_roc_auc", "macro_average_precision", "macro_f1"}
    assert "test" not in probe.ridge_probe(split(200), split(60), l2_grid=[0.1, 10.0])  # same shapes: no recompile


def test_sweep_rows_schema():
    splits = {"train": _blobs(20, 0), "val": _blobs(8, 1), "test": _blobs(8, 2)}
    rows = probe.sweep_rows(splits, l2=[10.0, 0.1], task="multiclass", num_classes=4, metric="macro_f1")
    assert [r["l2"] for r in rows] == [0.1, 10.0] and sum(r["best"] for r in rows) == 1
    assert set(rows[0]["val"]) == {"accuracy", "top5", "macro_f1"} and rows[0]["test"]["accuracy"] == 1.0


def test_two_backbones_features_side_by_side_probe_as_one_candidate():
    from jaxheads.features.split import concat_pooled

    a = {"train": _blobs(20, 0), "val": _blobs(8, 1)}
    b = {k: FeatureSplit(labels=s.labels, pooled=s.pooled[:, :3] * 2.0) for k, s in a.items()}
    both = concat_pooled(a, b)
    assert both["train"].pooled.shape == (len(a["train"]), a["train"].pooled.shape[1] + 3)
    np.testing.assert_array_equal(both["val"].pooled[:, -3:], b["val"].pooled)
    out = probe.ridge_probe(both["train"], both["val"], num_classes=4)
    assert out["num_features"] == both["train"].pooled.shape[1]
    shuffled = {k: FeatureSplit(labels=s.labels[::-1], pooled=s.pooled) for k, s in b.items()}
    with pytest.raises(ValueError, match="different examples"):
        concat_pooled(a, shuffled)


@pytest.mark.parametrize("standardize", [True, False])
def test_chunked_fit_equals_the_whole_fit(standardize):
    x, y, x_eval = _regression_data(300, 24, 3)
    whole = probe.fit_ridge_eig(x, y, standardize=standardize)
    chunked = probe.fit_ridge_chunked(x, y, standardize=standardize, chunk_rows=64)  # 300 rows: a padded last chunk
    np.testing.assert_allclose(np.asarray(chunked.x_mean), np.asarray(whole.x_mean), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(chunked.x_scale), np.asarray(whole.x_scale), rtol=1e-5)
    alphas = [0.5, 10.0, 300.0]
    ours, ref = (np.asarray(probe.ridge_predict(c, x_eval, alphas)) for c in (chunked, whole))
    np.testing.assert_allclose(ours / np.abs(ref).max(), ref / np.abs(ref).max(), atol=1e-5)
    for i, alpha in enumerate(alphas):  # the weights on the original scale score the same
        w, b = probe.ridge_weights(chunked, alpha)
        scores = x_eval @ np.asarray(w) + np.asarray(b)
        np.testing.assert_allclose(scores / np.abs(ref).max(), ref[i] / np.abs(ref).max(), atol=1e-5)


def test_chunked_fit_only_centres_a_constant_feature():
    x, y, x_eval = _regression_data(300, 24, 3)
    x[:, 5] = 2.5
    whole, chunked = probe.fit_ridge_eig(x, y), probe.fit_ridge_chunked(x, y, chunk_rows=64)
    assert float(chunked.x_scale[5]) == float(whole.x_scale[5]) == 1.0
    ours, ref = (np.asarray(probe.ridge_predict(c, x_eval, [300.0])) for c in (chunked, whole))
    np.testing.assert_allclose(ours / np.abs(ref).max(), ref / np.abs(ref).max(), atol=1e-5)


def test_one_hot_targets_built_per_chunk_give_exactly_the_dense_fit():
    x, _, _ = _regression_data(300, 24, 3)
    labels = np.random.default_rng(3).integers(0, 5, 300)
    sparse = probe.OneHotRows(labels, 5)
    dense = np.eye(5, dtype=np.float32)[labels]
    np.testing.assert_array_equal(np.asarray(sparse), dense)
    np.testing.assert_array_equal(sparse[64:128], dense[64:128])
    a, b = (probe.fit_ridge_chunked(x, y, chunk_rows=64) for y in (sparse, dense))
    for leaf_a, leaf_b in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(leaf_a), np.asarray(leaf_b))


@pytest.mark.slow
def test_a_long_training_split_is_fitted_in_chunks_with_the_same_result():
    train, val = _blobs(1050, 0), _blobs(100, 1)  # 4,200 rows > RIDGE_CHUNK_ROWS
    assert probe.uses_chunks(len(train), 16) and not probe.uses_chunks(len(val), 16)
    chunked = probe.ridge_probe(train, val, l2_grid=[1.0, 1e3, 1e5])
    y = np.eye(4, dtype=np.float32)[train.labels]
    whole = probe.fit_ridge_eig(train.pooled.astype(np.float32), y)
    scores = np.asarray(probe.ridge_predict(whole, val.pooled.astype(np.float32), [1.0, 1e3, 1e5]))
    np.testing.assert_allclose(chunked["val"]["accuracy"], (scores.argmax(-1) == val.labels).mean(-1), atol=1e-6)
    maps_only = FeatureSplit(labels=train.labels, maps=np.broadcast_to(train.pooled[:, None, None], (4200, 2, 2, 16)))
    again = probe.ridge_probe(maps_only, val, l2_grid=[1.0, 1e3, 1e5])
    assert again["val"] == chunked["val"] and again["num_train"] == 4200 and again["num_features"] == 16
