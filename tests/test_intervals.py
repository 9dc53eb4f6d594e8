"""jaxheads.intervals (the moment-corrected interval) and repeated cross-validation (--repeats): the special cases
the docstring promises, the fold term against a hand computation, coverage on synthetic data whose truth is known,
and the repeats' partitions, members, rows and flags."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from jaxheads import cli, intervals, stats
from jaxheads.sweep import SweepSpec
from jaxheads.sweep import folds as sweep_folds
from jaxheads.sweep import inputs as sweep_inputs
from jaxheads.sweep import scores as sweep_scores


def _scores(correct: np.ndarray, labels: np.ndarray, classes: int = 2) -> np.ndarray:
    """(P, N, C) one-hot scores that are right exactly where ``correct`` (P, N) is."""
    predicted = np.where(correct, labels, (labels + 1) % classes)
    return np.eye(classes)[predicted]


def test_one_cell_is_the_example_bootstrap_and_agrees_with_wilson():
    """A fixed split with one seed: one cell, so the corrected interval is exactly the example bootstrap's.

    Tolerance against Wilson: a quarter of the standard error sqrt(p (1 - p) / n). The percentile bootstrap of a
    proportion differs from Wilson's score interval by its centre (Wilson's shrinks toward 1/2 by about
    z^2 / (2 n) * (1/2 - p), under a tenth of a standard error here) and by the Monte Carlo error of a 2.5% quantile
    from B = 2000 draws (about 0.06 standard errors); a quarter leaves room for both and still catches a wrong scale
    (a missing or doubled variance term moves an end by 0.4 standard errors or more)."""
    rng = np.random.default_rng(3)
    n = 400
    labels = rng.integers(0, 2, n)
    correct = rng.random((1, n)) < 0.8
    scores = _scores(correct, labels)
    layout = intervals.make_layout(np.zeros(n, np.int64), 1, seed=5)
    got = intervals.interval(intervals.evidence(scores, labels, "accuracy", "multiclass", layout), layout)
    plain = stats.interval(scores, labels, "accuracy", "multiclass", stats.make_draws(np.zeros(n, np.int64), 1, seed=5))
    assert (got.low, got.high) == (plain.low, plain.high)
    low, high = stats.wilson_interval(int(correct.sum()), n)
    se = np.sqrt(got.estimate * (1 - got.estimate) / n)
    assert abs(got.low - low) < 0.25 * se and abs(got.high - high) < 0.25 * se


def test_k_folds_one_seed_without_fold_spread_is_the_within_fold_bootstrap():
    """R = 1, one seed: the cells are the K folds. Folds exactly alike (the same count right in each) leave no
    fold term, so the interval is the bootstrap of the examples within each fold, draw for draw."""
    k, n = 5, 500
    labels = np.arange(n) % 2
    folds = np.arange(n) % k
    correct = (np.arange(n) // k) % 5 != 0  # 80 of the 100 rows of every fold are right
    scores = _scores(correct[None], labels)
    layout = intervals.make_layout(folds, 1, seed=2)
    e = intervals.evidence(scores, labels, "accuracy", "multiclass", layout)
    assert intervals.cell_term(e)[0] == 0.0
    draws = stats.make_draws(folds, 1, seed=2, resample_folds=False)
    plain = stats.interval(scores, labels, "accuracy", "multiclass", draws)
    got = intervals.interval(e, layout)
    assert (got.low, got.high) == (plain.low, plain.high)


@pytest.mark.slow
def test_fold_term_matches_a_t_interval_when_folds_dominate():
    """Folds far apart and many rows each: tau^2 is the variance of the fold means over K (minus their tiny example
    noise), and the interval is close to the mean +- t_{K-1} * sqrt(var / K)."""
    k, n_fold = 5, 4000
    accuracy = np.array([0.70, 0.75, 0.80, 0.85, 0.90])
    rng = np.random.default_rng(0)
    folds = np.repeat(np.arange(k), n_fold)
    correct = np.concatenate([rng.permutation(np.arange(n_fold) < a * n_fold) for a in accuracy])
    labels = rng.integers(0, 2, k * n_fold)
    layout = intervals.make_layout(folds, 1, seed=1)
    e = intervals.evidence(_scores(correct[None], labels), labels, "accuracy", "multiclass", layout)
    tau2, dof = intervals.cell_term(e)
    assert dof == k - 1
    assert tau2 == pytest.approx(np.var(accuracy, ddof=1) / k, rel=0.02)
    got = intervals.interval(e, layout)
    half = scipy_stats.t.ppf(0.975, k - 1) * np.sqrt(np.var(accuracy, ddof=1) / k)
    assert (got.high - got.low) / 2 == pytest.approx(half, rel=0.05)


def test_a_config_against_itself_is_zero():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    scores = rng.random((2, 300, 3))
    layout = intervals.make_layout(np.arange(300) % 3, 2, n_boot=300)
    e = intervals.evidence(scores, labels, "balanced_accuracy", "multiclass", layout)
    c = intervals.compare(e, e, layout)
    assert (c.diff, c.low, c.high, c.verdict) == (0.0, 0.0, 0.0, "within noise")


@pytest.mark.slow
def test_coverage_on_synthetic_folds_with_a_known_truth():
    """K = 5 folds whose models differ (a random accuracy per fold around the truth 0.75) plus example noise: the
    corrected 95% interval covers the truth near the nominal rate (200 replicates: binomial sd 1.5 points), where
    the plain within-fold bootstrap, blind to the fold noise, does not."""
    rng = np.random.default_rng(11)
    k, n_fold, truth, fold_sd, replicates = 5, 120, 0.75, 0.05, 200
    folds = np.repeat(np.arange(k), n_fold)
    labels = np.zeros(k * n_fold, np.int64)
    covered, plain_covered = 0, 0
    for r in range(replicates):
        p = np.clip(truth + fold_sd * rng.standard_normal(k), 0, 1)[folds]
        scores = _scores((rng.random(len(p)) < p)[None], labels)
        layout = intervals.make_layout(folds, 1, n_boot=400, seed=r)
        got = intervals.interval(intervals.evidence(scores, labels, "accuracy", "multiclass", layout), layout)
        covered += got.low <= truth <= got.high
        plain = stats.interval(scores, labels, "accuracy", "multiclass",
                               stats.make_draws(folds, 1, n_boot=400, seed=r, resample_folds=False))
        plain_covered += plain.low <= truth <= plain.high
    assert 0.91 <= covered / replicates <= 0.99
    assert plain_covered / replicates < 0.85


def test_repeats_draw_independent_stratified_partitions():
    labels = np.repeat(np.arange(3), 40)
    one = sweep_folds.assign_repeats(labels, 5, 1, seed=7)
    assert np.array_equal(one, sweep_folds.assign_folds(labels, 5, 7))  # R = 1 is plain K-fold, row for row
    three = sweep_folds.assign_repeats(labels, 5, 3, seed=7)
    assert three.shape == (3, 120) and np.array_equal(three[0], one)
    assert not np.array_equal(three[1], three[0]) and not np.array_equal(three[2], three[1])
    for part in three:  # every partition deals each class evenly over the folds
        assert all(np.bincount(part[labels == c], minlength=5).tolist() == [8] * 5 for c in range(3))
    assert sweep_folds.fold_count(three) == 15 and sweep_folds.fold_count(one) == 5
    scored, trained = sweep_folds.fold_rows(three, 2 * 5 + 3)
    assert np.array_equal(scored, np.flatnonzero(three[2] == 3))
    assert np.array_equal(trained, np.flatnonzero(three[2] != 3))
    assert sweep_folds.min_train_rows(three) == 96


def test_repeat_members_have_their_own_fold_and_seed():
    base = dict(pooling=("none",), widths=(4,), depth=(1,), folds=5, seeds=2)
    plain = SweepSpec(**base).expand(3, "multiclass")
    assert [(m.seed, m.fold) for m in plain] == [(s, f) for s in range(2) for f in range(5)]
    repeated = SweepSpec(**base, repeats=3).expand(3, "multiclass")
    assert len(repeated) == 30 and repeated[:10] == plain  # repeat 0 is the unrepeated sweep
    assert {(m.seed, m.fold) for m in repeated} == {(r * 2 + s, r * 5 + f) for r in range(3) for s in range(2)
                                                    for f in range(5)}
    assert len({m.config_id() for m in repeated}) == 1


@pytest.mark.parametrize("fields, message", [
    ({"folds": 5, "repeats": 0}, "--repeats: must be a whole number >= 1"),
    ({"folds": None, "repeats": 3}, "--repeats 3:"),
])
def test_bad_repeats_fail_in_one_line_naming_the_flag(fields, message):
    with pytest.raises(ValueError) as err:
        SweepSpec(**fields)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--repeats", "3", "--folds", "none"]])
def test_bad_repeats_flags_fail_in_one_line(argv, capsys, jaxheads_cache):
    code = cli.main(["sweep", *argv])
    err = capsys.readouterr().err
    assert code == 2 and "--repeats" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_auto_folds_that_choose_the_fixed_split_refuse_repeats():
    from jaxheads.sweep.spec import AUTO_FOLDS

    spec = SweepSpec(folds="auto", repeats=2)
    with pytest.raises(ValueError, match="--repeats 2: --folds auto chose the fixed split"):
        spec.for_splits({"train": 20_000, "val": 5_000}, "test")
    assert spec.for_splits({"train": 200, "val": 50}, "test").folds == AUTO_FOLDS


def test_repeated_rows_reach_the_right_member():
    """The engine's fold rows and the config's pass-by-pass val scores read the (R, N) partitions by global id."""
    labels = np.repeat(np.arange(2), 30)
    parts = sweep_folds.assign_repeats(labels, 3, 2, seed=1)
    rows, mask, train = sweep_inputs._fold_rows(parts, {"val": 60, "test": 10})
    for f in range(6):
        scored, trained = sweep_folds.fold_rows(parts, f)
        assert np.array_equal(rows["val"][f][mask["val"][f]], scored) and np.array_equal(train[f], trained)
    members = [{"member": i, "config": "c", "spec": {"seed": m.seed, "fold": m.fold}}
               for i, m in enumerate(SweepSpec(pooling=("none",), widths=(4,), folds=3, repeats=2).expand(2, "multiclass"))]
    val = np.stack([np.full((60, 2), i, np.float32) for i in range(len(members))])
    got = sweep_scores.val_scores(members, {"val": val, "val_fold": parts})
    assert got.shape == (2, 60, 2)
    for m in members:
        scored, _ = sweep_folds.fold_rows(parts, m["spec"]["fold"])
        assert (got[m["spec"]["seed"], scored] == m["member"]).all()


def test_the_method_sentence_names_what_is_covered_and_what_is_not():
    cv = intervals.describe(2000, 5, 1, 0.95, repeats=3)
    assert cv.startswith("95% intervals from 2,000 paired draws") and "15 models" in cv and "training rows" in cv
    assert "not included: the overlap of the folds' training rows" in cv and cv.count(".") == 1
    one = intervals.describe(1000, 1, 1, 0.9)
    assert "seed-to-seed noise (one model)" in one and "for this training set" in one and "models (" not in one


@pytest.mark.slow
def test_a_repeated_cross_validated_sweep_trains_every_partition_in_one_run():
    import jaxheads

    rng = np.random.default_rng(3)
    y = np.arange(90) % 3
    x = (4 * np.eye(3)[y] + rng.normal(size=(90, 3))).astype(np.float32)
    train, val = (jaxheads.FeatureSplit(labels=y[s], pooled=x[s]) for s in (slice(0, 60), slice(60, 90)))
    sweep = SweepSpec(pooling=("none",), depth=(0,), learning_rate=(0.05,), epochs=20, folds=3, repeats=2,
                      ridge_l2=())
    result = jaxheads.run_sweep(sweep, {"train": train, "val": val}, num_classes=3)
    assert len(result.members) == 2 * 3  # one config: R x K members, trained in the same program
    assert sorted(m["spec"]["fold"] for m in result.members) == list(range(6))
    fold_of = result.predictions["val_fold"]
    assert fold_of.shape == (2, 90) and not np.array_equal(fold_of[0], fold_of[1])  # two distinct partitions
    config = sweep_scores.config_scores(result)[result.recommended]
    assert np.isfinite(config.val).all() and result.selection["val"]["estimate"] > 0.5
