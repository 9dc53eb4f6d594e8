"""`jaxheads predict` and the shared head loader rebuild the backbone the way the head's meta records it (a head
swept with ``--weights none --seed 3`` needs the seed-3 random init), and rank labels with the shared top-k."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxheads import backbones, cli, data, heads, predict
from jaxheads.heads import io as heads_io

CLASSES = ("blue", "red")


def _random_init_head(path: Path, seed: int, backbone: str) -> Path:
    """A head with the provenance `jaxheads sweep --weights none --seed SEED` writes for the tiny backbone."""
    spec = heads.HeadSpec(num_classes=len(CLASSES), pooling="none", hidden=())
    variables = heads.init_head(0, spec, (16,))
    extra = {"backbone": backbone, "weights": "none", "weights_id": f"random-seed{seed}"}
    return heads_io.save_head(path, spec, variables, (16,), label_names=CLASSES, extra=extra)


def _image(path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (36, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.slow
def test_predict_rebuilds_a_seeded_random_backbone(
        tmp_path: Path, capsys: pytest.CaptureFixture, tiny_backbone) -> None:
    head = _random_init_head(tmp_path / "head", seed=3, backbone=tiny_backbone)
    image = _image(tmp_path / "x.png")
    code = cli.main(["predict", str(head), str(image), "--top", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    # The probabilities are those of the seed-3 backbone's features under the head.
    backbone = backbones.load(tiny_backbone, None, seed=3)
    pixels = data.resize_center_crop(data.load_image(str(image)), 32)[None]
    fmap = backbone.module.apply(backbone.variables, backbone.config.preprocessing(pixels), train=False)["features"]
    pooled = fmap.mean(axis=(1, 2)).astype(jnp.float16).astype(jnp.float32)
    spec, variables, apply_fn = heads_io.load_head(head)
    probs = np.asarray(jax.nn.softmax(apply_fn(variables, pooled)))[0]
    shown = dict(part.rsplit(" ", 1) for part in out.strip().split(": ", 1)[1].split(", "))
    assert {name: float(p) for name, p in shown.items()} == pytest.approx(
        {name: float(p) for name, p in zip(CLASSES, probs)}, abs=1e-3)


def test_load_swept_head_gives_the_recorded_backbone_or_refuses(tmp_path: Path, tiny_backbone) -> None:
    head, backbone = heads_io.load_swept_head(_random_init_head(tmp_path / "seeded", seed=3, backbone=tiny_backbone))
    assert backbone.weights_id == "random-seed3" and head.label_names == list(CLASSES)
    other = heads_io.save_head(tmp_path / "other", head.spec, head.variables, (16,), extra={
        "backbone": tiny_backbone, "weights": "default", "weights_id": "tiny-v2"})
    assert heads_io.read_swept_head(other).label_names == ["0", "1"]
    with pytest.raises(ValueError, match=f"trained on {tiny_backbone} weights tiny-v2, but these weights are "
                                         "tiny-v1"):
        heads_io.load_swept_head(other)


def test_top_k_ranks_best_first_and_keeps_class_order_on_ties() -> None:
    probs = np.array([[0.1, 0.4, 0.4, 0.1], [0.7, 0.1, 0.1, 0.1]])
    np.testing.assert_array_equal(predict.top_k(probs, 3), [[1, 2, 0], [0, 1, 2]])
    assert predict.top_labels(probs, 2, "abcd") == [[("b", 0.4), ("c", 0.4)], [("a", 0.7), ("b", 0.1)]]
