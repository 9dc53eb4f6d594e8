"""The benchmark's data: elpv subsampled (or a synthetic toy problem for tests), decoded once for Keras.

Every system sees the same pixels: images are decoded and resized by ``jaxheads.data.iter_batches`` (the feature
pass's own pipeline), so Keras gets in memory exactly the uint8 arrays the Flax backbone gets.
"""

from __future__ import annotations

import numpy as np

from jaxheads import data
from experiments.alternatives.config import BenchSize

TOY_CLASSES = ("red", "green", "blue", "grey")
TOY_COLOURS = np.asarray([[200, 40, 40], [40, 200, 40], [40, 40, 200], [128, 128, 128]], np.float32)


def toy_images(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (size, size, 3) uint8 images whose class is their mean colour, under heavy pixel noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int32) % len(TOY_CLASSES)
    rng.shuffle(labels)
    noise = rng.normal(0.0, 40.0, (n, size, size, 3))
    images = np.clip(TOY_COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


def _take(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """About ``n`` indices of ``labels``, stratified by label (all of them when n >= len)."""
    if n >= len(labels):
        return np.arange(len(labels))
    return data.stratified_split(labels, {"take": n / len(labels)}, seed=seed)["take"]


def trial_dataset(size: BenchSize, seed: int = 0) -> data.Dataset:
    """Part 1's dataset: ``train``/``val`` of about ``n_train``/``n_val`` images, stratified."""
    if size.dataset == "toy":
        images, labels = toy_images(size.n_train + size.n_val, size.image_size, seed)
        full = data.Split(images, labels)
        splits = {"train": full.subset(np.arange(size.n_train)),
                  "val": full.subset(np.arange(size.n_train, len(labels)))}
        return data.Dataset("toy", TOY_CLASSES, "multiclass", splits, source="toy")
    ds = data.load_dataset(size.dataset, seed=seed)
    splits = {}
    for name, n in (("train", size.n_train), ("val", size.n_val)):
        split = ds.split(name)
        splits[name] = split.subset(_take(split.labels, n, seed))
    return data.Dataset(f"{ds.name}-{size.n_train}-{size.n_val}", ds.classes, ds.task, splits, root=ds.root,
                        source=ds.source)


def quality_dataset(size: BenchSize, seed: int = 0) -> data.Dataset:
    """Part 4's dataset: one split ``all`` (every image, or ``q_images`` of them), re-split per seed later."""
    if size.dataset == "toy":
        images, labels = toy_images(size.q_images or 400, size.image_size, seed + 1)
        return data.Dataset("toy-all", TOY_CLASSES, "multiclass", {"all": data.Split(images, labels)}, source="toy")
    ds = data.load_dataset(size.dataset, seed=seed)
    parts = [ds.split(name) for name in ds.splits]
    sources = [s for part in parts for s in part.sources]
    labels = np.concatenate([part.labels for part in parts])
    every = data.Split(sources, labels)
    if size.q_images is not None:
        every = every.subset(_take(labels, size.q_images, seed))
    return data.Dataset(f"{ds.name}-all", ds.classes, ds.task, {"all": every}, root=ds.root, source=ds.source)


def decode(split: data.Split, image_size: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Every image of ``split`` as (N, S, S, 3) uint8 with its labels, through the feature pass's pipeline."""
    images, labels = [], []
    for batch in data.iter_batches(split, image_size=image_size, batch_size=batch_size):
        images.append(batch.images)
        labels.append(batch.labels)
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)
