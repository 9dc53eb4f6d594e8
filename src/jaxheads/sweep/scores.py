"""Each config's per-example scores, assembled from its members' kept predictions (``SweepResult.predictions``).

A config's val scores are (seeds, rows, classes): with cross-validation every pooled row is scored by the member
of that seed whose fold the row is, so no row is scored by a model that trained on it. With repeats the "seeds"
are the passes r * S + s (a member's seed, :class:`.spec.SweepSpec`), each a complete scoring of the rows. Its test scores are
(seeds, test rows, classes), each seed's mean over its fold models. The verdicts and the ensembles read these.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from jaxheads import metrics

from . import folds
from .result import SweepResult


@dataclasses.dataclass(frozen=True)
class ConfigScores:
    """One config's probabilities: ``val`` (seeds, rows, classes) out of fold, ``test`` (seeds, test rows,
    classes) or None without a test split; ``members``: the sweep's member indices of this config."""

    config: str
    members: tuple[int, ...]
    val: np.ndarray
    test: np.ndarray | None

    @property
    def val_mean(self) -> np.ndarray:
        """(rows, classes): the config's val predictor, the mean over its seeds."""
        return self.val.mean(axis=0)

    @property
    def test_mean(self) -> np.ndarray | None:
        """(test rows, classes): the config's test predictor, the mean over its seeds (and fold models)."""
        return None if self.test is None else self.test.mean(axis=0)


def _seeds(members: Sequence[Mapping[str, Any]]) -> list[int]:
    return sorted({int(m["spec"]["seed"]) for m in members})


def val_scores(members: Sequence[Mapping[str, Any]], predictions: Mapping[str, np.ndarray]) -> np.ndarray:
    """(seeds, rows, classes) val scores of one config's members, out of fold with folds."""
    seeds, fold_of = _seeds(members), predictions.get("val_fold")
    out = np.zeros((len(seeds),) + predictions["val"].shape[1:], np.float32)
    covered = np.zeros(out.shape[:2], bool)
    for m in members:
        s = seeds.index(int(m["spec"]["seed"]))
        rows = slice(None) if fold_of is None else folds.fold_rows(fold_of, m["spec"]["fold"])[0]
        out[s, rows] = predictions["val"][m["member"]][rows]
        covered[s, rows] = True
    if not covered.all():
        raise ValueError(f"config {members[0]['config']}: some val rows have no member scoring them out of fold "
                         "(a fold missing for some seed)")
    return out


def test_scores(members: Sequence[Mapping[str, Any]], predictions: Mapping[str, np.ndarray]) -> np.ndarray:
    """(seeds, test rows, classes): each seed's mean over the config's fold models."""
    return np.stack([np.mean([predictions["test"][m["member"]] for m in members if int(m["spec"]["seed"]) == s],
                             axis=0) for s in _seeds(members)]).astype(np.float32)


def config_scores(result: SweepResult) -> dict[str, ConfigScores]:
    """Every config's :class:`ConfigScores`, in the order configs first appear among the members."""
    p = result.predictions
    if "val" not in p:
        raise ValueError("the sweep result holds no predictions (SweepResult.predictions is empty)")
    by_config: dict[str, list[Mapping[str, Any]]] = {}
    for m in result.members:
        by_config.setdefault(m["config"], []).append(m)
    return {config: ConfigScores(config, tuple(int(m["member"]) for m in members), val_scores(members, p),
                                 test_scores(members, p) if "test" in p else None)
            for config, members in by_config.items()}


def confusion_matrices(result: SweepResult, config: str) -> dict[str, Any]:
    """A multiclass config's confusion matrices from the very predictions its figures come from: ``val`` out of
    fold, ``test`` each seed's mean over its fold models; each summed over the ``seeds`` (so its trace over its
    total is the config's accuracy, and each row's diagonal share that class's recall)."""
    scores = config_scores(result)[config]
    p, k = result.predictions, result.num_classes
    out: dict[str, Any] = {"val": _summed_confusion(scores.val, p["val_labels"], k), "seeds": scores.val.shape[0]}
    if scores.test is not None:
        out["test"] = _summed_confusion(scores.test, p["test_labels"], k)
    return out


def _summed_confusion(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> list[list[int]]:
    """(seeds, rows, classes) -> the confusion matrix (true row, predicted column) summed over seeds."""
    truth = np.asarray(labels, np.int64)
    every = np.ones(truth.shape, bool)
    return sum(np.asarray(metrics.confusion_matrix(s.argmax(-1), truth, num_classes, every), np.int64)
               for s in scores).tolist()
