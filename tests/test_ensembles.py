"""Free ensembles from a sweep's kept predictions: top-k, greedy selection, and the head soup, on synthetic sweep
outputs with known answers, plus one tiny real sweep with cross-validation."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxheads import ensembles, heads, predict
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import SweepResult, SweepSpec, run_sweep
from jaxheads.sweep.spec import MemberSpec
from jaxheads.sweep.scores import val_scores as _val_scores


def _result(val: np.ndarray, val_labels: np.ndarray, test: np.ndarray | None = None,
            test_labels: np.ndarray | None = None, *, configs: list[str] | None = None,
            seeds: list[int] | None = None, folds: list[int | None] | None = None,
            val_fold: np.ndarray | None = None, variables: list | None = None,
            spec: heads.HeadSpec | None = None, metric: str = "accuracy") -> SweepResult:
    """A SweepResult holding only what the ensembles read: members, predictions and (for soups) variables."""
    n = len(val)
    configs = configs or [f"c{i}" for i in range(n)]
    seeds = seeds or [0] * n
    folds = folds or [None] * n
    spec = spec or heads.HeadSpec(num_classes=val.shape[-1], pooling="none")
    members = [{"member": i, "config": configs[i], "val": {},
                "spec": MemberSpec(spec, seed=seeds[i], fold=folds[i]).to_dict()} for i in range(n)]
    predictions = {"val": np.asarray(val, np.float32), "val_labels": np.asarray(val_labels)}
    if val_fold is not None:
        predictions["val_fold"] = np.asarray(val_fold)
    if test is not None:
        predictions["test"] = np.asarray(test, np.float32)
        predictions["test_labels"] = np.asarray(test_labels)
    return SweepResult(task="multiclass", num_classes=val.shape[-1], metric=metric, sweep=SweepSpec(),
                       members=members, leaderboard=[], recommended=None, ridge=[], groups=[], timings={},
                       feature_shapes={}, variables=variables or [], predictions=predictions)


def _noisy(rng: np.random.Generator, labels: np.ndarray, n_classes: int, strength: float) -> np.ndarray:
    """Probabilities that lean towards the true class by ``strength`` (larger: more accurate), with noise."""
    logits = rng.normal(size=(len(labels), n_classes)) + strength * np.eye(n_classes)[labels]
    return np.asarray(jax.nn.softmax(logits), np.float32)


def test_an_ensemble_of_identical_members_is_that_member() -> None:
    rng = np.random.default_rng(0)
    y, yt = rng.integers(0, 3, 60), rng.integers(0, 3, 40)
    one, one_test = _noisy(rng, y, 3, 1.0), _noisy(rng, yt, 3, 1.0)
    result = _result(np.stack([one] * 3), y, np.stack([one_test] * 3), yt)
    for report in (ensembles.top_k_ensemble(result, k=3, metrics=("accuracy", "macro_f1"), n_boot=200),
                   ensembles.greedy_ensemble(result, steps=4, metrics=("accuracy", "macro_f1"), n_boot=200)):
        np.testing.assert_allclose(report.val_probs, one, rtol=1e-6)
        np.testing.assert_allclose(report.test_probs, one_test, rtol=1e-6)
        assert report.val == report.single_val == pytest.approx(np.mean(one.argmax(-1) == y))
        assert report.test["accuracy"].estimate == pytest.approx(np.mean(one_test.argmax(-1) == yt))
        assert report.test["accuracy"].low <= report.test["accuracy"].estimate <= report.test["accuracy"].high
        assert all(c.diff == 0 and c.low == c.high == 0 for c in report.vs_single.values())
    greedy = ensembles.greedy_ensemble(result, steps=4, n_boot=50)
    assert greedy.picks == ("c0",)  # ties go to the shortest prefix and the earliest config
    assert sorted(ensembles.top_k_ensemble(result, k=3, n_boot=50).weights) == pytest.approx([1 / 3] * 3)


def test_greedy_selection_is_never_worse_on_val_than_the_best_single_config() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 80)
    for trial in range(5):
        candidates = {f"c{i}": _noisy(rng, y, 4, s) for i, s in enumerate(rng.uniform(0.0, 1.5, 6))}
        picks, trace = ensembles.greedy_selection(candidates, y, "accuracy", "multiclass", steps=10)
        single = max(np.mean(p.argmax(-1) == y) for p in candidates.values())
        average = np.mean([candidates[c] for c in picks], axis=0)
        assert trace[0] == pytest.approx(single) and len(trace) == 10
        assert np.mean(average.argmax(-1) == y) >= single
        assert np.mean(average.argmax(-1) == y) == pytest.approx(max(trace))


def test_greedy_finds_complementary_configs_and_top_k_ranks_by_val() -> None:
    """c_left is confidently right on rows 0-27 and weakly wrong elsewhere, c_right the same on rows 12-39, c_mid a
    weak all-rounder (60 %). Alone none passes 70 %; left + right averaged is right on every row."""
    y = np.tile([0, 1], 20)
    rows = np.arange(40)

    def confident(good: np.ndarray) -> np.ndarray:
        return np.where(good[:, None], np.eye(2)[y] * 0.8 + 0.1, np.eye(2)[1 - y] * 0.2 + 0.4)

    left, right = confident(rows < 28), confident(rows >= 12)
    mid = np.where((rows % 5 < 2)[:, None], np.eye(2)[1 - y] * 0.2 + 0.4, np.eye(2)[y] * 0.2 + 0.4)
    result = _result(np.stack([mid, left, right]), y, np.stack([mid, left, right]), y,
                     configs=["c_mid", "c_left", "c_right"])
    greedy = ensembles.greedy_ensemble(result, steps=6, n_boot=100)
    assert greedy.single == "c_left" and greedy.single_val == pytest.approx(0.7)
    assert greedy.picks == ("c_left", "c_right") and greedy.weights == (0.5, 0.5) and greedy.val == 1.0
    assert greedy.val_trace[:2] == pytest.approx((0.7, 1.0)) and len(greedy.val_trace) == 6
    assert greedy.test["accuracy"].estimate == 1.0 and greedy.vs_single["accuracy"].diff == pytest.approx(0.3)
    assert greedy.vs_single["accuracy"].verdict == "b better"
    top2 = ensembles.top_k_ensemble(result, k=2, n_boot=50)
    assert top2.picks == ("c_left", "c_right") and top2.val_trace == pytest.approx((0.7, 1.0))
    assert ensembles.rank_configs(ensembles.config_scores(result), y, "accuracy", "multiclass")[-1] == "c_mid"


def test_val_scores_are_out_of_fold_with_cross_validation() -> None:
    """Each fold member is confidently wrong on the rows it trained on and right on its own fold: the config's
    val scores must take each row from its own fold's member only (as the sweep's verdicts do)."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 30)
    val_fold = np.arange(30) % 3
    right, wrong = np.eye(3)[y] * 0.7 + 0.1, np.eye(3)[(y + 1) % 3] * 0.7 + 0.1
    val = np.stack([np.where((val_fold == f)[:, None], right, wrong) for f in range(3)] * 2)
    test_y = rng.integers(0, 3, 10)
    test = np.stack([np.eye(3)[test_y] * (0.3 + 0.1 * i) + 0.1 for i in range(6)])
    result = _result(val, y, test, test_y, configs=["a"] * 3 + ["b"] * 3, folds=[0, 1, 2] * 2,
                     seeds=[0, 0, 0, 1, 1, 1], val_fold=val_fold)
    scores = ensembles.config_scores(result)
    assert scores["a"].val.shape == (1, 30, 3) and scores["b"].members == (3, 4, 5)
    np.testing.assert_allclose(scores["a"].val[0], right)
    np.testing.assert_allclose(scores["a"].val, _val_scores(result.members[:3], result.predictions))
    np.testing.assert_allclose(scores["b"].test_mean, test[3:].mean(0), rtol=1e-6)  # test: mean of fold models
    assert ensembles.top_k_ensemble(result, k=2, n_boot=50).val == 1.0


