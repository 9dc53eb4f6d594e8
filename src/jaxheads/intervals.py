"""The moment-corrected interval: the examples resampled once, the trained models' own noise added once.

A config's scores come from trained models ("cells"): with K-fold cross-validation every (repeat, seed, fold)
member is one cell and scores its fold's rows; on a fixed split every seed is one cell and scores all rows. A
"pass" is one complete scoring of the N examples (one repeat and seed), so ``cell_of`` is (P, N): the cell that
scored example i in pass p. The estimate is the mean over passes of the metric on all examples.

Its noise has two parts (experiments/stats/bench_coverage.py has the model and the coverage benchmark):

- the examples: B draws that resample the examples within each fold of the first pass (a stratified bootstrap,
  :func:`jaxheads.stats.make_draws` with ``resample_folds=False``), the same weights in every pass;
- the cells (which training set, initialisation and batch order a model got): between-cell variance sigma_c^2 by
  the method of moments. The observed between-cell mean square Q of the cells' own metric values holds sigma_c^2
  plus example noise; that example part is measured by the same example draws applied to the cells (their mean
  square of deviations, Q_ex), so sigma_c^2 = max(0, Q - Q_ex) / g and the estimate's cell variance is tau^2 =
  sigma_c^2 * sum_c a_c^2 (a_c = the cell's share of the estimate).

A draw of the corrected statistic is T + kappa * ((T_E - T) + tau * z) with T_E the example-resampled statistic
and z a standard normal shared by every config (common random numbers). The variance V = var(T_E) + tau^2 rests on
the M - 1 degrees of freedom of Q (M cells): kappa widens the draws to a t quantile at Satterthwaite's degrees of
freedom (M - 1) * (V / (scale * Q))^2, so few cells (5 folds) give about a t_{M-1} interval in every regime and
many cells (repeats) the bootstrap's. Treating only tau^2 as uncertain, (M - 1) * (V / tau^2)^2, is narrower and
undercovers where the cells dominate (experiments/stats/bench_coverage.py, "corrected, Satterthwaite").

Special cases: one cell (a fixed split, one seed, no repeats) gives tau = 0, kappa = 1: exactly the example
bootstrap (Wilson's interval up to the bootstrap's resolution, for a single accuracy). With R = 1 and one seed
under K folds the cells are the K folds: the within-fold bootstrap plus a fold term whose scale is the between-fold
variance in excess of the example noise, the whole widened to about a t_{K-1} quantile (no fold term, and no
widening, when the folds are exactly alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy import stats as scipy_stats

from jaxheads import stats

CELL_DRAWS = 400
"""Example draws behind Q_ex: it is an expectation over draws, so a few hundred pin it down."""


@dataclass(frozen=True)
class Layout:
    """Which model scored what, and the shared draws. ``cell_of`` (P, N) int: dense cell ids 0..M-1, unique
    across passes. ``weights`` (B, N): the example draws. ``normal`` (B,): the cell term's shared normal draws."""

    cell_of: np.ndarray
    weights: np.ndarray
    normal: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(self.cell_of.max()) + 1


def cell_layout(folds: np.ndarray, n_seeds: int) -> np.ndarray:
    """(R * S, N) cell ids from the fold of every row in each of R repeats (``folds`` (N,) or (R, N); one fold
    everywhere for a fixed split) and S seeds: pass r * S + s, cell (r * S + s) * K + fold."""
    folds = np.atleast_2d(np.asarray(folds))
    _, dense = np.unique(folds, return_inverse=True)
    dense = dense.reshape(folds.shape)
    k = int(dense.max()) + 1
    passes = np.repeat(dense, n_seeds, axis=0)
    return passes + (np.arange(len(passes)) * k)[:, None]


