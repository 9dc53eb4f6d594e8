"""Test set-up: 8 simulated CPU devices (multi-device code paths run without a GPU), strict numerics, fixed seeds."""

import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def jaxheads_cache(tmp_path_factory):
    """One cache directory for the whole session (converted backbones are reused across tests)."""
    path = tmp_path_factory.mktemp("jaxheads_cache")
    os.environ["JAXHEADS_CACHE"] = str(path)
    return path


@pytest.fixture
def key():
    return jax.random.key(0)