def test_head_soup_of_one_member_is_that_member_and_of_linear_heads_averages_logits() -> None:
    rng = np.random.default_rng(3)
    d, n = 6, 24
    splits = {name: FeatureSplit(labels=rng.integers(0, 3, n), pooled=rng.normal(size=(n, d)).astype(np.float32))
              for name in ("train", "val", "test")}
    spec = heads.HeadSpec(num_classes=3, pooling="none")
    variables = [jax.tree.map(np.asarray, heads.init_head(s, spec, (d,))) for s in range(3)]
    logits = {name: [np.asarray(heads.apply_head(v, splits[name].pooled, spec)) for v in variables]
              for name in ("val", "test")}
    probs = {name: np.stack([predict.probabilities(z, "multiclass") for z in zs]) for name, zs in logits.items()}
    one = _result(probs["val"][:1], splits["val"].labels, probs["test"][:1], splits["test"].labels,
                  configs=["c"], variables=variables[:1], spec=spec)
    soup = ensembles.head_soup(one, splits, "c", n_boot=50)
    np.testing.assert_allclose(soup.val_probs, probs["val"][0], atol=1e-6)
    np.testing.assert_allclose(soup.test_probs, probs["test"][0], atol=1e-6)
    assert soup.val == soup.val_ensemble == soup.val_members and soup.vs_ensemble["accuracy"].diff == 0

    three = _result(probs["val"], splits["val"].labels, probs["test"], splits["test"].labels, configs=["c"] * 3,
                    seeds=[0, 1, 2], variables=variables, spec=spec)
    soup = ensembles.head_soup(three, splits, n_boot=50)
    expected = predict.probabilities(np.mean(logits["val"], axis=0), "multiclass")
    np.testing.assert_allclose(soup.val_probs, expected, atol=1e-6)  # a linear head's soup averages its logits
    assert soup.members == (0, 1, 2) and soup.folds == (None,)
    other = jax.tree.map(np.asarray, heads.init_head(0, heads.HeadSpec(num_classes=3, pooling="none"), (d + 1,)))
    with pytest.raises(ValueError, match=r"member 1 differs at .*out.*kernel.*shape \(7, 3\) vs \(6, 3\)"):
        ensembles.soup_variables([variables[0], other])


