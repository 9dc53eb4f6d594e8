"""timm weights: parity with timm's own PyTorch model for one model of each family that maps (random weights saved
to safetensors, 64 px), every variant's name map against timm's key and shape layout, and the one-line refusals.

Parity maxima are printed even without ``-s``.
"""


import jax
import numpy as np
import pytest

from jaxheads import backbones
from jaxheads.backbones import timm_convert

SIZE = 64  # small input: the suite stays small, and every stage still strides
TOLERANCE = 1e-4
# One model of each family that maps: (zoo backbone, timm model).
FAMILIES = [("efficientnet_b0", "tf_efficientnet_b0"), ("efficientnet_lite0", "tf_efficientnet_lite0"),
            ("vgg16", "vgg16")]


@pytest.fixture(scope="module")
def timm():
    """timm, or a skip. PyPI's torchvision 0.28 (a CUDA build) cannot load its C++ ops beside the CPU torch wheel,
    and its import stops at registering fake kernels for two of them: declaring their schemas first lets its
    Python parts, all timm needs here, import."""
    torch = pytest.importorskip("torch")
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return pytest.importorskip("timm")


def _randomise(model, seed: int = 0) -> None:
    """Random batch-norm statistics, scales and biases (timm's init leaves them 0 and 1, which would hide a wrong
    epsilon or a swapped mean and variance)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
        for name, param in model.named_parameters():
            if param.ndim == 1:
                centre = 1.0 if name.endswith("weight") else 0.0  # batch-norm scales around 1
                param.copy_(centre + 0.1 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module")
def reference(timm, tmp_path_factory):
    """``reference(timm_name, features_only=False) -> (model, path)``: a randomly initialised timm model in eval
    mode and its state dict in a safetensors file (without VGG's 120 M-parameter top when ``features_only``)."""
    import torch
    from safetensors.torch import save_file

    made = {}

    def make(name: str, features_only: bool = False):
        if (name, features_only) not in made:
            torch.manual_seed(0)  # timm draws its conv init from torch's global generator
            model = timm.create_model(name, pretrained=False).eval()
            _randomise(model)
            state = {k: v.contiguous() for k, v in model.state_dict().items()
                     if not features_only or k.startswith("features.")}
            path = tmp_path_factory.mktemp("timm") / f"{name}.safetensors"
            save_file(state, str(path))
            made[name, features_only] = model, path
        return made[name, features_only]

    return make


def _pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)


def _timm_input(model, pixels: np.ndarray):
    """timm's own preprocessing (its pretrained_cfg mean/std) of RGB pixels in [0, 255], as NCHW."""
    import torch

    cfg = model.pretrained_cfg
    x = (pixels / 255.0 - np.asarray(cfg["mean"], np.float32)) / np.asarray(cfg["std"], np.float32)
    return torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("zoo,name", FAMILIES)
def test_features_match_timm(reference, capsys, zoo, name):
    import torch

    model, path = reference(name, features_only=zoo.startswith("vgg"))
    backbone = backbones.load(zoo, path)
    pixels = _pixels()
    ours = np.asarray(backbone.apply(pixels)["features"])
    with torch.no_grad():
        theirs = model.forward_features(_timm_input(model, pixels)).permute(0, 2, 3, 1).numpy()
    assert ours.shape == theirs.shape
    gap, pooled_gap = np.abs(ours - theirs).max(), np.abs(ours.mean((1, 2)) - theirs.mean((1, 2))).max()
    with capsys.disabled():
        print(f"\n{zoo} <- timm {name} at {SIZE} px: max |features diff| {gap:.2e}, pooled {pooled_gap:.2e}, "
              f"max |feature| {np.abs(theirs).max():.2f}")
    assert gap <= TOLERANCE and pooled_gap <= TOLERANCE
    assert backbone.weights_id == backbones.sha256_file(path)[:16]  # what the feature cache keys a file by


@pytest.mark.slow
def test_classifier_logits_match_timm(reference):
    import torch

    model, path = reference("tf_efficientnet_b0")
    backbone = backbones.load("efficientnet_b0", path, num_classes=1000)
    pixels = _pixels(1)
    with torch.no_grad():
        theirs = model(_timm_input(model, pixels)).numpy()
    np.testing.assert_allclose(np.asarray(backbone.apply(pixels)["logits"]), theirs, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_legacy_pth_loads_like_safetensors(reference, tmp_path):
    import torch
    from safetensors.numpy import load_file

    _, path = reference("tf_efficientnet_b0")
    pth = tmp_path / "b0.pth"
    state = {k: torch.from_numpy(v) for k, v in load_file(str(path)).items()}
    torch.save(state, pth, _use_new_zipfile_serialization=False)  # torch_pickle reads the legacy format
    a, b = backbones.load("efficientnet_b0", path), backbones.load("efficientnet_b0", pth)
    jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)
    assert not timm_convert.claims(backbones.get_config("efficientnet_lite0"), pth)  # Lite reads its own .pth


