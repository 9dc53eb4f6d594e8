"""jaxheads.metrics against scikit-learn on fixed data: ties, masked padding rows, vmap over members."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxheads import metrics as M

N, C, K, PAD = 160, 8, 5, 24

# Jitted once per shape: eager calls would compile every primitive separately, which dominates test time.
multiclass_metrics = jax.jit(M.multiclass_metrics)
multilabel_metrics = jax.jit(M.multilabel_metrics)
tune_thresholds = jax.jit(M.tune_thresholds)
multilabel_f1 = jax.jit(M.multilabel_f1)


def _multiclass_data(seed: int = 0):
    """Logits rounded to one decimal (many ties) with PAD padding rows of garbage (huge logits, bad labels)."""
    rng = np.random.default_rng(seed)
    logits = np.round(rng.normal(size=(N + PAD, C)), 1).astype(np.float32)
    labels = rng.integers(0, C, N + PAD)
    logits[N:] = 1e6 * rng.normal(size=(PAD, C))
    labels[N:] = -7  # padding labels need not be valid class ids
    mask = np.arange(N + PAD) < N
    return logits, labels, mask


def _multilabel_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((N + PAD, K)) < np.linspace(0.1, 0.6, K)[None, :]).astype(np.int32)
    scores = np.round(rng.normal(size=(N + PAD, K)) + labels, 1).astype(np.float32)  # informative, tied
    scores[N:] = 1e6
    labels[N:] = 1
    mask = np.arange(N + PAD) < N
    return scores, labels, mask


def _sklearn_multiclass(logits, labels):
    preds = logits.argmax(1)
    return {
        "accuracy": skm.accuracy_score(labels, preds),
        "top5": skm.top_k_accuracy_score(labels, logits, k=5, labels=np.arange(logits.shape[1])),
        "macro_f1": skm.f1_score(labels, preds, average="macro"),
    }


def test_multiclass_matches_sklearn_with_ties_and_padding():
    logits, labels, mask = _multiclass_data()
    ours = multiclass_metrics(logits, labels, mask)
    ref = _sklearn_multiclass(logits[:N], labels[:N])
    for name, value in ref.items():
        assert float(ours[name]) == pytest.approx(value, abs=1e-6), name


def test_top5_tie_rule_and_few_classes():
    # Label 0 ties with every other class: scikit-learn ranks tied higher ids first, so it is not in the top 5.
    logits = np.zeros((2, 7), np.float32)
    labels = np.array([0, 6])
    ours = multiclass_metrics(logits, labels, np.ones(2, bool))
    assert float(ours["top5"]) == pytest.approx(skm.top_k_accuracy_score(labels, logits, k=5, labels=np.arange(7))) == 0.5
    assert float(ours["accuracy"]) == 0.5  # argmax ties go to class 0, like np.argmax
    # With C <= 5 top-5 is trivially 1 (documented; scikit-learn warns and returns 1 too).
    few = multiclass_metrics(np.random.default_rng(1).normal(size=(10, 3)), np.zeros(10, int), np.ones(10))
    assert float(few["top5"]) == 1.0


def test_macro_f1_leaves_out_absent_classes():
    labels = np.array([0, 0, 1, 1, 1])
    preds = np.array([0, 1, 1, 1, 0])
    logits = np.eye(6, dtype=np.float32)[preds]  # classes 2..5: neither true nor predicted
    ours = multiclass_metrics(logits, labels, np.ones(5))
    assert float(ours["macro_f1"]) == pytest.approx(skm.f1_score(labels, preds, average="macro"))


@pytest.mark.parametrize("num_classes", [C, M.ONE_HOT_CONFUSION_MAX_CLASSES + 1])  # one-hot and scatter paths
def test_confusion_matrix_matches_sklearn(num_classes):
    logits, labels, mask = _multiclass_data(1)
    preds = logits.argmax(1)
    labels[:3] = num_classes - 1  # the largest class id is counted in both paths
    ours = jax.jit(M.confusion_matrix, static_argnums=2)(preds, labels, num_classes, mask)
    np.testing.assert_array_equal(ours, skm.confusion_matrix(labels[:N], preds[:N], labels=np.arange(num_classes)))
    assert ours.dtype == jnp.int32


def test_multilabel_matches_sklearn_with_ties_and_padding():
    scores, labels, mask = _multilabel_data()
    ours = multilabel_metrics(scores, labels, mask)
    auc = skm.roc_auc_score(labels[:N], scores[:N], average=None)
    ap = skm.average_precision_score(labels[:N], scores[:N], average=None)
    np.testing.assert_allclose(ours["roc_auc"], auc, atol=1e-6)
    np.testing.assert_allclose(ours["average_precision"], ap, atol=1e-6)
    assert float(ours["macro_roc_auc"]) == pytest.approx(auc.mean(), abs=1e-6)
    assert float(ours["macro_average_precision"]) == pytest.approx(ap.mean(), abs=1e-6)


def test_all_tied_scores_and_undefined_classes():
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    scores = np.zeros((4, 3), np.float32)
    ours = multilabel_metrics(scores, labels, np.ones(4))
    assert float(ours["roc_auc"][0]) == pytest.approx(skm.roc_auc_score(labels[:, 0], scores[:, 0])) == 0.5
    assert float(ours["average_precision"][0]) == pytest.approx(
        skm.average_precision_score(labels[:, 0], scores[:, 0]))
    # Class 1 has no positive, class 2 no negative: NaN there, and macro means use the defined classes only.
    assert np.isnan(ours["roc_auc"][1]) and np.isnan(ours["roc_auc"][2]) and np.isnan(ours["average_precision"][1])
    assert float(ours["macro_roc_auc"]) == 0.5
    assert float(ours["average_precision"][2]) == 1.0


def _best_f1_by_brute_force(scores, labels):
    return max(skm.f1_score(labels, scores >= s) for s in np.unique(scores))


@pytest.mark.slow
def test_tuned_thresholds_reach_the_best_f1():
    scores, labels, mask = _multilabel_data(2)
    thresholds = tune_thresholds(scores, labels, mask)
    f1 = multilabel_f1(scores, labels, mask, thresholds)
    for k in range(K):
        best = _best_f1_by_brute_force(scores[:N, k], labels[:N, k])
        assert float(f1["f1"][k]) == pytest.approx(best, abs=1e-6)
        assert float(f1["f1"][k]) == pytest.approx(skm.f1_score(labels[:N, k], scores[:N, k] >= thresholds[k]))
    # No positive at all: never predict it.
    assert np.isinf(tune_thresholds(scores[:, :1], np.zeros((N + PAD, 1)), mask)[0])


@pytest.mark.slow
def test_metrics_vmap_over_members():
    """A (members, N, ...) stack gives, member by member, what the unbatched call gives."""
    members = [_multiclass_data(s) for s in range(3)]
    logits = np.stack([m[0] for m in members])
    labels = np.stack([m[1] for m in members])
    masks = np.stack([np.arange(N + PAD) < N - 10 * s for s in range(3)])
    batched = jax.jit(jax.vmap(M.multiclass_metrics))(logits, labels, masks)
    for s in range(3):
        v = masks[s]
        ref = _sklearn_multiclass(logits[s][v], labels[s][v])
        for name, value in ref.items():
            assert float(batched[name][s]) == pytest.approx(value, abs=1e-6), (s, name)

    ml = [_multilabel_data(s) for s in range(3)]
    scores, mlabels = np.stack([m[0] for m in ml]), np.stack([m[1] for m in ml])
    batched = jax.jit(jax.vmap(M.multilabel_metrics))(scores, mlabels, masks)
    thresholds = jax.jit(jax.vmap(M.tune_thresholds))(scores, mlabels, masks)
    for s in range(3):
        v = masks[s]
        np.testing.assert_allclose(batched["roc_auc"][s], skm.roc_auc_score(mlabels[s][v], scores[s][v],
                                                                            average=None), atol=1e-6)
        np.testing.assert_allclose(batched["average_precision"][s],
                                   skm.average_precision_score(mlabels[s][v], scores[s][v], average=None), atol=1e-6)
        np.testing.assert_allclose(thresholds[s], tune_thresholds(scores[s], mlabels[s], masks[s]))
