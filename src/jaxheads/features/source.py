"""The backbone as the feature cache sees it: its identity (name, weights id, preprocessing at an input size)
known without building it, and how to build it. :mod:`jaxheads.features` keys its cache by it and re-exports it."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Any, Callable

from jaxheads import backbones
from jaxheads.backbones import Backbone, Preprocessing, timm_convert

__all__ = ["BackboneSource", "as_source", "backbone_source", "feature_map_shape", "min_input_size"]


@dataclasses.dataclass(frozen=True)
class BackboneSource:
    """What the cache needs to know about a backbone without building it, and how to build it.

    ``weights_id`` must change whenever the weights do (a file hash, a pinned source hash, ``random-seed0``).
    ``load`` is a zero-argument callable returning the :class:`~jaxheads.backbones.Backbone`; it is called at
    most once per :func:`extract_all`, and not at all on a cache hit.
    """

    name: str
    weights_id: str
    preprocessing: Preprocessing
    load: Callable[[], Backbone]
    taps: tuple[str, ...] = ()
    """The module's tap names, input to output (``BackboneConfig.taps``)."""

    @classmethod
    def of(cls, backbone: Backbone) -> BackboneSource:
        """Wrap an already built backbone."""
        config = backbone.config
        return cls(config.name, backbone.weights_id, config.preprocessing, lambda: backbone, tuple(config.taps))


def backbone_source(name: str, weights: Any = "default", *, seed: int = 0,
                    input_size: int | None = None) -> BackboneSource:
    """A lazy :class:`BackboneSource` for ``jaxheads.backbones.load(name, weights, seed=seed)``.

    The weights id is found without loading: ``random-seed{seed}`` for ``None``, the file's sha256 (first 16 hex
    digits) for a path (what the families' file loaders return) and for ``timm:NAME`` (its hub file's), and for a
    named source the id the family pins in ``config.weights_ids`` (so the lazy key equals the key of the built
    backbone), else ``"named:<name>"``.
    ``input_size`` (default the backbone's own) resizes the images to that many pixels before the backbone; it
    is part of the cache key, and below :func:`min_input_size` it is an error naming ``--input-size``.
    """
    config = backbones.get_config(name)
    if weights == "default":
        weights = config.default_weights
    if weights is None:
        weights_id = f"random-seed{seed}"
    elif isinstance(weights, (str, os.PathLike)) and str(weights) in config.weights:
        weights_id = config.weights_ids.get(str(weights), f"named:{weights}")
    elif str(weights).startswith(timm_convert.PREFIX):  # the hub file's hash, as the loader gives it
        weights_id = timm_convert.weights_id(config, weights)
    elif isinstance(weights, (str, os.PathLike)) and Path(weights).is_file():
        weights_id = backbones.sha256_file(weights)[:16]
    else:
        weights_id = f"other:{weights}"  # backbones.load gives the clear error when it is called
    preprocessing = config.preprocessing
    if input_size is not None and int(input_size) != preprocessing.input_size:
        least = min_input_size(config.name)
        if int(input_size) < least:
            raise ValueError(f"--input-size {input_size}: {config.name} needs at least {least} px (its feature map "
                             f"is 1/{least} of the input side)")
        preprocessing = dataclasses.replace(preprocessing, input_size=int(input_size))
    loader = functools.cache(lambda: backbones.load(name, weights, seed=seed))
    return BackboneSource(config.name, weights_id, preprocessing, loader, tuple(config.taps))


def min_input_size(name: str) -> int:
    """The smallest input side backbone ``name`` takes: its total stride (32 for five stride-2 stages), read from
    the feature map it gives at its own input size, so the last map is at least 1x1."""
    from jaxheads.backbones import describe

    arch = describe.architecture(name)
    return 2 ** round(math.log2(arch.input_size / arch.feature_shape[0]))


def feature_map_shape(name: str, input_size: int | None = None) -> tuple[int, ...]:
    """The (h, w, C) feature map backbone ``name`` gives at ``input_size`` (default its own): its shipped map scaled
    with the input side, rounded up as its stride-2 stages with "same" padding round."""
    from jaxheads.backbones import describe

    arch = describe.architecture(name)
    scale = (input_size or arch.input_size) / arch.input_size
    h, w, channels = arch.feature_shape
    return (math.ceil(h * scale), math.ceil(w * scale), channels)


def as_source(backbone: Backbone | BackboneSource) -> BackboneSource:
    """``backbone`` as a :class:`BackboneSource` (a built backbone is wrapped)."""
    return backbone if isinstance(backbone, BackboneSource) else BackboneSource.of(backbone)
