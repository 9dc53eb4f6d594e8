"""Evaluation metrics as pure JAX functions: jittable, vmappable over a member axis, padding-aware.

Every function takes a validity ``mask`` of shape (N,) (bool or {0, 1}); rows where it is false are padding added
to fill a batch or a device shard and count nowhere. Nothing here reads a global or returns host values, so a sweep
can ``jax.vmap`` these over its member axis inside the jitted evaluation step.

Definitions follow scikit-learn's, ties included, so a number in a jaxheads report means what the same name means
there (the tests check this on fixed data):

- ``accuracy``: argmax prediction (ties to the lowest class id, as ``np.argmax``) equals the label.
- ``top5``: the label is among the ``min(5, C)`` highest logits; a tie is broken in favour of the higher class id,
  as ``sklearn.metrics.top_k_accuracy_score`` does. With C <= 5 it is trivially 1.0 (returned anyway so every
  multiclass result has the same keys; reports should hide it then).
- ``macro_f1``: ``f1_score(average="macro")``: the unweighted mean over the classes that occur among the labels or
  the predictions of the valid rows; a class that occurs in neither is left out of the mean.
- ``roc_auc``: the probability that a random positive scores above a random negative, ties counting one half
  (the Mann–Whitney statistic, equal to scikit-learn's trapezoidal ``roc_auc_score``).
- ``average_precision``: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, as
  ``average_precision_score``. Tied scores form one threshold.

Classes for which a ranking metric is undefined (no valid positives, or for ROC-AUC no valid negatives) get NaN
where scikit-learn raises (ROC-AUC) or returns 0 with a warning (AP); macro means average the defined classes only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
# The validation metric each task ranks by unless told otherwise (higher is better).
DEFAULT_METRIC = {"multiclass": "accuracy", "multilabel": "macro_average_precision"}


def metric_for_task(task: str) -> str:
    """The default ranking metric of ``task`` ("multiclass" | "multilabel")."""
    if task not in DEFAULT_METRIC:
        raise ValueError(f"task: {task!r} is not one of {sorted(DEFAULT_METRIC)}")
    return DEFAULT_METRIC[task]


def probabilities(logits: Array, task: str) -> Array:
    """The task's link on (..., K) logits: a softmax over classes (multiclass) or a sigmoid per class (multilabel)."""
    return jax.nn.softmax(logits, -1) if task == "multiclass" else jax.nn.sigmoid(logits)


def balanced_accuracy(logits: Array, labels: Array, mask: Array) -> Array:
    """Mean recall over the classes present among the valid rows (scikit-learn's balanced_accuracy_score)."""
    truth = jax.nn.one_hot(labels, logits.shape[-1]) * mask[:, None]
    hits = jnp.sum(truth * jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1]), axis=0)
    count = jnp.sum(truth, axis=0)
    present = count > 0
    return jnp.sum(jnp.where(present, hits / jnp.maximum(count, 1), 0.0)) / jnp.maximum(jnp.sum(present), 1)


def _valid(mask: Array) -> Array:
    return jnp.asarray(mask).astype(bool)


