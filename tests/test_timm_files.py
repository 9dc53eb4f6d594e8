"""timm sources beyond the parity tests: ``timm:NAME`` and the same file by path share one weights id (so a head
swept on either is accepted by predict), and zip-format ``torch.save`` files (torch's default) read without torch.

The state dict is built from the name map in numpy (random, seeded), so these tests need neither timm nor network.
"""


import jax
import numpy as np
import pytest

from jaxheads import backbones, features
from jaxheads.backbones import timm_convert, torch_pickle
from jaxheads.backbones.base import flat_shapes

NAME, TIMM = "efficientnet_lite0", "timm:tf_efficientnet_lite0"
# The inverse of timm_convert.TRANSFORMS for the layouts Lite uses: Flax shape -> torch shape.
TORCH_SHAPE = {"copy": lambda s: s, "oihw_to_hwio": lambda s: (s[3], s[2], s[0], s[1])}


def timm_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """A random state dict in timm's tf_efficientnet_lite0 layout (no classifier), from the name map."""
    config = backbones.get_config(NAME)
    expected = flat_shapes(jax.eval_shape(lambda x: config.build(num_classes=0).init(jax.random.key(0), x),
                                          jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)))
    rng = np.random.default_rng(seed)
    state = {}
    for key, (collection, path, transform) in timm_convert.name_map(config, classifier=False).items():
        if collection is None:
            state[key] = np.asarray(0, np.int64)  # num_batches_tracked
            continue
        shape = TORCH_SHAPE[transform](expected[(collection, *path)])
        low = 0.5 if key.endswith("running_var") else -0.5
        state[key] = rng.uniform(low, low + 1.0, shape).astype(np.float32)
    return state


@pytest.fixture(scope="module")
def safetensors_file(tmp_path_factory):
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("timm") / "lite0.safetensors"
    save_file(timm_state_dict(), str(path))
    return path


@pytest.fixture
def hub_cache(safetensors_file, tmp_path, monkeypatch, write_hub_cache):
    """The Hugging Face cache holding ``safetensors_file`` as timm's tf_efficientnet_lite0.in1k, offline."""
    hub = pytest.importorskip("huggingface_hub")
    pytest.importorskip("huggingface_hub.constants")
    cached = write_hub_cache(tmp_path, safetensors_file, std=0.5)
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)  # never download in a test
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path))
    return cached


def test_hub_name_and_path_share_the_weights_id(safetensors_file, hub_cache, jaxheads_cache):
    """The sweep's lazy id, the loaded id and the local file's id agree, so predict takes a head swept on timm:NAME."""
    want = backbones.sha256_file(safetensors_file)[:16]
    source = features.backbone_source(NAME, TIMM)
    assert source.weights_id == want == features.backbone_source(NAME, str(safetensors_file)).weights_id
    # predict rebuilds the backbone from the head's recorded weights and refuses it unless the ids are equal
    # (heads.io.load_backbone_of); the recorded id was "other:timm:..." before.
    assert backbones.load(NAME, TIMM).weights_id == source.weights_id


def test_zip_format_pth_reads_like_safetensors(safetensors_file, tmp_path, jaxheads_cache):
    """A torch.save file in torch's default (zip) format reads without torch into the same arrays, strided and
    offset views and dtypes included."""
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    state = {k: torch.from_numpy(v) for k, v in load_file(str(safetensors_file)).items()}
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    extras = {"t": base.t(), "row": base[2, 1:5], "half": torch.linspace(-1, 1, 5).half(),
              "long": torch.tensor([1, -2, 3]), "bool": torch.tensor([True, False])}
    torch.save({**state, **extras}, tmp_path / "extras.pth")
    loaded, _ = torch_pickle.load_state_dict(tmp_path / "extras.pth")
    for key, tensor in extras.items():
        np.testing.assert_array_equal(loaded[key], tensor.numpy(), err_msg=key)
    torch.save(state, tmp_path / "lite0.pth")
    assert (tmp_path / "lite0.pth").read_bytes()[:4] == b"PK\x03\x04"
    read = timm_convert.read_state_dict(tmp_path / "lite0.pth")
    assert set(read) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(read[key], value.numpy(), err_msg=key)


def test_zip_with_foreign_globals_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.ones(2), "f": np.float64}, tmp_path / "odd.pth")
    with pytest.raises(Exception, match="refusing to load global"):
        torch_pickle.load_state_dict(tmp_path / "odd.pth")
