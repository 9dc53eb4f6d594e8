"""Taps (issue 24, part 1): every zoo backbone names its intermediate outputs, a truncated backbone is the same tap
of the full one, the feature pass caches every tap's mean and standard deviation beside today's features from the
same forward, and ``--taps last`` keeps today's cache key and bytes."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxheads import backbones, data, features
from jaxheads.cli import main
from jaxheads.features.taps import pool_tap

SIZE = 64  # a small input: the zoo's real modules, random init, in seconds
ZOO = ["efficientnet_lite0", "efficientnet_b0", "mobilenet_v1_025", "mobilenet_v2_035", "resnet50", "vgg16"]


@pytest.mark.parametrize("name", ZOO)
def test_every_family_returns_the_taps_its_config_names_the_last_being_the_features(name: str) -> None:
    config = backbones.get_config(name)
    module = config.build(num_classes=0)
    image = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)
    out, _ = jax.eval_shape(lambda k, x: module.init_with_output(k, x, train=False, taps=True), jax.random.key(0),
                            image)
    assert sorted(out["taps"]) == sorted(config.taps) and len(set(config.taps)) == len(config.taps) > 1
    assert out["taps"][config.taps[-1]].shape == out["features"].shape


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2_035"])
def test_a_truncated_backbone_gives_the_same_tap_as_the_full_one(name: str) -> None:
    config = backbones.get_config(name)
    module = config.build(num_classes=0)
    x = jax.random.normal(jax.random.key(1), (2, SIZE, SIZE, 3))
    variables = module.init(jax.random.key(0), x, train=False)
    full = jax.jit(lambda v, x: module.apply(v, x, taps=True))(variables, x)
    cut_at = config.taps[len(config.taps) // 2]
    cut = jax.jit(lambda v, x: module.apply(v, x, until=cut_at))(variables, x)
    assert set(cut) == {"features"}  # no logits, no later layer
    np.testing.assert_array_equal(np.asarray(cut["features"]), np.asarray(full["taps"][cut_at]))
    np.testing.assert_array_equal(np.asarray(full["taps"][config.taps[-1]]), np.asarray(full["features"]))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lite_images(tmp_path_factory: pytest.TempPathFactory, make_folder) -> data.Dataset:
    root = make_folder(tmp_path_factory.mktemp("taps") / "imgs", per_class=5)
    return data.load_dataset(root, seed=0, val_fraction=0.2, test_fraction=0.2)


@pytest.mark.slow
def test_last_is_todays_cache_and_all_adds_only_a_taps_file_from_the_same_pass(
        lite_images: data.Dataset, tmp_path: Path) -> None:
    source = features.backbone_source("efficientnet_lite0", None, input_size=SIZE)
    plain_options = features.ExtractOptions(cache_dir=tmp_path / "plain", batch_size=4)
    plain = features.extract_all(source, lite_images, plain_options)
    (entry,) = (tmp_path / "plain").iterdir()
    before = _files(entry)
    last = features.extract_all(source, lite_images, plain_options.replace(cache_dir=tmp_path / "last", taps="last"))
    assert [p.name for p in (tmp_path / "last").iterdir()] == [entry.name]  # the same key
    assert _files(tmp_path / "last" / entry.name) == before  # and the same bytes
    assert all(split.taps is None for split in last.values())

    tapped = features.extract_all(source, lite_images, plain_options.replace(taps="all"))
    after = _files(entry)
    assert {k: v for k, v in after.items() if k != "meta.json" and not k.endswith(".taps.npz")} == \
        {k: v for k, v in before.items() if k != "meta.json"}  # the plain files are never rewritten
    assert any(k.endswith(".taps.npz") for k in after)
    fresh = features.extract_all(source, lite_images, plain_options.replace(cache_dir=tmp_path / "fresh", taps="all"))
    channels = plain["train"].pooled.shape[1]
    for name, split in plain.items():
        assert list(tapped[name].taps) == list(source.taps)
        np.testing.assert_array_equal(tapped[name].pooled, split.pooled)
        np.testing.assert_array_equal(fresh[name].pooled, split.pooled)  # one tapped pass: the `last` bits
        np.testing.assert_array_equal(fresh[name].taps["head"][:, :channels], split.pooled)
        for tap in source.taps:
            np.testing.assert_array_equal(fresh[name].taps[tap], tapped[name].taps[tap])


def test_a_tap_vector_is_the_mean_then_the_standard_deviation_of_its_map() -> None:
    maps = jax.random.normal(jax.random.key(2), (3, 4, 5, 6)) * 3.0 + 1.0
    pooled = np.asarray(pool_tap(maps))
    want = np.concatenate([np.asarray(maps).mean((1, 2)), np.asarray(maps).std((1, 2))], -1)
    np.testing.assert_allclose(pooled, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_named_taps_and_last_among_them(lite_images: data.Dataset, tmp_path: Path) -> None:
    source = features.backbone_source("efficientnet_lite0", None, input_size=SIZE)
    options = features.ExtractOptions(cache_dir=tmp_path, batch_size=4, taps="block05, last")
    out = features.extract_all(source, lite_images, options, splits=["train"])["train"]
    assert list(out.taps) == ["block05", "head"]
    assert out.taps["head"].shape == (len(out), 2 * out.pooled.shape[1]) and out.taps["head"].dtype == np.float16


def test_an_unknown_tap_is_one_line_listing_the_backbones_taps(
        lite_images: data.Dataset, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["sweep", "--dataset", str(lite_images.root), "--backbone", "efficientnet_lite0", "--weights",
                     "none", "--taps", "bogus", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'bogus'" in err and "stem, block00" in err and "head" in err
    assert not (tmp_path / "c").exists()  # nothing ran


def test_backbones_list_shows_the_taps(capsys: pytest.CaptureFixture) -> None:
    assert main(["backbones", "list", "vgg16", "--taps"]) == 0
    out = capsys.readouterr().out
    assert "5: block1..block5" in out and "vgg16 taps: block1, block2, block3, block4, block5" in out
