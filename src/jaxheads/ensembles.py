"""Free ensembles from a finished sweep: every head is already trained and its per-example probabilities are kept.

After :func:`jaxheads.sweep.run_sweep`, ``result.predictions`` holds every member's probabilities at its kept
epoch on every val row and every test row (see :class:`jaxheads.sweep.SweepResult`). Combining them costs no
training:

* :func:`top_k_ensemble` — the average of the probabilities of the ``k`` configs best on val;
* :func:`greedy_ensemble` — ensemble selection (Caruana et al., ICML 2004): starting empty, add with replacement
  the config whose addition gives the best val metric, ``steps`` times, and keep the best prefix (so a config
  picked twice weighs twice);
* :func:`head_soup` — one config's seed replicas averaged in weight space ("model soup") into one head; the
  weights have to be evaluated again, so it takes the features (``splits``) the sweep ran on.

A config's predictor is the mean of its members' probabilities: on val its seeds' out-of-fold probabilities (with
cross-validation every pooled row is scored by the member of its own fold, as in :mod:`jaxheads.sweep.scores`,
so no row is ever scored by a model that trained on it), on test the mean over its seeds and fold models. Configs
are ranked by the val metric of that predictor, ties broken by the lower val log loss.

Every choice is made on val, so an ensemble's val figure is optimistic. The chosen ensemble is scored once on
test, with a percentile bootstrap interval over the test examples (:mod:`jaxheads.stats`), and compared, paired on
the same draws, with the best single config by val. The ensemble arithmetic is NumPy; only the soup runs heads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jaxheads import ranking, stats
from jaxheads.heads import io as heads_io
from jaxheads.heads import HeadSpec
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep.folds import fold_rows, pooled_splits
from jaxheads.sweep.result import SweepResult
from jaxheads.sweep.scores import ConfigScores, config_scores

__all__ = ["ConfigScores", "EnsembleReport", "SoupReport", "config_scores", "greedy_ensemble", "greedy_selection",
           "head_soup", "log_loss", "rank_configs", "soup_variables", "top_k_ensemble"]

_EPS = 1e-12


# ------------------------------------------------------------------------------------------ configs' predictions


def log_loss(probs: np.ndarray, labels: np.ndarray, task: str) -> float:
    """Mean negative log likelihood of (rows, classes) probabilities: cross-entropy of the true class
    (multiclass) or the mean binary cross-entropy over classes (multilabel)."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    if task == "multiclass":
        return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], _EPS, 1.0))))
    y = labels.astype(np.float64)
    p = np.clip(probs, _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def _value(probs: np.ndarray, labels: np.ndarray, metric: str, task: str) -> float:
    """The metric of one (rows, classes) predictor; NaN (undefined) ranks lowest where it is compared."""
    return float(stats.metric_values(np.asarray(probs)[None], labels, metric, task)[0])


def _key(probs: np.ndarray, labels: np.ndarray, metric: str, task: str) -> tuple[float, float]:
    """What val ranks by: the metric (NaN lowest), then the lower log loss."""
    value = _value(probs, labels, metric, task)
    return (-np.inf if np.isnan(value) else value), -log_loss(probs, labels, task)


def rank_configs(scores: Mapping[str, ConfigScores], labels: np.ndarray, metric: str, task: str) -> list[str]:
    """Configs best first by the val metric of their seed-mean predictor, ties by the lower val log loss (then
    by their order in ``scores``)."""
    keys = {c: _key(s.val_mean, labels, metric, task) for c, s in scores.items()}
    order = list(scores)
    return sorted(order, key=lambda c: (-keys[c][0], -keys[c][1], order.index(c)))


# ------------------------------------------------------------------------------------------ ensembles


@dataclasses.dataclass(frozen=True)
class EnsembleReport:
    """An ensemble chosen on val and scored once on test.

    ``method``: "top_k" or "greedy". ``picks``: the configs in the order chosen (greedy: with repeats); ``configs``
    the distinct ones and ``weights`` their shares of the average (summing to 1). ``val``: the ensemble's val
    ``metric`` (optimistic: chosen there); ``val_trace`` (greedy): the val metric after each pick, the kept prefix
    being the first ``len(picks)``. ``single`` / ``single_val``: the best single config by val and its val metric.
    ``test``: metric -> interval of the ensemble on test; ``vs_single``: metric -> comparison on test, side a the
    best single config, side b the ensemble, on the same bootstrap draws (empty without a test split).
    """

    method: str
    metric: str
    picks: tuple[str, ...]
    configs: tuple[str, ...]
    weights: tuple[float, ...]
    val: float
    val_trace: tuple[float, ...]
    single: str
    single_val: float
    test: dict[str, stats.Interval]
    vs_single: dict[str, stats.Comparison]
    val_probs: np.ndarray = dataclasses.field(repr=False)
    test_probs: np.ndarray | None = dataclasses.field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: everything but the probabilities."""
        return {"method": self.method, "metric": self.metric, "picks": list(self.picks),
                "configs": list(self.configs), "weights": list(self.weights), "val": self.val,
                "val_optimistic": True, "val_trace": list(self.val_trace), "single": self.single,
                "single_val": self.single_val,
                "test": {k: dataclasses.asdict(v) for k, v in self.test.items()},
                "vs_single": {k: dataclasses.asdict(v) for k, v in self.vs_single.items()}}


def _average(scores: Mapping[str, ConfigScores], picks: Sequence[str], split: str) -> np.ndarray | None:
    """The mean over ``picks`` (repeats count) of the configs' seed-mean predictors on ``split``."""
    parts = [getattr(scores[c], f"{split}_mean") for c in picks]
    return None if parts[0] is None else np.mean(parts, axis=0)


def _metrics_of(result: SweepResult, metrics: Sequence[str] | None) -> tuple[str, ...]:
    chosen = tuple(metrics) if metrics else (result.metric,)
    for m in chosen:
        stats.check_metric(m, result.task)
    return chosen


def _test_figures(probs: np.ndarray | None, single: np.ndarray | None, labels: np.ndarray | None,
                  metrics: Sequence[str], task: str, n_boot: int,
                  seed: int) -> tuple[dict[str, stats.Interval], dict[str, stats.Comparison]]:
    """Intervals of ``probs`` on test and its paired comparisons with ``single`` (a -> b = single -> probs)."""
    if probs is None or labels is None or single is None:
        return {}, {}
    draws = stats.make_draws(np.zeros(len(labels), np.int64), 1, n_boot=n_boot, seed=seed)
    intervals, comparisons = {}, {}
    for m in metrics:
        intervals[m] = stats.interval(probs[None], labels, m, task, draws, stats.LEVEL)
        comparisons[m] = stats.compare(single[None], probs[None], labels, m, task, draws, stats.LEVEL)
    return intervals, comparisons


def _report(result: SweepResult, scores: Mapping[str, ConfigScores], method: str, picks: Sequence[str],
            trace: Sequence[float], metrics: Sequence[str] | None, n_boot: int, seed: int) -> EnsembleReport:
    p, task, metric = result.predictions, result.task, result.metric
    labels = p["val_labels"]
    single = rank_configs(scores, labels, metric, task)[0]
    picks = list(picks)
    distinct = tuple(dict.fromkeys(picks))
    weights = tuple(picks.count(c) / len(picks) for c in distinct)
    val_probs = _average(scores, picks, "val")
    test_probs = _average(scores, picks, "test")
    intervals, comparisons = _test_figures(test_probs, scores[single].test_mean, p.get("test_labels"),
                                           _metrics_of(result, metrics), task, n_boot, seed)
    return EnsembleReport(method=method, metric=metric, picks=tuple(picks), configs=distinct, weights=weights,
                          val=_value(val_probs, labels, metric, task), val_trace=tuple(trace), single=single,
                          single_val=_value(scores[single].val_mean, labels, metric, task), test=intervals,
                          vs_single=comparisons, val_probs=val_probs, test_probs=test_probs)


def top_k_ensemble(result: SweepResult, k: int = 5, *, metrics: Sequence[str] | None = None, n_boot: int = stats.N_BOOT,
                   seed: int = 0) -> EnsembleReport:
    """The average of the ``k`` best configs by val (all of them when there are fewer), scored once on test in
    ``metrics`` (default: the sweep's ranking metric)."""
    if k < 1:
        raise ValueError(f"top_k_ensemble: k must be >= 1, got {k}")
    scores = config_scores(result)
    labels = result.predictions["val_labels"]
    picks = rank_configs(scores, labels, result.metric, result.task)[:k]
    trace = [_value(_average(scores, picks[: i + 1], "val"), labels, result.metric, result.task)
             for i in range(len(picks))]
    return _report(result, scores, "top_k", picks, trace, metrics, n_boot, seed)


def greedy_selection(candidates: Mapping[str, np.ndarray], labels: np.ndarray, metric: str, task: str,
                     steps: int = 25) -> tuple[list[str], list[float]]:
    """Caruana et al.'s forward selection with replacement on val.

    ``candidates``: name -> (rows, classes) val probabilities. Each step adds the candidate that maximises the val
    metric of the running average (ties: lower log loss, then the earlier candidate). Returns the kept picks — the
    prefix with the best (metric, -log loss) over all ``steps``, the shortest among equals — and the val metric
    after every step. The first pick is the best single candidate, so the kept prefix is never worse on val than
    the best candidate.
    """
    if not candidates:
        raise ValueError("greedy_selection: no candidates")
    if steps < 1:
        raise ValueError(f"greedy_selection: steps must be >= 1, got {steps}")
    names = list(candidates)
    stacked = np.stack([np.asarray(candidates[n], np.float64) for n in names])
    total = np.zeros(stacked.shape[1:])
    picks: list[str] = []
    trace: list[float] = []
    best_len, best_key = 0, (-np.inf, -np.inf)
    for step in range(1, steps + 1):
        keys = [_key((total + stacked[j]) / step, labels, metric, task) for j in range(len(names))]
        j = max(range(len(names)), key=lambda i: (keys[i], -i))
        total += stacked[j]
        picks.append(names[j])
        trace.append(keys[j][0] if np.isfinite(keys[j][0]) else float("nan"))
        if keys[j] > best_key:
            best_len, best_key = step, keys[j]
    return picks[: max(best_len, 1)], trace


def greedy_ensemble(result: SweepResult, *, steps: int = 25, metrics: Sequence[str] | None = None,
                    n_boot: int = stats.N_BOOT, seed: int = 0) -> EnsembleReport:
    """Greedy ensemble selection with replacement over the sweep's configs (:func:`greedy_selection` on their
    seed-mean val predictors), scored once on test in ``metrics`` (default: the sweep's ranking metric)."""
    scores = config_scores(result)
    labels = result.predictions["val_labels"]
    picks, trace = greedy_selection({c: s.val_mean for c, s in scores.items()}, labels, result.metric,
                                    result.task, steps)
    return _report(result, scores, "greedy", picks, trace, metrics, n_boot, seed)


# ------------------------------------------------------------------------------------------ head soup


@dataclasses.dataclass(frozen=True)
class SoupReport:
    """One config's seed replicas averaged in weight space (one soup per fold with cross-validation).

    ``val``: the soup's val ``metric`` (out of fold); ``val_ensemble``: the same members' probabilities averaged
    instead; ``val_members``: the mean over seeds of a single member's val metric. ``test``: metric -> the soup's
    interval on test (with folds: the mean of the fold soups' probabilities); ``vs_ensemble``: metric -> the
    paired comparison on test, side a the probability average of the same members, side b the soup.
    """

    config: str
    members: tuple[int, ...]
    folds: tuple[int | None, ...]
    metric: str
    val: float
    val_ensemble: float
    val_members: float
    test: dict[str, stats.Interval]
    vs_ensemble: dict[str, stats.Comparison]
    val_probs: np.ndarray = dataclasses.field(repr=False)
    test_probs: np.ndarray | None = dataclasses.field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: everything but the probabilities."""
        return {"config": self.config, "members": list(self.members), "folds": list(self.folds),
                "metric": self.metric, "val": self.val, "val_ensemble": self.val_ensemble,
                "val_members": self.val_members,
                "test": {k: dataclasses.asdict(v) for k, v in self.test.items()},
                "vs_ensemble": {k: dataclasses.asdict(v) for k, v in self.vs_ensemble.items()}}


def soup_variables(variables: Sequence[Any]) -> Any:
    """The leafwise mean of head variables of one layout (the same tree and shapes); a ValueError naming the first
    difference otherwise. Averaged in float64, returned in each leaf's dtype."""
    if not variables:
        raise ValueError("soup_variables: no variables to average")
    ref_paths = jax.tree_util.tree_flatten_with_path(variables[0])[0]
    ref_def = jax.tree.structure(variables[0])
    for i, v in enumerate(variables[1:], 1):
        if jax.tree.structure(v) != ref_def:
            raise ValueError(f"soup_variables: member {i} has another layout ({jax.tree.structure(v)} vs {ref_def})")
        for (path, a), b in zip(ref_paths, jax.tree.leaves(v)):
            if np.shape(a) != np.shape(b):
                raise ValueError(f"soup_variables: member {i} differs at {jax.tree_util.keystr(path)}: shape "
                                 f"{np.shape(b)} vs {np.shape(a)}")
    return jax.tree.map(lambda *xs: np.mean([np.asarray(x, np.float64) for x in xs], axis=0).astype(
        np.asarray(xs[0]).dtype), *variables)


def _head_probabilities(spec: HeadSpec, variables: Any, split: FeatureSplit, rows: np.ndarray | None,
                        task: str, batch_size: int) -> np.ndarray:
    """(rows, classes) probabilities of one standalone head on the features of ``split`` (optionally the rows
    ``rows``, an index array)."""
    x = getattr(split, spec.feature_kind)
    if x is None:
        raise ValueError(f"head_soup: pooling {spec.pooling!r} needs {spec.feature_kind} features in the splits")
    index = np.arange(len(x)) if rows is None else np.asarray(rows)
    apply_fn = heads_io.make_apply_fn(spec)
    out = [ranking.probabilities(apply_fn(variables, np.asarray(x[index[i: i + batch_size]], np.float32)), task)
           for i in range(0, len(index), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, spec.num_classes), np.float32)


def head_soup(result: SweepResult, splits: Mapping[str, FeatureSplit], config: str | None = None, *,
              metrics: Sequence[str] | None = None, n_boot: int = stats.N_BOOT, seed: int = 0,
              batch_size: int = 512) -> SoupReport:
    """Average the weights of ``config``'s seed replicas (default: the recommended config, else the best by val)
    and evaluate the soup on the features the sweep ran on (``splits``: the same dict given to ``run_sweep``).

    With cross-validation the replicas of each fold are souped separately (fold models trained on different rows
    are not replicas) and each fold soup scores its own val rows. Replicas that do not share a layout (the same
    variable shapes) are refused. Weight averaging suits heads that are linear in their weights (a depth-0 probe:
    the soup's logits are the mean of the members' logits); for hidden layers from independent initialisations
    the units need not line up, and the soup can be much worse than its members — the report says by how much.
    """
    p, task, metric = result.predictions, result.task, result.metric
    scores = config_scores(result)
    labels = p["val_labels"]
    if config is None:
        config = result.recommended or rank_configs(scores, labels, metric, task)[0]
    if config not in scores:
        raise ValueError(f"head_soup: no config {config!r} in the sweep")
    if len(result.variables) != len(result.members) or any(v is None for v in result.variables):
        raise ValueError("head_soup: the sweep result holds no member variables")
    fold_of = p.get("val_fold")
    eval_splits = pooled_splits(splits) if fold_of is not None else splits
    if len(eval_splits["val"]) != p["val"].shape[1]:
        raise ValueError(f"head_soup: splits['val'] has {len(eval_splits['val'])} rows, the sweep's predictions "
                         f"{p['val'].shape[1]} (pass the splits the sweep ran on)")
    members = [result.members[i] for i in scores[config].members]
    spec = result.head(members[0]["member"])[0]  # a merged result (input sizes, views) strips its axis
    folds = sorted({m["spec"]["fold"] for m in members}, key=lambda f: -1 if f is None else f)
    val_sum, val_count = np.zeros(p["val"].shape[1:], np.float32), np.zeros(p["val"].shape[1], np.float32)
    test_parts = []
    for fold in folds:  # with repeats a row is scored by one soup per repeat: their mean
        group = [m for m in members if m["spec"]["fold"] == fold]
        soup = soup_variables([result.variables[m["member"]] for m in group])
        rows = None if fold_of is None or fold is None else fold_rows(fold_of, fold)[0]
        at = slice(None) if rows is None else rows
        val_sum[at] += _head_probabilities(spec, soup, eval_splits["val"], rows, task, batch_size)
        val_count[at] += 1
        if "test" in p:
            test_parts.append(_head_probabilities(spec, soup, eval_splits["test"], None, task, batch_size))
    test_probs = np.mean(test_parts, axis=0) if test_parts else None
    val_probs = val_sum / val_count[:, None]
    ensemble = scores[config]
    intervals, comparisons = _test_figures(test_probs, ensemble.test_mean, p.get("test_labels"),
                                           _metrics_of(result, metrics), task, n_boot, seed)
    return SoupReport(config=config, members=ensemble.members, folds=tuple(folds), metric=metric,
                      val=_value(val_probs, labels, metric, task),
                      val_ensemble=_value(ensemble.val_mean, labels, metric, task),
                      val_members=stats.point_estimate(ensemble.val, labels, metric, task), test=intervals,
                      vs_ensemble=comparisons, val_probs=val_probs, test_probs=test_probs)
