"""Noise estimates for sweep results: a paired hierarchical bootstrap over examples, seeds and folds (pure NumPy).

A sweep gives, for every config, scores of shape (S, N, C): S seed replicas (independently initialised trainings)
scored on N evaluation examples. With K-fold cross-validation the N examples are the out-of-fold examples of all K
folds, each scored by the model of its own fold (``folds`` says which). The estimate of a config is the mean over
seeds of the metric on all N examples (:func:`point_estimate`).

Its noise comes from three sources, resampled together, each with replacement, in every bootstrap draw
(:func:`make_draws`): the K folds (only when K > 1), the examples inside each drawn fold (n_k of them, so a drawn
fold keeps its size), and the S seeds (only when S > 1). A draw is an example-weight vector (how many times each
example was drawn) and a list of S seed indices; the statistic of a draw is the mean over the drawn seeds of the
metric on the weighted examples. One :class:`Draws` serves every comparison of a sweep (common random numbers),
and both sides of a comparison use the same draw (paired): example- and seed-level noise shared by the two sides
cancels out of their difference. Intervals are percentile intervals of the draws' statistics.

Metrics follow scikit-learn's definitions (and :mod:`jaxheads.metrics`); a weight-w example counts as w copies of
it. Each is computed for all B draws at once: multiclass metrics from weighted confusion counts (one matrix product),
ranking metrics from one sort per (seed, class) and weighted cumulative sums; B goes in chunks of about
``_CHUNK_ELEMENTS`` weights, so peak memory stays bounded (measured: experiments/README.md, "Figures moved out of
code comments").

``N_BOOT`` and ``LEVEL`` are the package's one number of draws and one interval level: the sweep's verdicts, the
ensembles, the fine-tune's gain and the report's titles all read them from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

MULTICLASS_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
MULTILABEL_METRICS = ("macro_average_precision", "macro_roc_auc")
RANKING_METRICS = {"multiclass": MULTICLASS_METRICS, "multilabel": MULTILABEL_METRICS}
N_BOOT = 2000  # bootstrap draws behind every interval of the package
LEVEL = 0.95  # the level of every interval of the package (two-sided)
_CHUNK_ELEMENTS = 1 << 22
"""Draws x examples per chunk of B; the ranking metrics hold about ten (chunk, N) arrays (experiments/README.md)."""


def check_metric(metric: str, task: str) -> str:
    """``metric`` if it is a metric of ``task`` ("multiclass" | "multilabel"); a one-line ValueError otherwise."""
    if task not in RANKING_METRICS:
        raise ValueError(f"task: {task!r} is not one of {', '.join(RANKING_METRICS)}")
    if metric not in RANKING_METRICS[task]:
        raise ValueError(f"--metric: {metric!r} is not a {task} metric; choose one of {', '.join(RANKING_METRICS[task])}")
    return metric


# ----------------------------------------------------------------------------------------------- draws


@dataclass(frozen=True)
class Draws:
    """B bootstrap draws, shared by every comparison of a sweep (common random numbers).

    ``example_weights`` (B, N) float32: how many times each evaluation example is drawn (integers).
    ``seed_index`` (B, S) int: the seed replicas drawn (all zeros when S == 1).
    """

    example_weights: np.ndarray
    seed_index: np.ndarray


def _pick_counts(rng: np.random.Generator, picks: np.ndarray, size: int) -> np.ndarray:
    """(len(picks), size): row b counts how often each of ``size`` items is hit by picks[b] uniform picks.

    One bincount over (row, item) cells per block of about a million picks, so memory stays bounded.
    """
    out = np.empty((len(picks), size), np.float32)
    block = max(1, (1 << 20) // size)
    for start in range(0, len(picks), block):
        counts = picks[start : start + block]
        cells = np.repeat(np.arange(len(counts)) * size, counts) + rng.integers(0, size, size=int(counts.sum()))
        out[start : start + block] = np.bincount(cells, minlength=len(counts) * size).reshape(len(counts), size)
    return out


def make_draws(
    folds: np.ndarray, n_seeds: int, *, n_boot: int = N_BOOT, seed: int = 0, resample_folds: bool = True
) -> Draws:
    """``n_boot`` hierarchical bootstrap draws for N examples in the folds ``folds`` and ``n_seeds`` seeds.

    ``folds`` (N,) int is the fold id of each evaluation example (all equal: one fixed validation split). Per draw:
    K fold ids are drawn with replacement (when K > 1; else the one fold is taken once); each drawn fold then
    contributes n_k examples drawn with replacement from its own n_k examples (a fold drawn twice contributes two
    independent resamples), so the weights of fold k sum to n_k times the number of times it was drawn. Seeds: S
    indices drawn with replacement from range(S) (when S > 1). Deterministic for a given ``seed``.

    ``resample_folds=False`` takes every fold once and resamples only the examples within each fold (a bootstrap
    stratified by fold). Resampling both levels counts the example noise about twice, (2K - 1) / K times, since
    the spread of the fold means already contains it: conservative when folds differ little beyond their examples
    (see experiments/stats/bench_coverage.py); not resampling folds leaves out any fold-to-fold (training set) noise.
    """
    folds = np.asarray(folds)
    if folds.ndim != 1 or folds.size == 0 or not np.issubdtype(folds.dtype, np.integer):
        raise ValueError(f"folds: expected a non-empty 1-D integer array, got {folds.dtype} {folds.shape}")
    if n_seeds < 1 or n_boot < 1:
        raise ValueError(f"n_seeds and n_boot must be >= 1, got {n_seeds} and {n_boot}")
    rng = np.random.default_rng(seed)
    _, fold_of = np.unique(folds, return_inverse=True)
    k = int(fold_of.max()) + 1
    if k > 1 and resample_folds:
        times_drawn = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot)
    else:
        times_drawn = np.ones((n_boot, k), np.int64)
    weights = np.zeros((n_boot, folds.size), np.float32)
    for j in range(k):
        members = np.flatnonzero(fold_of == j)
        weights[:, members] = _pick_counts(rng, times_drawn[:, j] * members.size, members.size)
    seed_index = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else np.zeros((n_boot, 1), np.int64)
    return Draws(example_weights=weights, seed_index=seed_index)


# ----------------------------------------------------------------------------------------------- metrics


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den == 0 (no warning)."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=np.broadcast_to(den > 0, out.shape))
    return out


def _mean_defined(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the non-NaN entries; NaN where none is defined."""
    defined = ~np.isnan(values)
    return _ratio(np.where(defined, values, 0.0).sum(-1), defined.sum(-1).astype(np.float64))


