"""The fine-tune recipe of issue 25 on the tiny backbone: the whole network unfrozen, on-device augmentation in the
policy vocabulary of data/augment.py, SGD with momentum, rematerialised blocks, gradient accumulation, class
weights, --resume, and the one-line errors of bad flags."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxheads import backbones, cli, data, finetuning, heads
from jaxheads.cli.parser import finetune_flag_help
from jaxheads.data import augment as views
from jaxheads.finetuning import augment as device_augment
from jaxheads.finetuning.config import class_weights
from jaxheads.finetuning.step import (FinetuneSetup, TrainState, finetune_optimizer, schedule_steps, train_step,
                                      weighted_mean)
from jaxheads.heads import io as heads_io

RECIPE = {"unfreeze": "all", "optimizer": "sgd", "augment": ("dihedral", "affine"), "accumulate": 2, "remat": True,
          "class_weights": "balanced", "batch_size": 4, "epochs": 3, "learning_rate": 3e-2,
          "backbone_learning_rate": 1e-2}


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory, make_colour_folder) -> data.Dataset:
    """Two classes of 12 noisy colour images, split as `jaxheads finetune --dataset ROOT` splits them."""
    root = make_colour_folder(tmp_path_factory.mktemp("recipe") / "colours")
    return data.load_dataset(root, seed=0, task="multiclass")


@pytest.fixture(scope="module")
def parts(tiny_backbone: str) -> tuple:
    """The tiny backbone, a 3-class head without dropout, 8 random images and their labels."""
    backbone = backbones.load(tiny_backbone)
    spec = heads.HeadSpec(num_classes=3, pooling="none", hidden=(8,), dropout=0.0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    return backbone, spec, heads.init_head(0, spec, (16,)), images, np.asarray([0, 1, 2, 0, 1, 2, 0, 0], np.int32)


def _one_step(parts: tuple, weights: np.ndarray | None = None, **settings: object) -> tuple[TrainState, float]:
    """One jitted training step of the whole tiny network from its start (state and loss as NumPy)."""
    backbone, spec, head_vars, images, labels = parts
    config = finetuning.FinetuneConfig(**{"unfreeze": "all", "batch_size": 8, "epochs": 2, **settings})
    setup = FinetuneSetup(backbone.module, backbone.config.preprocessing, spec, backbone.config.blocks, config, 32)
    params = jax.tree.map(np.array, {"backbone": backbone.variables["params"], "head": head_vars["params"]})
    stats = jax.tree.map(np.array, {"backbone": backbone.variables["batch_stats"],
                                    "head": head_vars.get("batch_stats", {})})
    ema = () if config.ema_decay is None else jax.tree.map(np.array, (params, stats))
    state = TrainState(jnp.zeros((), jnp.int32), params, stats, finetune_optimizer(setup, params).init(params), ema)
    weights = np.ones(3, np.float32) if weights is None else weights
    new, loss = train_step(setup)(state, images, labels, np.ones(len(labels), np.float32), weights,
                                  heads.seed_words(0), schedule_steps(config, 1))
    return jax.tree.map(np.asarray, new), float(loss)


def _assert_same(a: object, b: object) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _differs(a: object, b: object) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# ------------------------------------------------------------------------------------------- the step


@pytest.mark.slow
def test_identity_augmentation_leaves_the_step_bit_identical(parts: tuple) -> None:
    plain, loss = _one_step(parts, augment=())
    identity, identity_loss = _one_step(parts, augment=("affine",), affine_jitter=(0.0, 0.0, 0.0))
    assert identity_loss == loss
    _assert_same(identity, plain)
    jittered, _ = _one_step(parts, augment=("affine",))  # the default jitter does move pixels
    assert _differs(jittered.params, plain.params)


def test_on_device_orientations_are_those_of_the_cached_views() -> None:
    images = np.random.default_rng(1).integers(0, 256, (8, 9, 9, 3), dtype=np.uint8)
    turned = np.asarray(device_augment.orient(jnp.asarray(images), jnp.arange(8, dtype=jnp.int32)))
    for element in range(8):  # data/augment.py numbers the dihedral group this way: quarter turns, then a flip
        expected = np.rot90(images[element], element >> 1)
        np.testing.assert_array_equal(turned[element], expected[:, ::-1] if element & 1 else expected)
    # every name of the shared vocabulary runs on device: the geometric ones resampled, the others exact
    assert {*device_augment.GEOMETRIC, "flip", "dihedral"} == set(views.AUGMENTATIONS)


@pytest.mark.slow
def test_class_weights_of_all_ones_equal_the_unweighted_loss(parts: tuple) -> None:
    losses = jnp.asarray(np.random.default_rng(2).uniform(0, 3, 7), jnp.float32)
    labels, mask = jnp.asarray([0, 1, 2, 0, 1, 2, 2]), jnp.asarray([1, 1, 1, 1, 1, 0, 0], jnp.float32)
    unweighted = jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    ones = jnp.ones(3, jnp.float32)[labels] * mask
    assert float(weighted_mean(losses, ones, jnp.sum(ones))) == float(unweighted)
    plain, loss = _one_step(parts, class_weights="none")
    ones, ones_loss = _one_step(parts, weights=np.ones(3, np.float32), class_weights="balanced")
    assert ones_loss == loss
    _assert_same(ones, plain)
    assert class_weights([0, 1, 0, 1], 2, "balanced") == [1.0, 1.0]  # a balanced train split weighs all alike
    assert class_weights([0, 0, 0, 1], 2, "balanced") == pytest.approx([4 / 6, 2.0])
    assert class_weights([0, 0, 0, 1], 3, "balanced")[2] == 1.0 and class_weights([0, 1], 2, "none") == [1.0, 1.0]


@pytest.mark.slow
def test_remat_and_accumulation_compute_the_same_update(parts: tuple) -> None:
    # no augmentation: a micro-batch draws its own flips
    plain, loss = _one_step(parts, ema_decay=None, augment=())
    remat, remat_loss = _one_step(parts, ema_decay=None, augment=(), remat=True)
    accumulated, accumulated_loss = _one_step(parts, ema_decay=None, augment=(), accumulate=2, batch_size=4)
    for other, other_loss in ((remat, remat_loss), (accumulated, accumulated_loss)):
        assert other_loss == pytest.approx(loss, rel=1e-6)
        for x, y in zip(jax.tree.leaves(other.params), jax.tree.leaves(plain.params), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    sgd, _ = _one_step(parts, ema_decay=None, augment=(), optimizer="sgd", momentum=0.9)
    assert int(sgd.step) == 1 and _differs(sgd.params, plain.params)


# ------------------------------------------------------------------------------------------- whole runs


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["shuffle", "balanced"])
def test_zero_learning_rate_returns_the_start_exactly(colours: data.Dataset, tmp_path: Path, save_tiny_head,
                                                      tiny_backbone: str, sampling: str) -> None:
    head = save_tiny_head(tmp_path / "head", colours.classes)
    config = finetuning.FinetuneConfig(**{**RECIPE, "epochs": 1, "learning_rate": 0.0, "backbone_learning_rate": 0.0,
                                          "weight_decay": 1e-2, "sampling": sampling})
    run = finetuning.finetune(head, colours, config, out_dir=tmp_path / "ft")
    assert run.trainable_blocks == backbones.get_config(tiny_backbone).blocks  # "all": the whole network
    assert run.weight_change and all(v == 0.0 for v in run.weight_change.values())
    assert all(h["val"] == run.before for h in run.history[1:]) and not run.improved
    start = {"backbone": backbones.load(tiny_backbone).variables, "head": heads_io.load_head(head)[1]}
    _assert_same(finetuning.load_model(run.model_dir).variables, start)


@pytest.mark.slow
def test_kill_and_resume_give_the_weights_of_an_uninterrupted_run(colours: data.Dataset, tmp_path: Path,
                                                                  save_tiny_head, capsys) -> None:
    head = save_tiny_head(tmp_path / "head", colours.classes)
    config = finetuning.FinetuneConfig(**RECIPE)
    reference = finetuning.finetune(head, colours, config, out_dir=tmp_path / "ref")
    assert all(reference.weight_change[f"params/{b}"] > 0 for b in reference.trainable_blocks)

    class Kill(Exception):
        pass

    def kill_after_epoch_2(event: dict) -> None:
        if event["epoch"] == 2:
            raise Kill

    out = tmp_path / "run"
    with pytest.raises(Kill):  # epoch 2 trained, its checkpoint not yet written: the last one is epoch 1's
        finetuning.finetune(head, colours, config, out_dir=out, progress=kill_after_epoch_2)
    flags = ["finetune", str(head), "--dataset", str(colours.root), "--out", str(out), "--unfreeze", "all",
             "--optimizer", "sgd", "--augment", "affine,dihedral", "--accumulate", "2", "--remat",
             "--class-weights", "balanced", "--batch-size", "4", "--epochs", "3", "--lr", "0.03",
             "--backbone-lr", "0.01"]
    assert cli.main(flags) == 2  # without --resume an unfinished run is never silently continued or replaced
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume" in err and "epoch 1" in err
    assert cli.main(flags + ["--resume"]) == 0
    saved = json.loads((out / "finetune.json").read_text())
    resumed = finetuning.FinetuneResult.from_dict({k: v for k, v in saved.items() if k != "run"})
    assert resumed.resumed_from_epoch == 1
    assert resumed.history == reference.history and resumed.weight_change == reference.weight_change
    _assert_same(finetuning.load_model(resumed.model_dir).variables,
                 finetuning.load_model(reference.model_dir).variables)


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("flags, expected", [
    (["--unfreeze", "9"], ["--unfreeze 9", "depth of 4"]),
    (["--augment", "dihedral,bogus"], ["--augment", "'bogus'", ", ".join(views.AUGMENTATIONS)]),
    (["--epochs", "-1"], ["--epochs -1: expected an integer >= 0"]),
    (["--optimizer", "adam"], ["--optimizer adam: expected one of adamw, sgd"]),
    (["--class-weights", "inverse"], ["--class-weights inverse: expected one of none, balanced"]),
    (["--accumulate", "0"], ["--accumulate 0: expected an integer >= 1"]),
    (["--metric", "f1"], ["--metric f1: expected one of accuracy, balanced_accuracy, macro_f1"]),
    (["--sampling", "random"], ["--sampling random: expected one of shuffle, balanced"]),
])
def test_bad_flags_are_one_line_naming_the_flag(flags: list[str], expected: list[str], colours: data.Dataset,
                                                tmp_path: Path, save_tiny_head, capsys) -> None:
    head = save_tiny_head(tmp_path / "head", colours.classes)
    code = cli.main(["finetune", str(head), "--dataset", str(colours.root), "--out", str(tmp_path / "ft"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("jaxheads: error: ") and err.count("\n") == 1, err
    assert all(text in err for text in expected), err
    assert not (tmp_path / "ft").exists()


def test_balanced_sampling_draws_every_class_equally_often_and_shuffle_keeps_the_old_order() -> None:
    labels = np.repeat([0, 1, 2], [180, 15, 5])
    drawn = np.concatenate([labels[finetuning.epoch_order(labels, 0, epoch, "balanced")] for epoch in range(1, 21)])
    assert len(drawn) == 20 * len(labels)
    assert np.allclose(np.bincount(drawn) / len(drawn), 1 / 3, atol=0.02)
    order = finetuning.epoch_order(labels, 3, 2, "shuffle")
    assert np.array_equal(order, np.random.default_rng([3, 2]).permutation(len(labels)))


def test_new_flags_map_to_config_fields() -> None:
    args = cli.build_parser().parse_args(["finetune", "head", "--unfreeze", "all", "--augment", "none",
                                          "--optimizer", "sgd", "--momentum", "0.8", "--accumulate", "4",
                                          "--remat", "--class-weights", "balanced", "--metric", "macro_f1",
                                          "--sampling", "balanced"])
    assert cli.finetune_config_from_args(args) == finetuning.FinetuneConfig(
        unfreeze="all", augment=(), optimizer="sgd", momentum=0.8, accumulate=4, remat=True,
        class_weights="balanced", metric="macro_f1", sampling="balanced")
    none = cli.build_parser().parse_args(["finetune", "head", "--metric", "none"])
    assert cli.finetune_config_from_args(none).metric is None
    defaults = {field.name: field.default for field in dataclasses.fields(finetuning.FinetuneConfig)}
    for flag in cli.FINETUNE_FLAGS:  # every help states the config's default, in the flag's own syntax
        default = defaults[flag.field]
        text = ("off" if flag.parse is bool else ",".join(default) or "none" if isinstance(default, tuple)
                else {"image_size": "the size the head was swept at", "metric": "the task's own"}[flag.field]
                if default is None else default)
        assert finetune_flag_help(flag).endswith(f"(default{':' if flag.parse is bool else ''} {text})"), flag.name
        if flag.parse is not bool and default is not None:
            assert flag.parse(str(text)) == default, flag.name  # the default's text parses back to it
