"""From image sources to pixels: decode (:func:`load_image`), resize and centre-crop (:func:`resize_center_crop`),
and the threaded, prefetching batch pipeline (:func:`iter_batches`) the feature pass reads.

An unreadable image is found here, when decoded: it is skipped with a :class:`~jaxheads.data.dataset.BadImageWarning`
naming it, or raises :class:`~jaxheads.data.dataset.BadImageError` with ``strict=True``. :mod:`jaxheads.data`
re-exports these names.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import os
import warnings
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image

from jaxheads.data.dataset import BadImageError, BadImageWarning, ImageRef, ImageSource, ImageSplit

RESIZE_METHOD = "pil-bilinear-shorter-side-center-crop-v1"
"""Names what :func:`resize_center_crop` does; part of the feature-cache key, so change it when the resize does."""


def load_image(source: ImageSource, *, name: str | None = None) -> Image.Image:
    """Decode one image to an RGB PIL image: grayscale is replicated, alpha dropped (as PIL/torchvision do),
    16-bit scaled to 8-bit. Any failure (missing, corrupt, truncated, not an image) raises
    :class:`BadImageError` naming the file."""
    label = name or (source if isinstance(source, str) else "image")
    try:
        if isinstance(source, ImageRef):  # read here, in the decode worker: only the batches in flight are in memory
            label, source = name or source.name, source.read()
        if isinstance(source, np.ndarray):
            return _array_to_rgb(source)
        with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as image:
            image.load()  # decode now: truncated files fail here, not later
            return _to_rgb(image)
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... for bad files
        raise BadImageError(f"{label}: cannot decode image ({type(err).__name__}: {err})") from err


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {array.dtype}")
    return _to_rgb(Image.fromarray(array))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode.startswith("I;16") or values.max() > 255 else 1.0
        image = Image.fromarray(np.clip(np.rint(values / scale), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` (bilinear, antialiased when shrinking), then take the centred
    ``size`` x ``size`` crop; (size, size, 3) uint8. Images smaller than ``size`` are scaled up."""
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new != (width, height):
        image = image.resize(new, Image.Resampling.BILINEAR)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


class Batch(NamedTuple):
    """One batch: images (B, S, S, 3) uint8 (or float32 in [0, 255]), labels, dataset indices of the images, and
    the indices of this batch's items that were skipped as unreadable."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    skipped: np.ndarray


def iter_batches(
    split: ImageSplit,
    *,
    image_size: int,
    batch_size: int,
    indices: Sequence[int] | np.ndarray | None = None,
    strict: bool = False,
    num_workers: int | None = None,
    prefetch: int = 2,
    dtype: type | np.dtype = np.uint8,
    transform: Callable[[Image.Image, int], np.ndarray] | None = None,
) -> Iterator[Batch]:
    """Decode, convert to RGB and resize+crop ``split``'s images (``indices``, default all, in order) to
    ``image_size``, in batches of ``batch_size``, on a thread pool that runs ``prefetch`` batches ahead
    (PIL releases the GIL while decoding and resizing).

    An unreadable image is left out of its batch with a :class:`BadImageWarning` naming it (and a closing warning
    with the count), or raises :class:`BadImageError` when ``strict``. ``transform(image, index)`` replaces the
    resize+crop (augmented views, :mod:`jaxheads.data.augment`). Batches keep their place even when every
    image in one is bad (``images`` is then empty), so callers can track progress by ``indices``/``skipped``.
    """
    order = np.arange(len(split)) if indices is None else np.asarray(indices, np.int64)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    workers = num_workers or min(4, os.cpu_count() or 1)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    skipped_total = 0

    def decode(i: int) -> np.ndarray:
        image = load_image(split.sources[i], name=split.name(i))
        return resize_center_crop(image, image_size) if transform is None else transform(image, i)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jaxheads-decode")
    try:
        for ids, futures in _prefetched(pool, decode, chunks, prefetch):
            images, kept, bad = [], [], []
            for i, future in zip(ids, futures, strict=True):
                try:
                    images.append(future.result())
                    kept.append(i)
                except BadImageError as err:
                    if strict:
                        raise
                    warnings.warn(f"skipping unreadable image {err}", BadImageWarning, stacklevel=2)
                    bad.append(i)
            skipped_total += len(bad)
            kept_ids = np.asarray(kept, np.int64)
            stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
            yield Batch(stacked.astype(dtype, copy=False), split.labels[kept_ids], kept_ids, np.asarray(bad, np.int64))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if skipped_total:
        warnings.warn(
            f"skipped {skipped_total} of {len(order)} images that could not be decoded (strict=True fails instead)",
            BadImageWarning,
            stacklevel=2,
        )


def _prefetched(
    pool: concurrent.futures.Executor, decode: Callable[[int], np.ndarray], chunks: Sequence[np.ndarray], prefetch: int
) -> Iterator[tuple[np.ndarray, list[concurrent.futures.Future[np.ndarray]]]]:
    """Each chunk's ids and decode futures, in order, with up to ``prefetch`` more chunks submitted ahead."""
    pending: collections.deque[tuple[np.ndarray, list[concurrent.futures.Future[np.ndarray]]]] = collections.deque()
    next_chunk = 0
    while pending or next_chunk < len(chunks):
        while next_chunk < len(chunks) and len(pending) <= max(prefetch, 0):
            ids = chunks[next_chunk]
            pending.append((ids, [pool.submit(decode, int(i)) for i in ids]))
            next_chunk += 1
        yield pending.popleft()
