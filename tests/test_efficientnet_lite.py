"""EfficientNet-Lite port: ImageNet classes on real photos, parity with the PyTorch reference on the same
checkpoint, the restricted unpickler, the orbax cache, and shapes of a random init.

Probabilities and parity maxima are printed even without ``-s``.
"""

import io
import pickle
import time

import jax
import numpy as np
import pytest
import skimage.data

from jaxheads import backbones, classify
from jaxheads.backbones import efficientnet_lite as el
from jaxheads.backbones import torch_pickle

# (photo, loader, accepted ImageNet ids): each accepted set is the photo's subject in ImageNet's vocabulary.
PHOTOS = [
    ("chelsea", skimage.data.chelsea, {281, 282, 285}),  # tabby / tiger cat / Egyptian cat
    ("coffee", skimage.data.coffee, {967, 968}),  # espresso / cup
    ("rocket", skimage.data.rocket, {657, 744, 812}),  # missile / projectile / space shuttle
    ("camera", skimage.data.camera, {872}),  # tripod (the cameraman's)
    ("motorcycle", lambda: skimage.data.stereo_motorcycle()[0], {665, 670}),  # moped / motor scooter
    ("demo photo", classify.demo_photo_path, {281, 282, 285}),  # the bundled JPEG of chelsea, read from its path
]


def _report(capsys, text: str) -> None:
    """Print into the test log even when pytest captures output."""
    with capsys.disabled():
        print(text)


@pytest.fixture(scope="module")
def lite0(jaxheads_cache):
    """Lite0 with its ImageNet classifier; converted once per session into the session's cache."""
    return backbones.load("efficientnet_lite0", "imagenet", num_classes=1000)


@pytest.mark.slow
def test_imagenet_classes_on_real_photos(lite0, capsys):
    predictions = classify.classify([load() for _, load, _ in PHOTOS], "efficientnet_lite0", top_k=5)
    lines = [f"{name:>10}: " + "; ".join(f"{c} {n.split(',')[0]} {p:.3f}" for c, n, p in top5)
             for (name, _, _), top5 in zip(PHOTOS, predictions)]
    top1_hits = sum(top5[0][0] in accepted for (_, _, accepted), top5 in zip(PHOTOS, predictions))
    _report(capsys, "\nefficientnet_lite0 top-5 (id name prob):\n" + "\n".join(lines) +
            f"\ntop-1 in the accepted set: {top1_hits}/{len(PHOTOS)}")
    for (name, _, accepted), top5 in zip(PHOTOS, predictions):
        assert accepted & {c for c, _, _ in top5}, f"{name}: none of {accepted} in the top-5 {top5}"
    assert top1_hits >= len(PHOTOS) - 1
    assert classify.imagenet_class_names()[281].startswith("tabby")


