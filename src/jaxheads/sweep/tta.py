"""Test-time augmentation: every member's test probabilities averaged over the K views of each test image.

When the test split carries augmented views (``FeatureSplit.views``, from ``features.extract_all(views=K,
view_splits=(..., "test"))``), :func:`average_test_views` replaces ``SweepResult.predictions["test"]`` by the mean,
over the plain image and its K-1 views, of each member's probabilities at its kept weights. Everything computed
from the predictions follows: the recommended config's one test figure (``selection["test"]``, marked by
``selection["test_views"]``), the ensembles and the confusion matrices. The members' own ``test`` metrics (the
leaderboard's per-member figures) stay those of the plain images. Val never uses the views: selection is unchanged.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import numpy as np

from jaxheads import heads, metrics
from jaxheads.heads import HeadSpec
from jaxheads.features.split import FeatureSplit

from .spec import MemberSpec

__all__ = ["average_test_views", "test_views"]


def test_views(test: FeatureSplit | None) -> int:
    """How many views of each test image the test figures average (1: the plain image alone, no TTA)."""
    return 1 if test is None else 1 + len(test.views or ())


@functools.partial(jax.jit, static_argnames=("spec",))
def _probabilities(variables: Any, x: jax.Array, spec: HeadSpec) -> jax.Array:
    logits = heads.apply_head(variables, x, spec)
    return metrics.probabilities(logits, spec.task)


def average_test_views(records: Sequence[dict[str, Any]], variables: Sequence[Any], test: FeatureSplit,
                       plain: np.ndarray) -> np.ndarray:
    """(members, test rows, classes): each member's probabilities averaged over the test views. ``plain`` holds
    the sweep's own probabilities of the plain images (view 0, kept exactly); views 1..K-1 are scored here with
    each member's unpadded head (:func:`jaxheads.heads.apply_head`)."""
    total = np.asarray(plain, np.float64).copy()
    for view in test.views or ():
        for i, record in enumerate(records):
            spec = MemberSpec.from_dict(record["spec"]).head
            x = np.asarray(getattr(view, spec.feature_kind), np.float32)
            total[i] += np.asarray(_probabilities(variables[i], x, spec), np.float64)
    return (total / test_views(test)).astype(np.float32)
