"""What a sweep's numbers can support: intervals for every leaderboard row, the head questions' verdicts, the
recommended head, and its one honest test figure.

Every figure comes from the members' per-example predictions at their kept epochs (``SweepResult.predictions``),
with one set of draws for the whole sweep, on each config's out-of-fold scores (:mod:`.scores`). Cross-validated
sweeps use the moment-corrected interval (:mod:`jaxheads.intervals`: the examples resampled once within the
folds, the variance between a config's repeats, seeds and folds added once, t-widened); a fixed split the paired
bootstrap of :mod:`jaxheads.stats` over the examples and the seeds (one model per seed: the two coincide). "vs
best" re-chooses the best config in every draw (:mod:`jaxheads.winners`). experiments/stats/bench_coverage.py
measures their coverage.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from jaxheads import intervals, stats, winners
from jaxheads.stats import LEVEL, N_BOOT
from jaxheads.factors import QUESTION_AXES, format_level, matching_keys, member_factors, sort_levels, varied_axes

from .result import SweepResult
from .scores import ConfigScores, config_scores



class _Evidence:
    """Every config's point estimate and per-draw statistic, computed once on the sweep's shared draws."""

    def __init__(self, scores: Mapping[str, np.ndarray], labels: np.ndarray, metric: str, task: str,
                 draws: stats.Draws):
        self.point = {c: stats.point_estimate(s, labels, metric, task) for c, s in scores.items()}
        self.values = {c: stats.draw_values(s, labels, metric, task, draws) for c, s in scores.items()}

    def interval(self, config: str) -> stats.Interval:
        low, high = stats.percentile_interval(self.values[config], LEVEL)
        return stats.Interval(self.point[config], low, high, LEVEL)

    def compare(self, a: Sequence[str], b: Sequence[str]) -> stats.Comparison:
        """Side b against side a, each the mean over its configs (paired on the same draws)."""
        mean = lambda side, d: np.mean([d[c] for c in side], axis=0)  # noqa: E731
        return stats.comparison_from_values(float(mean(a, self.point)), float(mean(b, self.point)),
                                            mean(a, self.values), mean(b, self.values), LEVEL)

    def versus_best(self, configs: Sequence[str]) -> list[stats.Comparison]:
        """Every config's comparison with the best, re-chosen in every draw (:mod:`jaxheads.winners`)."""
        return winners.versus_best_from_draws([self.point[c] for c in configs],
                                              np.stack([self.values[c] for c in configs]), LEVEL)


class _CorrectedEvidence:
    """The same questions answered by the moment-corrected interval (:mod:`jaxheads.intervals`): the examples
    resampled once within the folds, the variance between a config's models (its repeats, seeds and folds) added
    once, t-widened on few models. Cross-validated sweeps use it."""

    def __init__(self, scores: Mapping[str, np.ndarray], labels: np.ndarray, metric: str, task: str,
                 layout: intervals.Layout):
        self.layout = layout
        self.evidence = {c: intervals.evidence(s, labels, metric, task, layout) for c, s in scores.items()}
        self.point = {c: e.point for c, e in self.evidence.items()}

    def interval(self, config: str) -> stats.Interval:
        return intervals.interval(self.evidence[config], self.layout, LEVEL)

    def compare(self, a: Sequence[str], b: Sequence[str]) -> stats.Comparison:
        """Side b against side a, each the mean over its configs (paired on the same draws)."""
        side = lambda configs: intervals.mean_of([self.evidence[c] for c in configs])  # noqa: E731
        return intervals.compare(side(a), side(b), self.layout, LEVEL)

    def versus_best(self, configs: Sequence[str]) -> list[stats.Comparison]:
        """Every config's comparison with the best, re-chosen in every draw; each pair's difference drawn by the
        corrected interval (its own models' variance and t widening)."""
        ev = [self.evidence[c] for c in configs]

        def pair_draws(r: int) -> np.ndarray:
            others = [e for i, e in enumerate(ev) if i != r]
            return np.stack([intervals.corrected_draws(ev[r].combine(e, -1.0, 1.0), self.layout, LEVEL)
                             for e in others]) if others else np.zeros((0, len(self.layout.normal)))

        return winners.versus_best([e.point for e in ev], pair_draws, LEVEL)


def answer_questions(configs: Mapping[str, Mapping[str, Any]], evidence: _Evidence | _CorrectedEvidence,
                     metric: str) -> list[dict[str, Any]]:
    """Every varied axis, every pair of its levels: side A the configs at level a, side B their matches at b
    (agreeing on every other factor that applies at both levels); a paired pooled comparison of the two sides."""
    factors = {c: member_factors(spec) for c, spec in configs.items()}
    titles = dict(QUESTION_AXES)
    answers = []
    for axis in varied_axes({"members": [{"spec": spec} for spec in configs.values()]}):
        levels = sort_levels({f[axis] for f in factors.values() if f[axis] is not None})
        for a, b in itertools.combinations(levels, 2):
            pairs = _matched_pairs(factors, axis, a, b)
            if not pairs:
                continue
            c = evidence.compare([x for x, _ in pairs], [y for _, y in pairs])
            winner = {"b better": format_level(b), "a better": format_level(a)}.get(c.verdict)
            estimates = dataclasses.asdict(c)
            estimates["mean_a"], estimates["mean_b"] = estimates.pop("a"), estimates.pop("b")
            answers.append({"axis": axis, "title": f"{titles[axis]}: {format_level(a)} vs {format_level(b)}",
                            **estimates, "a": a, "b": b, "metric": metric, "n_pairs": len(pairs),
                            "verdict": f"{winner} better" if winner else "within noise"})
    return answers