def make_layout(folds: np.ndarray, n_seeds: int, *, n_boot: int = stats.N_BOOT, seed: int = 0) -> Layout:
    """The cells of ``folds`` x ``n_seeds`` and B example draws stratified by the first repeat's folds."""
    cell_of = cell_layout(folds, n_seeds)
    strata = np.atleast_2d(np.asarray(folds))[0].astype(np.int64)
    weights = stats.make_draws(strata, 1, n_boot=n_boot, seed=seed, resample_folds=False).example_weights
    normal = np.random.default_rng([seed, 1]).standard_normal(n_boot)
    return Layout(cell_of=cell_of, weights=weights, normal=normal)


@dataclass(frozen=True)
class Evidence:
    """One config (or a mean or difference of configs) on a layout: ``point``; ``draws`` (B,) the example-resampled
    statistic; ``cells`` (M,) each cell's metric on its own rows; ``cell_draws`` (CELL_DRAWS, M) the same under the
    first example draws; ``sizes`` (M,) the cells' rows; ``passes``: P."""

    point: float
    draws: np.ndarray
    cells: np.ndarray
    cell_draws: np.ndarray
    sizes: np.ndarray
    passes: int

    def combine(self, other: "Evidence", a: float, b: float) -> "Evidence":
        """a * self + b * other, part by part (a difference: a = -1, b = 1)."""
        mix = lambda x, y: a * x + b * y  # noqa: E731
        return Evidence(mix(self.point, other.point), mix(self.draws, other.draws), mix(self.cells, other.cells),
                        mix(self.cell_draws, other.cell_draws), self.sizes, self.passes)


def evidence(scores: np.ndarray, labels: np.ndarray, metric: str, task: str, layout: Layout) -> Evidence:
    """A config's :class:`Evidence` from its scores (P, N, C) on ``layout``."""
    scores = np.asarray(scores)
    if scores.shape[:2] != layout.cell_of.shape:
        raise ValueError(f"scores {scores.shape[:2]} do not match the layout's (passes, examples) "
                         f"{layout.cell_of.shape}")
    point = stats.point_estimate(scores, labels, metric, task)
    draws = stats.metric_values(scores, labels, metric, task, layout.weights).mean(axis=1)
    m = layout.n_cells
    cells, cell_draws = np.zeros(m), np.zeros((min(CELL_DRAWS, len(layout.weights)), m))
    sizes = np.bincount(layout.cell_of.ravel(), minlength=m).astype(np.float64)
    for p, row in enumerate(layout.cell_of):
        ids = np.unique(row)
        masks = (row[None, :] == ids[:, None]).astype(np.float32)  # (cells of the pass, N)
        cells[ids] = stats.metric_values(scores[p : p + 1], labels, metric, task, masks)[:, 0]
        drawn = (layout.weights[: len(cell_draws), None, :] * masks[None]).reshape(-1, masks.shape[1])
        values = stats.metric_values(scores[p : p + 1], labels, metric, task, drawn)[:, 0]
        cell_draws[:, ids] = values.reshape(len(cell_draws), len(ids))
    return Evidence(point, draws, cells, cell_draws, sizes, len(layout.cell_of))


def mean_of(items: Sequence[Evidence]) -> Evidence:
    """The mean of several configs' evidence (a pooled side of a question)."""
    out = items[0]
    for i, e in enumerate(items[1:], start=2):
        out = out.combine(e, (i - 1) / i, 1.0 / i)
    return out


