"""The feature cache: run the frozen backbone once over a dataset's images and keep what the heads train on.

:func:`extract_features` returns a :class:`~jaxheads.features.split.FeatureSplit` (labels, pooled (N, C) vectors, and
(N, h, w, C) maps when asked) for one split, :func:`extract_all` for several. The backbone is given as a
:class:`BackboneSource`: its identity (name, weights id, preprocessing) is known without building it, and
``load()`` is only called when something has to be computed, so a cache hit never builds the backbone.

Features are cached per image, not per split: one cache entry holds every image of the dataset (all its splits),
and a split is taken from it by index. Drawing the splits again (another ``seed``, other fractions) or dividing
them into folds finds every image's features and never runs the backbone.

Key (:func:`images_key`): backbone name + weights id + input size + ``Preprocessing.key()`` + the resize method +
the cache format + the *set* of the dataset's images (``Dataset.image_ids``: relative path, size and mtime of a
file, the content of bytes and arrays; not labels, not splits). Anything that changes the features changes the key,
so a cache built with another backbone or preprocessing is never read (nor overwritten: it has another directory).

On disk (laid out and written by :mod:`jaxheads.features.store`): the plan (which image each row holds; the first
pass orders the rows split by split, train first), then fixed-size float16 shards of rows, each written
atomically, then ``meta.json`` once every shard is complete. A call computes only the shards that hold images of
the splits it asks for and are not complete yet: a killed pass resumes at its first missing shard, a deleted or
damaged shard is computed again (the backbone is deterministic per image; batches are padded to one shape). A
split is gathered from the memory-mapped shards, so the whole image set is never in memory. The backbone pass that
computes the missing shards is :mod:`jaxheads.features.compute`.

How the pass runs and what it keeps travels as one frozen :class:`ExtractOptions` (:mod:`.options`). Taps
(:mod:`.taps`): pooled vectors of the backbone's intermediate outputs, from the same forward, in one more file per
shard; ``taps="last"`` (the default) is the pass, key and bytes from before taps existed.
"""

from .cache import CACHE_FORMAT, cache_key, default_cache_dir, extract_all, extract_features, images_key
from .compute import PassProgress
from .options import ExtractOptions
from .source import BackboneSource, backbone_source, feature_map_shape, min_input_size
from .split import FeatureSplit
from .store import FeatureCacheError

__all__ = [
    "BackboneSource",
    "CACHE_FORMAT",
    "ExtractOptions",
    "FeatureCacheError",
    "FeatureSplit",
    "PassProgress",
    "backbone_source",
    "cache_key",
    "default_cache_dir",
    "extract_all",
    "extract_features",
    "feature_map_shape",
    "images_key",
    "min_input_size",
]
