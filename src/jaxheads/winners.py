"""Comparisons with the best config where the best is chosen again inside every draw (the winner's curse inside
the interval).

The quantity of a leaderboard row r is Delta_r = theta_r - max_c theta_c: how far r's true score lies below the
truly best config's (0 for the truly best; theta: true scores, p: estimates). Comparing r with the config that
scored highest on these very examples instead is biased: that config's estimate is the maximum of noisy
estimates, so it is optimistic, and every difference to it is pushed away from 0.

Write D_r = p_r - max_{c != r} p_c = p_r - p_w (w: the best of the others on these rows) and, for every competitor
c, u_c = (p_c - p_r) - (theta_c - theta_r), the estimation error of the pair, with bootstrap counterpart
u*_cb = (v_cb - v_rb) - (p_c - p_r) in draw b. Then theta_r - max_{c != r} theta_c lies between D_r + min_c u_c
(the maximum moves by no more than its arguments do) and theta_r - theta_w = D_r + u_w. The upper end re-selects
the best inside every draw: w*_b = argmax_c v_cb, and high = D_r + q_{(1 + level) / 2}(u*_{w*_b, b}); since w won
on these rows partly by luck, u_w leans positive, and so does u* at the draw's own winner: the winner's curse is
in the interval. The lower end takes the worst competitor in each draw, low = D_r + q_{(1 - level) / 2}(min_c
u*_cb) (conservative: any config might be the truly best). Both ends then become Delta_r = min(0, .). With one
competitor it is exactly the paired (basic) bootstrap interval; with one config only it is [0, 0].

A row whose upper end reaches 0 could be the best; :func:`jaxheads.stats.smallest_within_noise` recommends the
smallest such row. ``p_b_better`` is the fraction of draws in which the row beats every other config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from jaxheads import stats

RULE = ("Best: every row is compared with the best of the other configs chosen again in every draw, so the "
        "winner's curse of picking the top row on these same rows is inside the \"vs best\" intervals; the "
        "recommended head is the smallest whose interval reaches 0 (it could be the best).")


def _zero(x: float) -> float:
    """``x``, with rounding residue around 0 (a draw in which the row ties the best) made exactly 0."""
    return 0.0 if abs(x) < 1e-12 else x


def _versus_best_row(point: float, others: np.ndarray, pairs: np.ndarray, level: float) -> stats.Comparison:
    """Row r's comparison from its estimate, the other configs' estimates (C - 1,) and the draws of p_c - p_r
    (C - 1, B)."""
    keep = np.isfinite(others)  # a config whose metric is undefined everywhere competes with no one
    others, pairs = others[keep], pairs[keep]
    if len(others) == 0 and np.isfinite(point):
        return stats.Comparison(a=point, b=point, diff=0.0, low=0.0, high=0.0, p_b_better=1.0, level=level,
                                verdict="within noise")
    finite = np.isfinite(pairs).all(axis=0)
    centred = pairs[:, finite] - (others - point)[:, None]
    gap = point - float(np.max(others, initial=-np.inf))
    if not finite.any() or not np.isfinite(gap):
        nan = float("nan")
        return stats.Comparison(a=float(np.max(others, initial=nan)), b=point, diff=nan, low=nan, high=nan, p_b_better=nan,
                                level=level, verdict="within noise")
    winner = pairs[:, finite].argmax(axis=0)  # the best of the other configs in each draw
    low = _zero(gap + float(np.quantile(centred.min(axis=0), (1.0 - level) / 2.0)))
    high = _zero(gap + float(np.quantile(centred[winner, np.arange(len(winner))], (1.0 + level) / 2.0)))
    lead = pairs[:, finite].max(axis=0)  # > 0: some other config beats r in this draw
    best = max(point, float(np.max(others)))
    return stats.Comparison(a=best, b=point, diff=min(0.0, gap), low=min(0.0, low), high=min(0.0, high),
                            p_b_better=float(np.mean(lead < 0) + 0.5 * np.mean(lead == 0)), level=level,
                            verdict="a better" if high < 0 else "within noise")


def versus_best(points: Sequence[float], pair_draws: Callable[[int], np.ndarray],
                level: float = stats.LEVEL) -> list[stats.Comparison]:
    """Every config's comparison with the best (module docstring): ``points`` (C,) the estimates, and
    ``pair_draws(r)`` (C - 1, B) the draws of p_c - p_r for every c != r in order (the same draws for every pair,
    paired). Side a is the best's estimate, side b the row's; ``diff`` = min(0, p_r - max_{c != r} p_c)."""
    points = np.asarray(points, np.float64)
    return [_versus_best_row(float(points[r]), np.delete(points, r), np.asarray(pair_draws(r), np.float64), level)
            for r in range(len(points))]


def versus_best_from_draws(points: Sequence[float], values: np.ndarray,
                           level: float = stats.LEVEL) -> list[stats.Comparison]:
    """:func:`versus_best` from every config's own draws ``values`` (C, B) on shared draws: p_c - p_r is drawn as
    v_c - v_r."""
    values = np.asarray(values, np.float64)
    return versus_best(points, lambda r: np.delete(values, r, axis=0) - values[r], level)