def _reference_outputs(name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(final feature map NHWC, logits) of the efficientnet_lite_pytorch reference on the packaged checkpoint."""
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    weights_path = str(el.packaged_checkpoint(name))
    model = reference.EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=weights_path)
    model.eval()
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return model.extract_features(xt).numpy().transpose(0, 2, 3, 1), model(xt).numpy()


def _parity_inputs(config: backbones.BackboneConfig) -> np.ndarray:
    """Two real photos (resized, preprocessed) and two random inputs at the native size."""
    pre, size = config.preprocessing, config.preprocessing.input_size
    photos = np.stack([classify.resize_center_crop(classify.load_image(f()), size)
                       for f in (skimage.data.chelsea, skimage.data.coffee)]).astype(np.float32)
    photos = (photos - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    noise = np.random.default_rng(0).uniform(-1.0, 1.0, (2, size, size, 3)).astype(np.float32)
    return np.concatenate([photos, noise])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_parity_with_pytorch_reference(name, jaxheads_cache, capsys):
    start = time.perf_counter()
    model = backbones.load(name, "imagenet", num_classes=1000)
    x = _parity_inputs(model.config)
    out = jax.jit(lambda v, x: model.module.apply(v, x, train=False))(model.variables, x)
    ref_features, ref_logits = _reference_outputs(name, x)
    d_features = float(np.abs(np.asarray(out["features"]) - ref_features).max())
    d_logits = float(np.abs(np.asarray(out["logits"]) - ref_logits).max())
    _report(capsys, f"\n{name} parity vs efficientnet_lite_pytorch ({x.shape[0]} inputs at {x.shape[1]}px): "
                    f"max|d features| {d_features:.2e}, max|d logits| {d_logits:.2e} "
                    f"({time.perf_counter() - start:.1f} s)")
    assert out["features"].shape == ref_features.shape
    assert d_features <= 1e-4 and d_logits <= 1e-4
    assert np.array_equal(np.argmax(out["logits"], -1), np.argmax(ref_logits, -1))


def _legacy_pickle(obj_pickle: bytes, keys: list[str] = (), storages: bytes = b"") -> bytes:
    """A legacy torch.save stream around a hand-made object pickle."""
    header = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}]
    return b"".join(pickle.dumps(h, protocol=2) for h in header) + obj_pickle + pickle.dumps(list(keys), 2) + storages


def test_unpickler_refuses_unexpected_global(tmp_path):
    marker = tmp_path / "pwned"
    # PROTO 2, GLOBAL os.system, a str argument, TUPLE1, REDUCE, STOP: what a malicious checkpoint would hold.
    command = f"touch {marker}".encode()
    evil = b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R."
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_pickle(evil))
    with pytest.raises(pickle.UnpicklingError, match=r"global os\.system"):
        torch_pickle.load_state_dict(path)
    assert not marker.exists()


def test_filename_hash_is_checked(tmp_path):
    path = tmp_path / "weights-0123abcd.pth"
    path.write_bytes(_legacy_pickle(pickle.dumps({}, 2)))
    with pytest.raises(ValueError, match="does not match the prefix 0123abcd"):
        torch_pickle.load_state_dict(path)


@pytest.mark.slow
def test_unpickler_rebuilds_views_and_dtypes(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "t": base.t(),  # strided view
        "row": base[2, 1:5],  # offset into a shared storage
        "half": torch.linspace(-1, 1, 5).half(),
        "bf16": torch.linspace(-1, 1, 5).bfloat16(),
        "long": torch.tensor([1, -2, 3]),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(7, dtype=torch.int64),
    }
    buffer = io.BytesIO()
    torch.save(tensors, buffer, _use_new_zipfile_serialization=False)
    path = tmp_path / "views.pth"
    path.write_bytes(buffer.getvalue())
    loaded, _ = torch_pickle.load_state_dict(path)
    for key, tensor in tensors.items():
        expected = tensor.float().numpy() if key == "bf16" else tensor.numpy()
        got = loaded[key].astype(np.float32) if key == "bf16" else loaded[key]
        np.testing.assert_array_equal(got, expected, err_msg=key)
        assert loaded[key].shape == tuple(tensor.shape)


@pytest.mark.slow
def test_zip_format_is_read_too(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.ones(2)}, tmp_path / "new.pth")  # torch's default (zip) format; more: test_timm_files
    loaded, _ = torch_pickle.load_state_dict(tmp_path / "new.pth")
    np.testing.assert_array_equal(loaded["w"], np.ones(2, np.float32))


def test_converter_names_every_problem(lite0):
    state_dict, _ = torch_pickle.load_state_dict(el.packaged_checkpoint("efficientnet_lite0"))
    del state_dict["_blocks.3._bn1.running_var"]
    state_dict["_conv_head.weight"] = state_dict["_conv_head.weight"][:, :-1]
    state_dict["_blocks.99._bn0.weight"] = np.zeros(3, np.float32)
    with pytest.raises(el.ConversionError) as error:
        el.convert(state_dict, lite0.module)
    message = str(error.value)
    assert "missing torch key _blocks.3._bn1.running_var" in message
    assert "unexpected torch key _blocks.99._bn0.weight" in message
    assert "_conv_head.weight: shape (1, 1, 319, 1280)" in message


@pytest.mark.slow
def test_second_load_reads_the_orbax_cache(lite0, jaxheads_cache, monkeypatch):
    cached = jaxheads_cache / "backbones" / f"efficientnet_lite0-{el.VARIANTS['efficientnet_lite0'].sha256[:16]}"
    assert (cached / "meta.json").is_file()

    packaged = el.packaged_checkpoint("efficientnet_lite0")

    def refuse(*args, **kwargs):
        raise AssertionError("the .pth was read although a converted checkpoint is cached")

    monkeypatch.setattr(torch_pickle, "load_state_dict", refuse)
    monkeypatch.setattr(el, "packaged_checkpoint", refuse)
    again = backbones.load("efficientnet_lite0", "imagenet", num_classes=1000)
    assert again.weights_id == lite0.weights_id == el.VARIANTS["efficientnet_lite0"].sha256[:16]
    jax.tree.map(np.testing.assert_array_equal, again.variables, lite0.variables)
    features_only = backbones.load("efficientnet_lite0")
    assert "classifier" not in features_only.variables["params"]
    from_file = backbones.load("efficientnet_lite0", packaged)  # the "file" loader: same bytes, same cache entry
    assert from_file.weights_id == lite0.weights_id


@pytest.mark.slow
def test_random_init_shapes():
    # Shapes only, so abstractly: compiling lite0's random initialisers takes ~20 s on 2 CPU cores.
    config = backbones.get_config("efficientnet_lite0")
    variables = jax.eval_shape(lambda: backbones.load("efficientnet_lite0", weights=None, seed=0).variables)
    assert config.blocks == ("stem", *(f"block{i:02d}" for i in range(16)), "head")
    assert sorted(variables["params"]) == sorted(config.blocks)  # eval_shape sorts dict keys
    assert variables["params"]["block15"]["project"]["conv"]["kernel"].shape == (1, 1, 1152, 320)
    x = np.zeros((2, 224, 224, 3), np.float32)
    out = jax.eval_shape(lambda v, x: config.build().apply(v, x, train=False), variables, x)
    assert out["features"].shape == (2, 7, 7, config.feature_channels) and set(out) == {"features"}
    head = config.build(num_classes=10)
    shapes = jax.eval_shape(lambda: head.init(jax.random.key(0), x, train=False))
    assert shapes["params"]["classifier"]["kernel"].shape == (1280, 10)
    out = jax.eval_shape(lambda v: head.apply(v, x, train=False), shapes)
    assert out["logits"].shape == (2, 10) and out["pre_logits"].shape == (2, 1280)