def _mean_square(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The size-weighted mean square of the cells' deviations from their weighted mean (last axis), / (M - 1)."""
    centre = (values * sizes).sum(-1, keepdims=True) / sizes.sum()
    return (sizes * (values - centre) ** 2).sum(-1) / (len(sizes) - 1)


def cell_moments(e: Evidence) -> tuple[float, float, float]:
    """(Q, Q_ex, scale): the cells' between mean square, its example part, and the factor that turns Q - Q_ex into
    the estimate's between-cell variance tau^2 (NaN without two cells with defined values)."""
    m = len(e.sizes)
    if m < 2 or not np.isfinite(e.cells).all():
        return float("nan"), float("nan"), float("nan")
    q_obs = float(_mean_square(e.cells, e.sizes))
    q_ex = float(np.nanmean(_mean_square(e.cell_draws - e.cells, e.sizes)))
    g = (e.sizes.sum() - (e.sizes**2).sum() / e.sizes.sum()) / (m - 1)
    share = e.sizes / e.sizes.sum()  # each cell's weight in the estimate (a pass's cells sum to 1 / P)
    return q_obs, q_ex, float((share**2).sum()) / g


def cell_term(e: Evidence) -> tuple[float, float]:
    """(tau^2, degrees of freedom): the estimate's between-cell variance by the method of moments (0 and inf with
    one cell, or when the cells differ by no more than their examples do)."""
    q_obs, q_ex, scale = cell_moments(e)
    if not np.isfinite(q_obs):
        return 0.0, float("inf")
    return max(0.0, q_obs - q_ex) * scale, float(len(e.sizes) - 1)


def corrected_draws(e: Evidence, layout: Layout, level: float = stats.LEVEL) -> np.ndarray:
    """(B,) draws of the corrected statistic (see the module docstring); NaN draws stay NaN."""
    q_obs, q_ex, scale = cell_moments(e)
    tau2 = max(0.0, q_obs - q_ex) * scale if np.isfinite(q_obs) else 0.0
    deviation = (e.draws - e.point) + np.sqrt(tau2) * layout.normal
    if not np.isfinite(q_obs) or q_obs <= 0.0:
        return e.point + deviation
    # Var(V) ~ 2 (scale Q)^2 / (M - 1): the whole mean square is uncertain, not only its excess over Q_ex, so a
    # variance underestimated by chance is not also given optimistic degrees of freedom (experiments/README.md).
    v = float(np.nanvar(e.draws)) + tau2
    dof = (len(e.sizes) - 1) * (v / (scale * q_obs)) ** 2
    z = NormalDist().inv_cdf((1.0 + level) / 2.0)
    return e.point + float(scipy_stats.t.ppf((1.0 + level) / 2.0, dof)) / z * deviation


def interval(e: Evidence, layout: Layout, level: float = stats.LEVEL) -> stats.Interval:
    """A config's estimate and its corrected percentile interval."""
    low, high = stats.percentile_interval(corrected_draws(e, layout, level), level)
    return stats.Interval(e.point, low, high, level)


def compare(a: Evidence, b: Evidence, layout: Layout, level: float = stats.LEVEL) -> stats.Comparison:
    """Side b against side a, paired: the corrected draws of the difference b - a."""
    diff = a.combine(b, -1.0, 1.0)
    return stats.comparison_from_values(a.point, b.point, np.zeros(len(diff.draws)),
                                        corrected_draws(diff, layout, level), level)


def describe(n_boot: int, folds: int, seeds: int, level: float, *, repeats: int = 1) -> str:
    """One sentence for a report: the interval, every source of noise it covers and the ones it does not."""
    models = repeats * seeds * folds
    within = f", resampled within each of the {folds} cross-validation folds" if folds > 1 else ""
    text = (f"{level:.0%} intervals from {n_boot:,} paired draws of the evaluation examples{within} (the same for "
            "every config)")
    if models > 1:
        what = "training rows, initialisation and batch order" if folds > 1 else "initialisation and batch order"
        text += (f" plus the variance between a config's {models} models (their {what}) by the method of moments, "
                 "widened to a t quantile")
    if folds > 1:
        text += ("; each model's kept epoch is chosen on its other folds, so no row is scored by an epoch picked "
                 "on it, and \"vs best\" chooses the best config again in every draw")
    missing = ["seed-to-seed noise (one model)"] if models == 1 else []
    missing.append("the overlap of the folds' training rows, which no cross-validated estimate can see" if folds > 1
                   else "which training rows the models saw (the intervals are for this training set)")
    missing.append("the choice of the top rows among the configs (their own val intervals are optimistic; only "
                   "\"vs best\" carries it)")
    return f"{text}; not included: {'; '.join(missing)}."
