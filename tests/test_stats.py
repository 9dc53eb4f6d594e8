"""jaxheads.stats: metrics against scikit-learn (plain and weighted), the draws, intervals and comparisons."""

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxheads import stats as st

# Class 4 of the multiclass data is predicted but never a label, on purpose (macro F1 must still count it).
pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")

S, N, C = 3, 240, 5


def _multiclass(seed: int = 0):
    """(S, N, C) scores rounded to one decimal (argmax ties) and labels; class 4 is never a label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C - 1, N)
    scores = np.round(rng.normal(size=(S, N, C)) + 1.5 * np.eye(C)[labels][None], 1)
    return scores, labels


def _multilabel(seed: int = 0):
    """(S, N, C) scores with many ties and (N, C) labels of varied prevalence."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((N, C)) < np.linspace(0.1, 0.6, C)).astype(np.int64)
    scores = np.round(rng.normal(size=(S, N, C)) + labels[None], 1)
    return scores, labels


def _sklearn(scores_s: np.ndarray, labels: np.ndarray, metric: str) -> float:
    if metric == "accuracy":
        return skm.accuracy_score(labels, scores_s.argmax(-1))
    if metric == "balanced_accuracy":
        return skm.balanced_accuracy_score(labels, scores_s.argmax(-1))
    if metric == "macro_f1":
        return skm.f1_score(labels, scores_s.argmax(-1), average="macro")
    if metric == "macro_average_precision":
        return skm.average_precision_score(labels, scores_s, average="macro")
    return skm.roc_auc_score(labels, scores_s, average="macro")


CASES = [(m, "multiclass") for m in st.MULTICLASS_METRICS] + [(m, "multilabel") for m in st.MULTILABEL_METRICS]


@pytest.mark.parametrize("metric,task", CASES)
def test_metric_values_match_sklearn(metric, task):
    scores, labels = _multiclass() if task == "multiclass" else _multilabel()
    values = st.metric_values(scores, labels, metric, task)
    assert values.shape == (S,)
    expected = [_sklearn(scores[s], labels, metric) for s in range(S)]
    np.testing.assert_allclose(values, expected, rtol=1e-12, atol=1e-12)
    assert st.point_estimate(scores, labels, metric, task) == pytest.approx(np.mean(expected), abs=1e-12)


@pytest.mark.parametrize("metric,task", CASES)
def test_integer_weights_equal_repeated_rows(metric, task):
    scores, labels = _multiclass(1) if task == "multiclass" else _multilabel(1)
    rng = np.random.default_rng(2)
    weights = rng.integers(0, 4, size=(4, N)).astype(np.float32)
    values = st.metric_values(scores, labels, metric, task, weights)
    assert values.shape == (4, S)
    for b in range(4):
        rows = np.repeat(np.arange(N), weights[b].astype(int))
        expected = [_sklearn(scores[s][rows], labels[rows], metric) for s in range(S)]
        np.testing.assert_allclose(values[b], expected, rtol=1e-12, atol=1e-12)


def test_make_draws_hierarchy_and_determinism():
    folds = np.repeat(np.arange(4), [30, 50, 70, 90])
    draws = st.make_draws(folds, 3, n_boot=300, seed=5)
    assert draws.example_weights.shape == (300, folds.size) and draws.example_weights.dtype == np.float32
    assert draws.seed_index.shape == (300, 3) and draws.seed_index.min() >= 0 and draws.seed_index.max() <= 2
    fold_sums = np.stack([draws.example_weights[:, folds == k].sum(1) for k in range(4)], axis=1)
    sizes = np.array([30, 50, 70, 90])
    times = fold_sums / sizes
    np.testing.assert_array_equal(times, np.round(times))  # every drawn fold keeps its size
    np.testing.assert_array_equal(times.sum(1), 4)  # K folds drawn per draw
    assert (times == 0).any() and (times >= 2).any()  # folds really are resampled
    again = st.make_draws(folds, 3, n_boot=300, seed=5)
    np.testing.assert_array_equal(draws.example_weights, again.example_weights)
    np.testing.assert_array_equal(draws.seed_index, again.seed_index)
    other = st.make_draws(folds, 3, n_boot=300, seed=6)
    assert not np.array_equal(draws.example_weights, other.example_weights)


def test_make_draws_without_fold_resampling_is_stratified():
    folds = np.repeat(np.arange(3), [20, 30, 40])
    draws = st.make_draws(folds, 2, n_boot=100, seed=0, resample_folds=False)
    for k, size in enumerate([20, 30, 40]):
        np.testing.assert_array_equal(draws.example_weights[:, folds == k].sum(1), size)
    text = st.describe_method(100, 3, 2, 0.95, resample_folds=False)
    assert "within each of the 3 cross-validation folds" in text


def test_make_draws_one_fold_one_seed():
    draws = st.make_draws(np.zeros(N, np.int64), 1, n_boot=200, seed=0)
    np.testing.assert_array_equal(draws.example_weights.sum(1), N)
    np.testing.assert_array_equal(draws.seed_index, 0)
    assert draws.seed_index.shape == (200, 1)


