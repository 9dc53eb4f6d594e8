"""Test set-up: 8 simulated CPU devices (multi-device code paths run without a GPU), strict numerics, fixed seeds;
and the fixtures every test module shares: the tiny backbone, tiny image folders, a tiny head and a tiny feature
cache (defined in tiny.py, which a test's child process can import too)."""

import dataclasses
import os
from pathlib import Path

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

import tiny  # noqa: E402  (registers the tiny backbone before any test module is imported)

from jaxheads import features  # noqa: E402


@pytest.fixture(scope="session")
def jaxheads_cache(tmp_path_factory):
    """One cache directory for the whole session (converted backbones are reused across tests)."""
    path = tmp_path_factory.mktemp("jaxheads_cache")
    os.environ["JAXHEADS_CACHE"] = str(path)
    return path


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(scope="session")
def tests_dir() -> Path:
    """The folder of tiny.py: a child process puts it on sys.path and imports tiny to register the tiny backbone."""
    return Path(tiny.__file__).parent


@pytest.fixture(scope="session")
def tiny_backbone() -> str:
    """The name of the tiny registered backbone: (N, 32, 32, 3) -> {"features": (N, 8, 8, 16)} through four named
    blocks with batch norm (stem, block0, block1, head); its default weights ("tiny-v1") are drawn with NumPy."""
    return tiny.NAME


@pytest.fixture(scope="session")
def tiny_tapped_backbone() -> str:
    """The tiny backbone (the same network and weights) under a name whose config lists its four blocks as taps
    (stem, block0, block1, head), for ``--taps`` and ``--representation``."""
    return tiny.TAPPED


@pytest.fixture(scope="session")
def tiny_relatives() -> tuple[str, str]:
    """Two more names of the tiny backbone: (the same network with other weights, the same network and weights
    with another input normalisation)."""
    return tiny.OTHER_WEIGHTS, tiny.OTHER_PREPROCESSING


@pytest.fixture(scope="session")
def tiny_source(tiny_backbone) -> features.BackboneSource:
    """The tiny backbone randomly initialised with seed 0 (``--weights none --seed 0``), not yet built."""
    return features.backbone_source(tiny_backbone, None, seed=0)


@pytest.fixture(scope="session")
def tiny_source_cached(tiny_source) -> features.BackboneSource:
    """``tiny_source`` whose backbone must never be built: every image has to come from the cache."""

    def never() -> object:
        raise AssertionError("the backbone was built although every image was cached")

    return dataclasses.replace(tiny_source, load=never)


@pytest.fixture(scope="session")
def tiny_source_counted(tiny_source):
    """``tiny_source_counted(calls)``: ``tiny_source``, appending 1 to ``calls`` each time its backbone is built."""
    return lambda calls: dataclasses.replace(tiny_source, load=lambda: calls.append(1) or tiny_source.load())


@pytest.fixture
def extract_options() -> dict:
    """Feature-pass options for the tiny cache tests: maps too, 4-image batches and 4-image shards."""
    return {"need_maps": True, "batch_size": 4, "chunk_size": 4}


@pytest.fixture(scope="session")
def randomise_keras_batch_norms():
    """``randomise_keras_batch_norms(model, seed=0)``: random scale, offset and running statistics in every Keras
    BatchNormalization, so a parity test sees a statistics mix-up."""
    return tiny.randomise_keras_batch_norms


@pytest.fixture(scope="session")
def write_hub_cache():
    """``write_hub_cache(cache, weights, std)``: a Hugging Face cache holding ``weights`` as timm's
    tf_efficientnet_lite0.in1k (mean 0.5, ``std``); returns the cached file."""
    return tiny.write_hub_cache


@pytest.fixture(scope="session")
def make_folder():
    """``make_folder(root, per_class, classes=("cat", "dog"))``: real PNG/JPEG files of varied sizes and modes."""
    return tiny.make_folder


@pytest.fixture(scope="session")
def make_colour_folder():
    """``make_colour_folder(root, per_class=12, size=(44, 40))``: two classes (red, blue) of noisy colour PNGs."""
    return tiny.make_colour_folder


@pytest.fixture(scope="session")
def save_tiny_head():
    """``save_tiny_head(path, classes, seed=0)``: a saved pooled-feature head on the tiny backbone's default weights."""
    return tiny.save_head


@pytest.fixture(scope="session")
def write_feature_cache():
    """``write_feature_cache(folder, n=160, shard=16, seed=0) -> (plan, labels)``: a tiny synthetic feature cache of
    3 classes of (3, 3, 8) float16 maps, one image unreadable."""
    return tiny.write_cache


@pytest.fixture(scope="session")
def feature_cache_splits():
    """``feature_cache_splits(folder, plan, labels, lazy, seed=0)``: train / val / test (96 / 32 / 32 rows) of a
    ``write_feature_cache`` cache, read lazily or into memory."""
    return tiny.cache_splits