def _multiclass_fn(scores: np.ndarray, labels: np.ndarray, metric: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function of weights (b, N) -> (b, S) values of a multiclass metric, via weighted confusion counts.

    Prediction: argmax over classes (ties to the lowest class id). Per draw, seed and class: support (weighted
    count of labels), predicted (weighted count of predictions) and true positives, all from one matrix product
    of the weights with indicator columns. accuracy = sum tp / sum w; balanced_accuracy = mean of tp / support over
    classes with support > 0; macro_f1 = mean of 2 tp / (support + predicted) over classes where that is > 0.
    """
    n_seeds, n, n_classes = scores.shape
    truth = np.eye(n_classes)[labels]  # (N, C)
    predicted = np.eye(n_classes)[np.argmax(scores, axis=-1)]  # (S, N, C)
    columns = np.concatenate([truth[None], predicted, predicted * truth[None]])  # (1 + 2S, N, C)
    columns = columns.transpose(1, 0, 2).reshape(n, -1)

    def values(weights: np.ndarray) -> np.ndarray:
        counts = (weights @ columns).reshape(len(weights), 1 + 2 * n_seeds, n_classes)
        support, pred, tp = counts[:, :1], counts[:, 1 : 1 + n_seeds], counts[:, 1 + n_seeds :]
        if metric == "accuracy":
            return _ratio(tp.sum(-1), weights.sum(-1)[:, None])
        if metric == "balanced_accuracy":
            return _mean_defined(_ratio(tp, np.broadcast_to(support, tp.shape)))
        return _mean_defined(_ratio(2.0 * tp, support + pred))

    return values


@dataclass(frozen=True)
class _Curve:
    """The draw-independent part of one (seed, class) ranking. ``pos_rows`` / ``neg_rows``: the positive / negative
    rows by decreasing score. Tied scores form a group (one threshold). ``*_through`` / ``*_before``: how many
    positives (negatives) lie in the groups scoring >= / > each group's score. ``ap_groups`` / ``auc_groups``: the
    groups holding a positive / a negative (only there can the recall / the false-positive rate step)."""

    pos_rows: np.ndarray
    neg_rows: np.ndarray
    pos_through: np.ndarray
    pos_before: np.ndarray
    neg_through: np.ndarray
    neg_before: np.ndarray
    ap_groups: np.ndarray
    auc_groups: np.ndarray


def _curve(score: np.ndarray, positive: np.ndarray) -> _Curve:
    order = np.argsort(-score, kind="stable")
    ordered, pos = score[order], positive[order]
    group = np.concatenate([[0], np.cumsum(ordered[1:] != ordered[:-1])])
    pos_count = np.bincount(group, weights=pos, minlength=group[-1] + 1).astype(np.int64)
    neg_count = np.bincount(group, minlength=group[-1] + 1) - pos_count
    pos_through, neg_through = np.cumsum(pos_count), np.cumsum(neg_count)
    return _Curve(
        pos_rows=order[pos], neg_rows=order[~pos],
        pos_through=pos_through, pos_before=pos_through - pos_count,
        neg_through=neg_through, neg_before=neg_through - neg_count,
        ap_groups=np.flatnonzero(pos_count), auc_groups=np.flatnonzero(neg_count),
    )  # fmt: skip


def _cumulative(weights_t: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows) + 1, b): row k is the summed weight of the first k of ``rows`` (row 0 is zeros).

    Summed row by row, each step one vectorised add across the b draws: several times faster than
    ``np.cumsum(axis=0)``, which runs one scalar recurrence per column.
    """
    out = np.zeros((len(rows) + 1, weights_t.shape[1]), weights_t.dtype)
    np.take(weights_t, rows, axis=0, out=out[1:])
    for k in range(2, len(out)):
        np.add(out[k - 1], out[k], out=out[k])
    return out


def _ranking_values(weights_t: np.ndarray, curve: _Curve, metric: str) -> np.ndarray:
    """AP or ROC-AUC (b,) of one (seed, class) from the transposed weights (N, b); NaN where undefined.

    At the threshold of tie group g, tp_g and fp_g are the weighted positives and negatives scoring >= it; P and
    Neg their totals. AP = sum_g (tp_g - tp_{g-1}) / P * tp_g / (tp_g + fp_g), scikit-learn's step sum (undefined
    when P = 0). ROC-AUC = the trapezoidal area sum_g (fp_g - fp_{g-1}) (tp_g + tp_{g-1}) / 2 / (P Neg), which is
    the probability that a positive outscores a negative, ties counting one half (undefined when P or Neg = 0); it
    is summed over whichever of the groups holding positives or holding negatives are fewer, as the Mann-Whitney
    sum sum_g (tp_g - tp_{g-1}) (Neg - (fp_g + fp_{g-1}) / 2) in the first case. Sums of weights run in the
    weights' dtype (float32 from :func:`make_draws`: exact for integer weights up to 2^24 in total); products,
    ratios and the sums over groups in float64.
    """
    cum_pos, cum_neg = _cumulative(weights_t, curve.pos_rows), _cumulative(weights_t, curve.neg_rows)
    n_pos, n_neg = cum_pos[-1].astype(np.float64), cum_neg[-1].astype(np.float64)
    if metric == "macro_average_precision" or len(curve.ap_groups) <= len(curve.auc_groups):
        g = curve.ap_groups
        tp = cum_pos[curve.pos_through[g]]
        tp_step = tp - cum_pos[curve.pos_before[g]]
        if metric == "macro_average_precision":
            # Where nothing scores >= the threshold yet, tp = tp_step = 0: any positive divisor gives the 0 term.
            seen = np.maximum(tp + cum_neg[curve.neg_through[g]], np.finfo(tp.dtype).tiny)
            precision = np.divide(tp, seen, dtype=np.float64)
            return _ratio(np.einsum("gb,gb->b", tp_step, precision, dtype=np.float64), n_pos)
        fp_twice_mid = cum_neg[curve.neg_through[g]] + cum_neg[curve.neg_before[g]]  # fp_g + fp_{g-1}
        area_twice = np.einsum("gb,gb->b", tp_step, 2.0 * cum_neg[-1] - fp_twice_mid, dtype=np.float64)
        return _ratio(area_twice / 2.0, n_pos * n_neg)
    g = curve.auc_groups
    fp_step = cum_neg[curve.neg_through[g]] - cum_neg[curve.neg_before[g]]
    tp_twice_mid = cum_pos[curve.pos_through[g]] + cum_pos[curve.pos_before[g]]  # tp_g + tp_{g-1}
    return _ratio(np.einsum("gb,gb->b", fp_step, tp_twice_mid, dtype=np.float64) / 2.0, n_pos * n_neg)


def _multilabel_fn(scores: np.ndarray, labels: np.ndarray, metric: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function of weights (b, N) -> (b, S): macro AP or ROC-AUC, the mean over classes with a defined value.

    One sort per (seed, class), done once; per chunk of draws, two gathers and cumulative sums of the weights.
    """
    n_seeds, _, n_classes = scores.shape
    positive = np.asarray(labels) > 0
    curves = [_curve(scores[s, :, c], positive[:, c]) for s in range(n_seeds) for c in range(n_classes)]

    def values(weights: np.ndarray) -> np.ndarray:
        weights_t = np.ascontiguousarray(weights.T)
        per_class = np.stack([_ranking_values(weights_t, curve, metric) for curve in curves], axis=1)
        return _mean_defined(per_class.reshape(len(weights), n_seeds, n_classes))

    return values


def _check_inputs(scores: np.ndarray, labels: np.ndarray, task: str) -> None:
    """ValueError unless scores are (S, N, C) and labels (N,) class ids in range or (N, C)."""
    if scores.ndim != 3:
        raise ValueError(f"scores: expected (seeds, examples, classes), got shape {scores.shape}")
    _, n, n_classes = scores.shape
    expected = (n,) if task == "multiclass" else (n, n_classes)
    if labels.shape != expected:
        raise ValueError(f"labels: expected shape {expected} for {task} scores {scores.shape}, got {labels.shape}")
    if task == "multiclass" and n and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels: class ids must lie in [0, {n_classes}), got {labels.min()}..{labels.max()}")


def metric_values(
    scores: np.ndarray, labels: np.ndarray, metric: str, task: str, weights: np.ndarray | None = None
) -> np.ndarray:
    """The metric of every seed, on all examples (S,) or on each draw's weighted examples (B, S).

    ``scores`` (S, N, C): probabilities, or any scores with the same argmax (multiclass) or order (multilabel).
    ``labels``: (N,) class ids (multiclass) or (N, C) {0, 1} (multilabel). ``weights`` (B, N): example weights
    (a weight-w example counts as w copies). Definitions as scikit-learn's: accuracy; balanced_accuracy = mean
    recall over the classes present; macro_f1 = f1_score(average="macro") over the classes present in the labels
    or the predictions; macro_average_precision / macro_roc_auc = mean over the classes where the class value is
    defined (AP: a positive; ROC-AUC: a positive and a negative). NaN where no class is defined (or no weight).
    """
    check_metric(metric, task)
    scores, labels = np.asarray(scores), np.asarray(labels)
    _check_inputs(scores, labels, task)
    n = scores.shape[1]
    w = np.ones((1, n)) if weights is None else np.asarray(weights)
    w = w if w.dtype == np.float32 else w.astype(np.float64)  # float32 (the draws') is kept: half the traffic
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"weights: expected shape (draws, {n}), got {w.shape}")
    build = _multiclass_fn if task == "multiclass" else _multilabel_fn
    values = build(scores, labels, metric)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    out = np.concatenate([values(w[i : i + chunk]) for i in range(0, len(w), chunk)])
    return out[0] if weights is None else out


def point_estimate(scores: np.ndarray, labels: np.ndarray, metric: str, task: str) -> float:
    """The mean over seeds of the metric on all examples."""
    return float(np.mean(metric_values(scores, labels, metric, task)))


def draw_values(scores: np.ndarray, labels: np.ndarray, metric: str, task: str, draws: Draws) -> np.ndarray:
    """(B,) the statistic of each draw: the mean over its drawn seeds of the metric on its weighted examples."""
    n_seeds = np.shape(scores)[0]
    if draws.seed_index.shape[1] != n_seeds:
        raise ValueError(f"draws were made for {draws.seed_index.shape[1]} seeds, the scores have {n_seeds}")
    per_seed = metric_values(scores, labels, metric, task, draws.example_weights)
    return np.take_along_axis(per_seed, draws.seed_index, axis=1).mean(axis=1)


# ----------------------------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval at ``level``."""

    estimate: float
    low: float
    high: float
    level: float


@dataclass(frozen=True)
class Comparison:
    """Side b against side a on the same draws: ``diff`` = b - a, its interval, and the verdict.

    ``p_b_better``: the fraction of draws where b - a > 0, ties counting one half. ``verdict``: "b better" when
    the interval lies above 0, "a better" when below, "within noise" when it contains 0.
    """

    a: float
    b: float
    diff: float
    low: float
    high: float
    p_b_better: float
    level: float
    verdict: str


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The (1 - level) / 2 and (1 + level) / 2 quantiles (linear interpolation) of the finite values."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a fraction in (0, 1), got {level}")
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def interval(
    scores: np.ndarray, labels: np.ndarray, metric: str, task: str, draws: Draws, level: float = LEVEL
) -> Interval:
    """The point estimate of one config and the percentile interval of its draws' statistics."""
    low, high = percentile_interval(draw_values(scores, labels, metric, task, draws), level)
    return Interval(estimate=point_estimate(scores, labels, metric, task), low=low, high=high, level=level)


def comparison_from_values(
    a: float, b: float, draws_a: np.ndarray, draws_b: np.ndarray, level: float = LEVEL
) -> Comparison:
    """A :class:`Comparison` from point estimates and per-draw statistics (B,) on the same draws. Draws where a side
    is NaN (its metric undefined on that draw) are left out of the interval and of ``p_b_better``."""
    diffs = np.asarray(draws_b, np.float64) - np.asarray(draws_a, np.float64)
    low, high = percentile_interval(diffs, level)
    finite = diffs[np.isfinite(diffs)]
    p_b_better = float(np.mean(finite > 0) + 0.5 * np.mean(finite == 0)) if finite.size else float("nan")
    verdict = "b better" if low > 0 else "a better" if high < 0 else "within noise"
    return Comparison(a=a, b=b, diff=b - a, low=low, high=high, p_b_better=p_b_better, level=level, verdict=verdict)


def compare(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    labels: np.ndarray,
    metric: str,
    task: str,
    draws: Draws,
    level: float = LEVEL,
) -> Comparison:
    """Config b against config a, paired: both sides are evaluated on the same draws (examples and seeds)."""
    return compare_pooled([scores_a], [scores_b], labels, metric, task, draws, level)


def _pooled(
    scores: Sequence[np.ndarray], labels: np.ndarray, metric: str, task: str, draws: Draws
) -> tuple[float, np.ndarray]:
    """Mean over configs of the point estimates, and of the per-draw statistics (B,)."""
    if len(scores) == 0:
        raise ValueError("compare_pooled: each side needs at least one config")
    points = [point_estimate(s, labels, metric, task) for s in scores]
    values = [draw_values(s, labels, metric, task, draws) for s in scores]
    return float(np.mean(points)), np.mean(values, axis=0)


def compare_pooled(
    scores_a: Sequence[np.ndarray],
    scores_b: Sequence[np.ndarray],
    labels: np.ndarray,
    metric: str,
    task: str,
    draws: Draws,
    level: float = LEVEL,
) -> Comparison:
    """Side b against side a where each side pools several configs (each (S, N, C)): a side's estimate, and its
    statistic on each draw, is the mean over its configs. Paired: every config of both sides uses the same draws."""
    a, draws_a = _pooled(scores_a, labels, metric, task, draws)
    b, draws_b = _pooled(scores_b, labels, metric, task, draws)
    return comparison_from_values(a, b, draws_a, draws_b, level)


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion successes / n at ``level``."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z = NormalDist().inv_cdf((1.0 + level) / 2.0)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, float(centre - half))  # exact ends: rounding leaves ~1e-17
    high = 1.0 if successes == n else min(1.0, float(centre + half))
    return low, high


def smallest_within_noise(comparisons_vs_best: Sequence[Comparison], sizes: Sequence[int]) -> int:
    """Index of the smallest row (by ``sizes``) whose comparison with the best row has an interval containing 0.

    ``comparisons_vs_best[i]`` compares row i with the best (:func:`jaxheads.winners.versus_best`: the best chosen
    again in every draw, so the top row's upper end is 0 and it qualifies). Among equal sizes the row with the
    better estimate wins, i.e. the smaller ``abs(diff)`` to the best; then the lower index.
    """
    if len(comparisons_vs_best) != len(sizes) or not sizes:
        raise ValueError(f"smallest_within_noise: {len(comparisons_vs_best)} comparisons for {len(sizes)} sizes")
    candidates = [i for i, c in enumerate(comparisons_vs_best) if c.low <= 0.0 <= c.high]
    if not candidates:
        raise ValueError("smallest_within_noise: no row is within noise of the best (the best row must be included)")
    return min(candidates, key=lambda i: (sizes[i], abs(comparisons_vs_best[i].diff), i))


def describe_method(n_boot: int, folds: int, seeds: int, level: float, *, resample_folds: bool = True,
                    repeats: int = 1) -> str:
    """One sentence for a report saying how the intervals were computed (``resample_folds`` as in make_draws;
    ``repeats`` > 1: the ``seeds`` replicas are the repeats' passes, resampled as seeds on the first partition)."""
    of = f" of the first of {repeats} partitions" if repeats > 1 else ""
    if folds > 1 and resample_folds:
        units = f"the {folds} cross-validation folds{of}, the evaluation examples within each drawn fold"
    elif folds > 1:
        units = f"the evaluation examples within each of the {folds} cross-validation folds{of}"
    else:
        units = "the evaluation examples"
    replicas = f"the {seeds} passes (every repeat and seed)" if repeats > 1 else f"the {seeds} seeds"
    units += f" and {replicas}" if seeds > 1 else " (one seed: seed-to-seed noise is not included)"
    return (
        f"{level:.0%} percentile intervals from {n_boot:,} paired bootstrap draws (the same draws for every "
        f"config), each resampling with replacement {units}."
    )