def test_bootstrap_interval_of_one_accuracy_agrees_with_wilson():
    n, correct = 500, 400
    labels = np.zeros(n, np.int64)
    scores = np.zeros((1, n, 2))
    scores[0, :correct, 0] = 1.0  # first 400 predicted class 0 (right), the rest class 1 (wrong)
    scores[0, correct:, 1] = 1.0
    draws = st.make_draws(np.zeros(n, np.int64), 1, n_boot=2000, seed=0)
    result = st.interval(scores, labels, "accuracy", "multiclass", draws)
    low, high = st.wilson_interval(correct, n)
    assert result.estimate == pytest.approx(0.8)
    assert abs(result.low - low) < 0.01 and abs(result.high - high) < 0.01
    assert result.level == 0.95


def _two_sides(seed: int = 0, n: int = 400):
    """Side a: 70% right; side b: the same predictions with many more right. Two seeds each."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    right = np.eye(3)[labels]
    wrong = np.eye(3)[(labels + 1) % 3]
    a = np.where((rng.random((2, n)) < 0.7)[..., None], right, wrong)
    b = np.where((rng.random((2, n)) < 0.9)[..., None], right, wrong)
    return a, b, labels


def test_compare_self_better_and_mirror():
    a, b, labels = _two_sides()
    draws = st.make_draws(np.arange(len(labels)) % 4, 2, n_boot=500, seed=1)
    same = st.compare(a, a, labels, "accuracy", "multiclass", draws)
    assert (same.diff, same.low, same.high, same.p_b_better) == (0.0, 0.0, 0.0, 0.5)
    assert same.verdict == "within noise"
    better = st.compare(a, b, labels, "macro_f1", "multiclass", draws)
    assert better.verdict == "b better" and better.low > 0 and better.p_b_better == 1.0
    mirror = st.compare(b, a, labels, "macro_f1", "multiclass", draws)
    assert mirror.verdict == "a better"
    assert (mirror.low, mirror.high, mirror.diff) == pytest.approx((-better.high, -better.low, -better.diff))
    assert mirror.p_b_better == pytest.approx(1.0 - better.p_b_better)


def test_compare_pooled_averages_configs():
    a, b, labels = _two_sides(3)
    draws = st.make_draws(np.zeros(len(labels), np.int64), 2, n_boot=300, seed=2)
    pooled = st.compare_pooled([a, b], [b, b], labels, "accuracy", "multiclass", draws)
    single = st.compare(a, b, labels, "accuracy", "multiclass", draws)
    assert pooled.a == pytest.approx((single.a + single.b) / 2) and pooled.b == pytest.approx(single.b)
    assert (pooled.low, pooled.high) == pytest.approx((single.low / 2, single.high / 2))
    assert pooled.verdict == "b better"


def test_smallest_within_noise():
    def row(diff, low, high):
        verdict = "within noise" if low <= 0 <= high else "a better"
        return st.Comparison(0.9, 0.9 + diff, diff, low, high, p_b_better=0.5, level=0.95, verdict=verdict)

    rows = [row(0.0, 0.0, 0.0), row(-0.01, -0.03, 0.01), row(-0.005, -0.02, 0.01), row(-0.08, -0.1, -0.06)]
    assert st.smallest_within_noise(rows, [100, 10, 10, 1]) == 2  # size 1 is worse; tie at 10 -> closer to best
    assert st.smallest_within_noise(rows[:1], [5]) == 0


def test_wilson_interval_known_values():
    low, high = st.wilson_interval(400, 500)
    assert (low, high) == pytest.approx((0.7627, 0.8327), abs=1e-4)
    assert st.wilson_interval(0, 10)[0] == 0.0 and st.wilson_interval(10, 10)[1] == 1.0


def test_describe_method_is_one_sentence():
    text = st.describe_method(2000, 5, 2, 0.95)
    assert "2,000" in text and "5 cross-validation folds" in text and "2 seeds" in text and "95%" in text
    assert text.count(".") == 1 and text.endswith(".")
    assert "examples" in st.describe_method(1000, 1, 1, 0.9)


def test_errors():
    with pytest.raises(ValueError, match="--metric") as err:
        st.check_metric("top5", "multiclass")
    assert "\n" not in str(err.value) and "accuracy" in str(err.value)
    with pytest.raises(ValueError, match="--metric"):
        st.check_metric("accuracy", "multilabel")
    assert st.check_metric("macro_roc_auc", "multilabel") == "macro_roc_auc"
    scores, labels = _multiclass()
    with pytest.raises(ValueError, match="seeds"):
        st.compare(scores, scores, labels, "accuracy", "multiclass", st.make_draws(np.zeros(N, int), 2, n_boot=10))
    with pytest.raises(ValueError, match="labels"):
        st.metric_values(scores, labels[:-1], "accuracy", "multiclass")