@pytest.mark.slow
def test_on_a_real_cross_validated_sweep() -> None:
    """A tiny sweep with 2 folds: the soup of one member per fold reproduces the sweep's own out-of-fold and test
    probabilities, and greedy selection is at least as good on val as the best config."""
    rng = np.random.default_rng(4)

    def split(n: int) -> FeatureSplit:
        y = rng.integers(0, 3, n)
        x = rng.normal(size=(n, 8)).astype(np.float32)
        x[:, :3] += 1.2 * np.eye(3)[y]
        return FeatureSplit(labels=y, pooled=x)

    splits = {"train": split(48), "val": split(24), "test": split(24)}
    sweep = SweepSpec(pooling=("none",), widths=(8,), depth=(0, 1), learning_rate=(1e-2, 3e-2), epochs=3,
                      batch_size=(16,), patience=None, map_batch="vmap", ridge_l2=(), folds=2)
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("members", "data"))
    result = run_sweep(sweep, splits, num_classes=3, mesh=mesh)
    scores = ensembles.config_scores(result)
    assert len(scores) == 4 and all(s.val.shape == (1, 72, 3) for s in scores.values())
    for config in scores:
        soup = ensembles.head_soup(result, splits, config, n_boot=50)
        assert soup.folds == (0, 1)
        np.testing.assert_allclose(soup.val_probs, scores[config].val_mean, atol=1e-4)
        np.testing.assert_allclose(soup.test_probs, scores[config].test_mean, atol=1e-4)
    greedy = ensembles.greedy_ensemble(result, steps=5, metrics=("accuracy", "macro_f1"), n_boot=100)
    assert greedy.val >= greedy.single_val
    assert set(greedy.test) == {"accuracy", "macro_f1"} and greedy.to_dict()["val_optimistic"]