def _safe_div(num: Array, den: Array) -> Array:
    """num / den, NaN where den == 0 (never a division-by-zero inf or a trace-time warning)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), jnp.nan)


def _mean_defined(values: Array) -> Array:
    """Mean of the non-NaN entries of a 1-D array; NaN if none is defined."""
    defined = ~jnp.isnan(values)
    return _safe_div(jnp.sum(jnp.where(defined, values, 0.0)), jnp.sum(defined).astype(values.dtype))


# ----------------------------------------------------------------------------------------------- multiclass


ONE_HOT_CONFUSION_MAX_CLASSES = 32
"""Up to this many classes the confusion matrix is a one-hot product (O(N C^2), no scatter): it compiles faster than
the scatter on a CPU, which matters in a short sweep. Figures: experiments/README.md, "One-hot confusion matrix"
(a one-off measurement: no script, no JSON under experiments/results/)."""


def confusion_matrix(preds: Array, labels: Array, num_classes: int, mask: Array) -> Array:
    """Counts (num_classes, num_classes) int32: rows are true labels, columns predictions (scikit-learn's layout).

    Beyond :data:`ONE_HOT_CONFUSION_MAX_CLASSES` classes, one scatter-add over flattened (label, pred) pairs, O(N)
    rather than the O(N C^2) of a one-hot product, so it stays cheap for 1000-class problems. Padding rows add
    zero; their labels may be anything.
    """
    valid = _valid(mask)
    if num_classes <= ONE_HOT_CONFUSION_MAX_CLASSES:
        truth = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * valid[:, None].astype(jnp.int32)
        predicted = jax.nn.one_hot(preds, num_classes, dtype=jnp.int32)
        return jnp.sum(truth[:, :, None] * predicted[:, None, :], axis=0)
    flat = jnp.where(valid, labels.astype(jnp.int32) * num_classes + preds.astype(jnp.int32), 0)
    counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[flat].add(valid.astype(jnp.int32), mode="drop")
    return counts.reshape(num_classes, num_classes)


def macro_f1_from_confusion(cm: Array) -> Array:
    """Macro F1 from a confusion matrix, over the classes present among labels or predictions (scikit-learn)."""
    cm = cm.astype(jnp.float32)
    tp = jnp.diagonal(cm)
    support_and_predicted = jnp.sum(cm, axis=0) + jnp.sum(cm, axis=1)  # 2tp + fp + fn
    f1 = _safe_div(2.0 * tp, support_and_predicted)  # NaN exactly for classes absent from both
    return _mean_defined(f1)


def multiclass_metrics(logits: Array, labels: Array, mask: Array) -> dict[str, Array]:
    """Accuracy, top-5 accuracy and macro F1 of (N, C) logits against (N,) integer labels over the valid rows.

    Any monotone transform of the logits (probabilities, log-probabilities) gives the same values. Returns scalar
    float32 arrays under the keys ``accuracy``, ``top5``, ``macro_f1``; NaN when no row is valid.
    """
    valid = _valid(mask)
    num_classes = logits.shape[-1]
    labels = jnp.where(valid, labels.astype(jnp.int32), 0)
    n_valid = jnp.sum(valid).astype(jnp.float32)

    preds = jnp.argmax(logits, axis=-1)
    accuracy = _safe_div(jnp.sum((preds == labels) & valid).astype(jnp.float32), n_valid)

    # Rank of the true class with scikit-learn's tie rule: classes scoring higher, plus tied classes with a higher
    # id (its stable argsort, reversed, puts those first).
    true_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    class_ids = jnp.arange(num_classes)[None, :]
    ahead = (logits > true_logit) | ((logits == true_logit) & (class_ids > labels[:, None]))
    rank = jnp.sum(ahead, axis=-1)
    top5 = _safe_div(jnp.sum((rank < min(5, num_classes)) & valid).astype(jnp.float32), n_valid)

    macro_f1 = macro_f1_from_confusion(confusion_matrix(preds, labels, num_classes, valid))
    return {"accuracy": accuracy, "top5": top5, "macro_f1": macro_f1}


# ----------------------------------------------------------------------------------------------- multilabel


def _count_below(values: Array, include: Array, queries: Array) -> tuple[Array, Array]:
    """For each query q: (#included values < q, #included values <= q), by one sort and two binary searches.

    Excluded entries are sorted to the end as +inf and the counts are clipped to the number included, so they are
    never counted, whatever the queries are (an included +inf is still counted correctly).
    """
    n_included = jnp.sum(include).astype(jnp.int32)
    ordered = jnp.sort(jnp.where(include, values, jnp.inf))
    below = jnp.minimum(jnp.searchsorted(ordered, queries, side="left"), n_included)
    at_or_below = jnp.minimum(jnp.searchsorted(ordered, queries, side="right"), n_included)
    return below, at_or_below


def _binary_ranking_metrics(scores: Array, positive: Array, valid: Array) -> tuple[Array, Array]:
    """ROC-AUC and average precision of one class; ``positive`` already excludes invalid rows."""
    negative = valid & ~positive
    n_pos = jnp.sum(positive).astype(jnp.float32)
    n_neg = jnp.sum(negative).astype(jnp.float32)

    # AUC: each positive scores above the negatives below it and ties with those equal to it (half credit).
    neg_below, neg_at_or_below = _count_below(scores, negative, scores)
    credit = 0.5 * (neg_below + neg_at_or_below).astype(jnp.float32)
    auc = _safe_div(jnp.sum(jnp.where(positive, _safe_div(credit, n_neg), 0.0)), n_pos)
    auc = jnp.where(n_neg > 0, auc, jnp.nan)

    # AP: every positive adds 1/P of recall at the threshold equal to its score, where precision is
    # (#positives >= score) / (#valid >= score); tied positives share that threshold, as in scikit-learn.
    pos_below, _ = _count_below(scores, positive, scores)
    all_below, _ = _count_below(scores, valid, scores)
    precision = (n_pos - pos_below) / jnp.maximum(jnp.sum(valid) - all_below, 1).astype(jnp.float32)
    ap = _safe_div(jnp.sum(jnp.where(positive, precision, 0.0)), n_pos)
    return auc, ap


def multilabel_metrics(scores: Array, labels: Array, mask: Array) -> dict[str, Array]:
    """Per-class and macro ROC-AUC and average precision of (N, K) scores against (N, K) {0, 1} labels.

    Scores may be logits or probabilities (only their order matters). Returns ``roc_auc`` (K,),
    ``average_precision`` (K,), ``macro_roc_auc`` and ``macro_average_precision`` (scalars over the defined
    classes). Cost: three sorts of N per class.
    """
    valid = _valid(mask)
    positive = (labels > 0.5) & valid[:, None]
    per_class = jax.vmap(_binary_ranking_metrics, in_axes=(1, 1, None))
    auc, ap = per_class(scores.astype(jnp.float32), positive, valid)
    return {
        "roc_auc": auc,
        "average_precision": ap,
        "macro_roc_auc": _mean_defined(auc),
        "macro_average_precision": _mean_defined(ap),
    }


def _best_f1_threshold(scores: Array, positive: Array, valid: Array) -> Array:
    """The valid score s maximising F1 of the rule ``score >= s`` for one class (+inf when it has no positive)."""
    n_pos = jnp.sum(positive)
    pos_below, _ = _count_below(scores, positive, scores)
    all_below, _ = _count_below(scores, valid, scores)
    true_pos = n_pos - pos_below
    predicted_pos = jnp.sum(valid) - all_below
    f1 = 2.0 * true_pos / jnp.maximum(predicted_pos + n_pos, 1).astype(jnp.float32)
    # Among equal F1, argmax takes the first row; prefer the highest threshold (fewest false alarms) instead.
    f1 = jnp.where(valid, f1, -1.0)
    best_f1 = jnp.max(f1)
    threshold = jnp.max(jnp.where(valid & (f1 == best_f1), scores, -jnp.inf))
    return jnp.where(n_pos > 0, threshold, jnp.inf)


def tune_thresholds(scores: Array, labels: Array, mask: Array) -> Array:
    """Per-class decision thresholds (K,) maximising each class's F1 on these (validation) rows.

    A row is predicted positive for class k when ``scores[:, k] >= thresholds[k]``; thresholds are in the units of
    ``scores`` (logits or probabilities, whichever was passed). Candidates are the valid scores themselves, so the
    optimum over all thresholds is found exactly; among equal F1 the highest threshold wins. A class without any
    valid positive gets +inf (never predicted), since every threshold has F1 0 there.
    """
    valid = _valid(mask)
    positive = (labels > 0.5) & valid[:, None]
    return jax.vmap(_best_f1_threshold, in_axes=(1, 1, None))(scores.astype(jnp.float32), positive, valid)


def multilabel_f1(scores: Array, labels: Array, mask: Array, thresholds: Array) -> dict[str, Array]:
    """Per-class F1 (K,) and ``macro_f1`` of the rule ``scores >= thresholds`` (e.g. tuned on validation, applied
    to test). Like scikit-learn's ``f1_score(average=None)`` with ``zero_division=nan``: a class with no valid
    positive and no positive prediction is NaN and left out of the macro mean."""
    valid = _valid(mask)[:, None]
    predicted = (scores >= thresholds[None, :]) & valid
    actual = (labels > 0.5) & valid
    tp = jnp.sum(predicted & actual, axis=0).astype(jnp.float32)
    den = (jnp.sum(predicted, axis=0) + jnp.sum(actual, axis=0)).astype(jnp.float32)
    f1 = _safe_div(2.0 * tp, den)
    return {"f1": f1, "macro_f1": _mean_defined(f1)}
