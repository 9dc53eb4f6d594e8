"""Winograd F(2x2, 3x3) against XLA's direct convolution: same output up to float32 rounding."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxheads.backbones.winograd import winograd_conv3x3

TOL = 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(
    ("size", "channels", "features", "pads"),
    [
        ((8, 8), 64, 64, ((1, 1), (1, 1))),  # even output
        ((7, 9), 16, 24, ((1, 1), (1, 1))),  # odd output sizes: padded and cropped
        ((6, 5), 3, 8, ((0, 1), (2, 0))),  # explicit asymmetric pads
        ((10, 10), 128, 32, ((0, 0), (0, 0))),  # "valid"
        ((5, 4), 512, 512, ((1, 1), (1, 1))),
    ],
)
def test_matches_direct_convolution(size, channels, features, pads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *size, channels), np.float32)
    kernel = (rng.standard_normal((3, 3, channels, features)) / np.sqrt(9 * channels)).astype(np.float32)
    ref = jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = jax.jit(winograd_conv3x3, static_argnums=2)(x, kernel, pads)
    assert out.shape == ref.shape
    err = float(np.abs(np.asarray(out) - np.asarray(ref)).max())
    print(f"WINOGRAD {size} {channels}->{features} pads {pads}: max|diff| {err:.1e}")
    assert err <= TOL
