"""``keras:PATH[@TAP]``: a user's saved Keras model (a keras.applications base under their own head) is found by
architecture, converted with the zoo's name map, and its base's features equal Keras's own (max |diff| <= 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from jaxheads import features  # noqa: E402
from jaxheads.backbones import get_config, keras_model, load, sha256_file  # noqa: E402

TOL = 1e-4
SIZE = 48


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, randomise_keras_batch_norms):
    """MobileNetV2 (alpha 0.35, random weights and batch-norm statistics) under a pooled BN + Dense head, saved
    as .keras and as a legacy .h5; returns (the base, {suffix: path})."""
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(alpha=0.35, weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    randomise_keras_batch_norms(base)
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(base(inputs))
    head = keras.layers.Dense(3)(keras.layers.BatchNormalization()(pooled))  # a head BN must not pass for the base's
    model = keras.Model(inputs, head)
    folder = tmp_path_factory.mktemp("keras_model")
    paths = {".keras": folder / "model.keras", ".h5": folder / "model.h5"}
    model.save(paths[".keras"])
    model.save(paths[".h5"])
    return base, paths


def images() -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_base_found_and_equal_to_keras(saved_model, suffix, jaxheads_cache):
    base, paths = saved_model
    spec = f"keras:{paths[suffix]}"
    assert keras_model.base_name(spec) == "mobilenet_v2_035"
    config = get_config(spec)
    assert config.preprocessing.input_size == SIZE and config.taps[-1] == "head"
    backbone = load(spec)
    ours = np.asarray(backbone.apply(images())["features"])
    theirs = base.predict(images() / 127.5 - 1.0, verbose=0)
    print(f"keras:{suffix} base max |diff| = {np.max(np.abs(ours - theirs)):.2e}")
    assert np.max(np.abs(ours - theirs)) <= TOL
    # The lazy source keys the feature cache with the id the built backbone has (so predict accepts its heads).
    assert features.backbone_source(spec).weights_id == backbone.weights_id == sha256_file(paths[suffix])[:16]


@pytest.mark.slow
def test_cut_at_a_tap(saved_model, jaxheads_cache):
    base, paths = saved_model
    spec = f"keras:{paths['.keras']}@block5"
    backbone = load(spec)
    assert get_config(spec).taps[-1] == "block5"
    full = load(f"keras:{paths['.keras']}")
    x = full.config.preprocessing(images())
    want = full.module.apply(full.variables, x, train=False, until="block5")["features"]
    np.testing.assert_array_equal(np.asarray(backbone.apply(images())["features"]), np.asarray(want))


def test_bad_specs(saved_model, tmp_path):
    _, paths = saved_model
    with pytest.raises(ValueError, match="not a tap of its base mobilenet_v2_035; taps: stem, block0"):
        get_config(f"keras:{paths['.keras']}@nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_config(f"keras:{tmp_path / 'missing.keras'}")
    with pytest.raises(ValueError, match=r"expected keras:PATH\[@TAP\]"):
        get_config("keras:model.onnx")


def test_unknown_architecture_names_the_families(tmp_path):
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Conv2D(4, 3, name="mine")(inputs)))
    model.save(tmp_path / "other.keras")
    with pytest.raises(ValueError, match="no zoo architecture matches.*VGG, ResNet, MobileNetV1, MobileNetV2, "
                                         "EfficientNet, Xception"):
        get_config(f"keras:{tmp_path / 'other.keras'}")