@pytest.mark.slow
def test_every_variant_maps_onto_timm_layout(timm):
    """Keys and shapes of every mapped timm model (built on torch's meta device: no memory) fit the zoo module,
    classifier included, and the preprocessing data equals timm's default pretrained_cfg."""
    import torch

    for zoo, model_spec in timm_convert.TIMM_MODELS.items():
        with torch.device("meta"):
            model = timm.create_model(model_spec.timm, pretrained=False)
        state = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in model.state_dict().items()}
        variables = timm_convert.convert(backbones.get_config(zoo), state, model_spec.timm)
        assert "classifier" in variables["params"], zoo
        cfg = timm.get_pretrained_cfg(model_spec.timm)
        assert cfg.hf_hub_id == f"timm/{model_spec.timm}.{model_spec.tag}", zoo
        assert np.allclose(cfg.mean, model_spec.mean) and np.allclose(cfg.std, model_spec.std), zoo


def test_vgg_fc1_conv_becomes_the_flatten_dense():
    """timm's 7x7 fc1 conv on an NCHW map equals the zoo's Dense on the NHWC map flattened (h, w, c)."""
    rng = np.random.default_rng(0)
    weight, fmap = rng.normal(size=(5, 3, 7, 7)), rng.normal(size=(3, 7, 7))
    as_conv = np.einsum("ochw,chw->o", weight, fmap)
    as_dense = fmap.transpose(1, 2, 0).reshape(-1) @ timm_convert.TRANSFORMS["conv_to_dense"](weight)
    np.testing.assert_allclose(as_dense, as_conv, rtol=1e-12)


@pytest.mark.slow
def test_bad_state_dict_is_refused_naming_keys(reference, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, path = reference("tf_efficientnet_lite0")
    state = dict(load_file(str(path)))
    del state["blocks.1.0.bn2.running_var"]
    state["conv_head.weight"] = state["conv_head.weight"][:-1]
    state["blocks.9.0.conv_dw.weight"] = np.zeros((3, 1, 3, 3), np.float32)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(timm_convert.TimmWeightsError) as error:
        backbones.load("efficientnet_lite0", bad)
    message = str(error.value)
    assert "\n" not in message
    for part in ("efficientnet_lite0", "1 missing (blocks.1.0.bn2.running_var)",
                 "1 unexpected (blocks.9.0.conv_dw.weight)", "conv_head.weight (1279, 320, 1, 1)"):
        assert part in message, message


@pytest.mark.parametrize("zoo,why", [("resnet50", "v1.5"), ("mobilenet_v2", "mobilenetv2_100"),
                                     ("mobilenet_v1", "eps 1e-5")])
def test_families_that_differ_are_refused_in_one_line(tmp_path, zoo, why):
    from safetensors.numpy import save_file

    path = tmp_path / "any.safetensors"
    save_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, str(path))
    for weights in (path, "timm:resnet50"):
        with pytest.raises(timm_convert.TimmWeightsError, match=why) as error:
            backbones.load(zoo, weights)
        assert "\n" not in str(error.value)


def test_timm_name_must_match_the_backbone():
    with pytest.raises(timm_convert.TimmWeightsError, match="takes timm's tf_efficientnet_b0"):
        backbones.load("efficientnet_b0", "timm:efficientnet_b0")  # timm's PyTorch-padded EfficientNet


def test_timm_name_offline_fails_in_one_line_naming_the_repo(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    pytest.importorskip("huggingface_hub.constants")  # a lazy submodule: hub.constants exists once imported
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)  # never download in a test, network or not
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(timm_convert.TimmWeightsError) as error:
        backbones.load("efficientnet_lite0", "timm:tf_efficientnet_lite0")
    message = str(error.value)
    assert "\n" not in message and "https://huggingface.co/timm/tf_efficientnet_lite0.in1k" in message, message


@pytest.mark.slow
def test_timm_name_reads_the_hub_cache(reference, tmp_path, monkeypatch, write_hub_cache):
    """With the repo's files in the Hugging Face cache, timm:NAME loads offline, with the cached config's mean/std."""
    hub = pytest.importorskip("huggingface_hub")
    pytest.importorskip("huggingface_hub.constants")  # a lazy submodule: hub.constants exists once imported
    _, path = reference("tf_efficientnet_lite0")
    write_hub_cache(tmp_path, path, std=0.25)
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path))
    backbone = backbones.load("efficientnet_lite0", "timm:tf_efficientnet_lite0")
    assert backbone.config.preprocessing.std == (63.75,) * 3
    assert backbone.weights_id == backbones.sha256_file(path)[:16]
