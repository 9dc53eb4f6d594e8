"""The feature pass's options as one frozen record: what :func:`jaxheads.features.extract_all` reads, passed whole
from the job to the backbone pass instead of a dozen separate parameters."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from jaxheads.data.augment import DEFAULT_POLICY, check_views, parse_policy
from jaxheads.features.taps import LAST, parse_taps

__all__ = ["ExtractOptions"]


@dataclasses.dataclass(frozen=True)
class ExtractOptions:
    """How the feature pass runs and what it keeps; validated and normalised on construction.

    cache_dir:   the cache's root (default ``features.default_cache_dir()``).
    need_maps:   keep the (N, h, w, C) feature maps too, not only the pooled vectors.
    batch_size:  images per backbone call; a new cache's shard is ``chunk_size`` images (default ``8 *
                 batch_size``) rounded up to whole batches, so both shape the shard layout of a new cache.
    strict:      an unreadable image raises instead of being left out with a warning.
    devices:     the devices a batch is sharded over (default: all; each process's own on a multi-host run).
    num_workers: image-decoding threads (default: the loader's choice).
    views:       K >= 1: the splits in ``view_splits`` also get augmented views 1..K-1 under ``augment``.
    lazy:        read the splits as memory-mapped ``LazyRows`` instead of in-memory arrays.
    taps:        ``"last"`` (today's features alone), ``"all"``, or tap names (``"block05,head"``): their pooled
                 vectors land in ``FeatureSplit.taps`` (:mod:`jaxheads.features.taps`).
    """

    cache_dir: str | os.PathLike[str] | None = None
    need_maps: bool = False
    batch_size: int = 32
    chunk_size: int | None = None
    strict: bool = False
    devices: Sequence[Any] | None = None
    num_workers: int | None = None
    views: int = 1
    augment: str | Sequence[str] = DEFAULT_POLICY
    view_splits: Sequence[str] = ("train",)
    lazy: bool = False
    taps: str | Sequence[str] = LAST

    def __post_init__(self) -> None:
        # Normalised once here, so every stage downstream reads canonical values (tuples, a parsed policy).
        set_ = _setter(self)
        set_("batch_size", max(1, int(self.batch_size)))
        set_("views", check_views(self.views))
        set_("augment", parse_policy(self.augment))
        set_("view_splits", tuple(self.view_splits))
        set_("devices", None if self.devices is None else tuple(self.devices))
        set_("taps", parse_taps(self.taps))

    def replace(self, **changes: Any) -> ExtractOptions:
        """A copy with ``changes`` (unknown names are refused)."""
        return dataclasses.replace(self, **changes)


def _setter(record: Any) -> Any:
    """A setter for a frozen dataclass's own ``__post_init__`` (the one place it may assign)."""
    return lambda name, value: object.__setattr__(record, name, value)
