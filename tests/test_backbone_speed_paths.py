"""The feature pass's faster paths compute the same numbers as the plain ones, bit for bit: strided depthwise
convolutions read through a phase reshape, and EfficientNet-Lite's leading layers run one image at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxheads.backbones import Preprocessing
from jaxheads.backbones import efficientnet_lite as el
from jaxheads.backbones.base import feature_maps
from jaxheads.backbones.depthwise import depthwise_conv2d
from jaxheads.backbones.keras_layers import same_pads


@pytest.mark.slow
@pytest.mark.parametrize("size,kernel", [(8, 3), (9, 3), (10, 5), (7, 5)])
def test_phase_strided_depthwise_equals_strided_slices(size, kernel):
    rng = np.random.default_rng(size)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, 4)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 4)), jnp.float32)
    pads = same_pads(x.shape[1:3], kernel, 2)
    fast = depthwise_conv2d(x, weights, 2, pads)
    plain = depthwise_conv2d(x, weights, 2, pads, phases=False)
    assert fast.shape == plain.shape == (2, -(-size // 2), -(-(size + 1) // 2), 4)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(plain))


def _tiny_lite() -> el.EfficientNetLite:
    """Stem, the first four Lite0 blocks (strides 1 and 2, kernels 3 and 5) and the head."""
    return el.EfficientNetLite(el.block_specs(1.0, 1.0)[:4], high_res_layers=3)


@pytest.mark.slow
def test_layers_run_in_two_parts_equal_the_whole_network():
    module = _tiny_lite()
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = module.init(jax.random.key(1), x)
    whole = module.apply(variables, x)["features"]
    first = module.apply(variables, x, stop=3)["features"]
    assert first.shape == (2, 8, 8, 24)
    rest = module.apply(variables, first, start=3)["features"]
    np.testing.assert_array_equal(np.asarray(rest), np.asarray(whole))


@pytest.mark.slow
def test_high_res_layers_one_image_at_a_time_change_no_feature():
    module = _tiny_lite()
    preprocessing = Preprocessing(32, mean=(127.0,) * 3, std=(128.0,) * 3)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)), jnp.uint8)
    variables = module.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
    plain = feature_maps(module.clone(high_res_layers=0, phases=False), variables, images, preprocessing, 2)
    fast = feature_maps(module, variables, images, preprocessing, 2)
    assert fast.shape == (4, 4, 4, el.HEAD_CHANNELS)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(plain))
