"""The hand-off between the feature cache and the sweep: one split of cached backbone features with labels."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class FeatureSplit(NamedTuple):
    """Cached features of one dataset split.

    labels: (N,) int class ids for multiclass, or (N, K) {0, 1} for multilabel.
    pooled: (N, C) global-average-pooled features (what linear probes and ``pooling="none"`` heads take).
    maps:   (N, H, W, C) spatial feature maps, present when a head needs them (flatten, conv stages, max pooling).
    """

    labels: np.ndarray
    pooled: np.ndarray | None = None
    maps: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])