def _matched_pairs(factors: Mapping[str, Mapping[str, Hashable]], axis: str, a: Hashable,
                   b: Hashable) -> list[tuple[str, str]]:
    """(config at a, config at b) pairs that agree on every other factor applying at both levels."""
    at = {lvl: [c for c, f in factors.items() if f[axis] == lvl] for lvl in (a, b)}
    keys = matching_keys(list(factors.values()), axis, a, b)
    context = lambda c: tuple(factors[c][k] for k in keys)  # noqa: E731
    return [(x, y) for x in at[a] for y in at[b] if context(x) == context(y)]


def _per_class(scores: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Recall of every class (mean over seeds) and the classes never predicted (multiclass)."""
    predicted = scores.argmax(-1)  # (seeds, rows)
    recall = {}
    for k, name in enumerate(names):
        rows = labels == k
        recall[name] = float(np.mean(predicted[:, rows] == k)) if rows.any() else float("nan")
    never = [name for k, name in enumerate(names) if not np.any(predicted == k)]
    return {"recall": recall, "never_predicted": never}


def analyse(result: SweepResult, *, n_boot: int = N_BOOT, seed: int = 0) -> SweepResult:
    """``result`` with intervals on its leaderboard (re-ranked by the pooled val estimate), each row's comparison
    with the best re-chosen in every draw (:mod:`jaxheads.winners`), the recommended config (the smallest whose
    interval against the best reaches 0: it could be the best), the head questions and the selection record
    (method, how the best was chosen, optimistic val figure, the one test figure, per-class recall)."""
    p, task, metric = result.predictions, result.task, result.metric
    labels = p["val_labels"]
    per_config = config_scores(result)
    scores = {c: cs.val for c, cs in per_config.items()}
    n_seeds = {s.shape[0] for s in scores.values()}
    if len(n_seeds) != 1:
        return result  # explicit members with unequal replicas: no paired draws
    passes = n_seeds.pop()
    if "val_fold" in p:  # cross-validated: the corrected interval (experiments/stats/bench_coverage.py)
        partitions = np.atleast_2d(p["val_fold"])
        layout = intervals.make_layout(partitions, passes // len(partitions), n_boot=n_boot, seed=seed)
        evidence: _Evidence | _CorrectedEvidence = _CorrectedEvidence(scores, labels, metric, task, layout)
    else:
        draws = stats.make_draws(np.zeros(len(labels), np.int64), passes, n_boot=n_boot, seed=seed)
        evidence = _Evidence(scores, labels, metric, task, draws)
    board = [dict(row) for row in result.leaderboard]
    for row in board:
        row["val_interval"] = dataclasses.asdict(evidence.interval(row["config"]))
    board.sort(key=lambda r: (-np.nan_to_num(r["val_interval"]["estimate"], nan=-np.inf), r["params"]))
    comparisons = evidence.versus_best([r["config"] for r in board])
    for row, c in zip(board, comparisons):
        row["vs_best"] = dataclasses.asdict(c)
    recommended = board[stats.smallest_within_noise(comparisons, [r["params"] for r in board])]["config"]
    configs = {c: {k: v for k, v in result.members[cs.members[0]]["spec"].items() if k not in ("seed", "fold")}
               for c, cs in per_config.items()}
    questions = answer_questions(configs, evidence, metric)
    selection = _selection(result, per_config[recommended], evidence.interval(recommended), labels, n_boot, seed)
    return dataclasses.replace(result, leaderboard=board, recommended=recommended, questions=questions,
                               selection=selection)


def _method(n_boot: int, n_folds: int, passes: int, repeats: int) -> str:
    """The method sentence: every source of noise the intervals cover and every one they do not."""
    if n_folds > 1:
        return intervals.describe(n_boot, n_folds, passes // repeats, LEVEL, repeats=repeats)
    missing = ["which training rows the models saw (the intervals are for this training set)",
               "each model's best epoch, chosen on these same val rows (every row's val figure is optimistic)",
               "the choice of the top rows among the configs (only \"vs best\" carries it)"]
    text = stats.describe_method(n_boot, 1, passes, LEVEL).removesuffix(".")
    return f"{text}; not included: {'; '.join(missing)}."


def _selection(result: SweepResult, scores: ConfigScores, val: stats.Interval, labels: np.ndarray, n_boot: int,
               seed: int) -> dict[str, Any]:
    p, task, metric = result.predictions, result.task, result.metric
    n_folds = int(p["val_fold"].max()) + 1 if "val_fold" in p else 1
    repeats = len(np.atleast_2d(p["val_fold"])) if "val_fold" in p else 1
    out: dict[str, Any] = {
        "metric": metric, "level": LEVEL, "n_boot": n_boot,
        "method": _method(n_boot, n_folds, scores.val.shape[0], repeats),
        "best_rule": winners.RULE,
        "val": {**dataclasses.asdict(val), "optimistic": True},
        "test": None}
    names = result.label_names or [str(k) for k in range(result.num_classes)]
    if task == "multiclass":
        out["per_class_val"] = _per_class(scores.val, labels, names)
    if scores.test is not None:
        test = scores.test
        test_draws = stats.make_draws(np.zeros(len(p["test_labels"]), np.int64), test.shape[0], n_boot=n_boot,
                                      seed=seed + 1)
        out["test"] = dataclasses.asdict(stats.interval(test, p["test_labels"], metric, task, test_draws, LEVEL))
        out["test_from"] = "mean of the fold models' probabilities" if n_folds > 1 else "the config's replicas"
        if task == "multiclass":
            out["per_class_test"] = _per_class(test, p["test_labels"], names)
    return out
