"""The hand-off between the feature cache and the sweep: one split of cached backbone features with labels."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class FeatureSplit(NamedTuple):
    """Cached features of one dataset split.

    labels: (N,) int class ids for multiclass, or (N, K) {0, 1} for multilabel.
    pooled: (N, C) global-average-pooled features (what linear probes and ``pooling="none"`` heads take).
    maps:   (N, H, W, C) spatial feature maps, present when a head needs them (flatten, conv stages, max pooling).
    views:  augmented views 1..K-1 of the same examples (``ExtractOptions(views=K)``), each a FeatureSplit
            with the same labels and feature kinds (and ``views`` None); None: the plain images only (K = 1).
    taps:   {tap name: (N, 2C) per-channel mean then standard deviation of that intermediate map} for the taps
            asked for (``ExtractOptions(taps=...)``, :mod:`jaxheads.features.taps`); None: the last layer only.
    """

    labels: np.ndarray
    pooled: np.ndarray | None = None
    maps: np.ndarray | None = None
    views: tuple[FeatureSplit, ...] | None = None
    taps: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def concat_pooled(a: dict[str, FeatureSplit], b: dict[str, FeatureSplit]) -> dict[str, FeatureSplit]:
    """Every split's pooled features of two backbones side by side, (N, C_a + C_b): a candidate that ensembles
    backbones for a linear probe. The two must hold the same examples in the same order (one dataset)."""
    out = {}
    for name, left in a.items():
        right = b[name]
        if left.pooled is None or right.pooled is None:
            raise ValueError(f"split {name!r}: both backbones need pooled features to concatenate them")
        if not np.array_equal(left.labels, right.labels):
            raise ValueError(f"split {name!r}: the two backbones' features hold different examples")
        out[name] = FeatureSplit(labels=left.labels, pooled=np.concatenate([left.pooled, right.pooled], axis=-1))
    return out
