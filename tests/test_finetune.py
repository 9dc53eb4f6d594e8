"""Fine-tuning the swept head with the top of its backbone: real EfficientNet-Lite0 on real elpv cells, then a tiny
registered backbone for the cheap properties (frozen/unfrozen weights, BN modes, resume, errors, the CLI)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxheads import backbones, cli, data, features, finetuning, heads
from jaxheads.heads import io as heads_io
from jaxheads.sweep import SweepSpec, run_sweep


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory, make_colour_folder) -> data.Dataset:
    root = make_colour_folder(tmp_path_factory.mktemp("finetune") / "colours")
    return data.load_dataset(root, val_fraction=0.25, test_fraction=0.0)


@pytest.fixture(scope="module")
def tiny_run(save_tiny_head):
    """``tiny_run(colours, tmp_path, **config)``: a short fine-tune of a fresh tiny head (saved in tmp_path/head)."""

    def run(colours: data.Dataset, tmp_path: Path, **kwargs: object) -> finetuning.FinetuneResult:
        head = save_tiny_head(tmp_path / "head", colours.classes)
        settings = {"epochs": 2, "batch_size": 6, "patience": None, **kwargs}
        return finetuning.finetune(head, colours, finetuning.FinetuneConfig(**settings), out_dir=tmp_path / "ft")

    return run


# ------------------------------------------------------------------------------------- real backbone, real data


def _elpv_binary(n_train: int, n_val: int) -> data.Dataset:
    """Real elpv cells, functional (p=0) vs defective (p=1): the first ``n`` of each class per split."""
    full = data.load_dataset("elpv")
    splits = {}
    for name, n in (("train", n_train), ("val", n_val)):
        split = full.split(name)
        picks = [np.flatnonzero(split.labels == level)[: n // 2] for level in (0, 3)]
        idx = np.concatenate(picks)
        sub = split.subset(idx)
        labels = np.repeat(np.arange(2, dtype=np.int32), [len(p) for p in picks])
        splits[name] = data.Split(sub.sources, labels)
    return data.Dataset("elpv-binary-small", ("functional", "defective"), "multiclass", splits, root=full.root)


@pytest.mark.slow
def test_finetune_top_block_of_lite0_on_real_cells(tmp_path: Path, jaxheads_cache: Path) -> None:
    """Sweep a head on Lite0 features (96 px, 32 real cells), fine-tune the top block with it, load the model."""
    size = 96
    ds = _elpv_binary(32, 16)
    source = features.backbone_source("efficientnet_lite0")
    source = dataclasses.replace(source, preprocessing=dataclasses.replace(source.preprocessing, input_size=size))
    splits = features.extract_all(source, ds,
                                  features.ExtractOptions(cache_dir=tmp_path / "features", need_maps=False, batch_size=16))
    sweep = SweepSpec(pooling=("none",), depth=(0,), learning_rate=(3e-3,), batch_size=(16,), epochs=40,
                      patience=None, ridge_l2=(), map_batch="vmap")
    swept = run_sweep(sweep, splits, num_classes=2, label_names=list(ds.classes))
    spec, head_vars = swept.head(0)
    head_dir = heads_io.save_head(tmp_path / "head", spec, head_vars, (1280,), label_names=ds.classes, extra={
        "backbone": "efficientnet_lite0", "weights": "default", "weights_id": source.weights_id})

    config = finetuning.FinetuneConfig(unfreeze=1, image_size=size, epochs=2, batch_size=16, patience=None,
                                       learning_rate=1e-3, backbone_learning_rate=1e-3)
    result = finetuning.finetune(head_dir, ds, config, out_dir=tmp_path / "ft")
    print(f"\nLite0 top block ('head') fine-tune, val accuracy {result.before['accuracy']:.3f} -> "
          f"{result.best['accuracy']:.3f} (best epoch {result.best_epoch}; val loss {result.before['loss']:.4f} "
          f"-> {[round(h['val']['loss'], 4) for h in result.history[1:]]}); improved={result.improved}; "
          f"max |change|: {{{', '.join(f'{k}: {v:.2g}' for k, v in result.weight_change.items() if v)}}}, "
          f"all else 0")
    assert [h["epoch"] for h in result.history] == [0, 1, 2] and result.epochs_run == 2
    assert result.trainable_blocks == ("head",)
    # The swept head reaches the same val accuracy on images as it did on cached (float16) features.
    assert result.before["accuracy"] == pytest.approx(swept.members[0]["val"]["accuracy"], abs=1 / 16 + 1e-6)
    change = result.weight_change
    assert change["params/head"] > 0 and change["head"] > 0
    assert all(v == 0.0 for k, v in change.items() if k.startswith("batch_stats/"))
    assert all(change[f"params/{b}"] == 0.0 for b in backbones.get_config("efficientnet_lite0").blocks[:-1])

    model = finetuning.load_model(result.model_dir)
    pretrained = backbones.load("efficientnet_lite0")
    saved, original = model.variables["backbone"]["params"], pretrained.variables["params"]
    for block in backbones.get_config("efficientnet_lite0").blocks[:-1]:
        for a, b in zip(jax.tree.leaves(saved[block]), jax.tree.leaves(original[block])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    top_changed = any(not np.array_equal(np.asarray(a), np.asarray(b))
                      for a, b in zip(jax.tree.leaves(saved["head"]), jax.tree.leaves(original["head"])))
    assert top_changed == result.improved  # the saved model is the best epoch's (epoch 0 = unchanged)
    # load_model reproduces the saved model: its logits give the val loss and accuracy the fine-tune measured.
    val = ds.split("val")
    images = np.stack([data.resize_center_crop(data.load_image(p), size) for p in val.sources])
    logits = model.logits(images)
    loss = float(heads.example_losses(jnp.asarray(logits), jnp.asarray(val.labels), spec).mean())
    assert loss == pytest.approx(result.best["loss"], rel=1e-4, abs=1e-5)
    assert float(np.mean(logits.argmax(-1) == val.labels)) == pytest.approx(result.best["accuracy"])
    np.testing.assert_allclose(model.predict(images).sum(-1), 1.0, rtol=1e-5)


# ------------------------------------------------------------------------------------------- tiny backbone


@pytest.mark.slow
def test_only_the_unfrozen_blocks_and_the_head_change(colours: data.Dataset, tmp_path: Path, tiny_run,
                                                     tiny_backbone: str) -> None:
    result = tiny_run(colours, tmp_path, unfreeze=2)
    change = result.weight_change
    assert result.trainable_blocks == ("block1", "head")
    assert change["params/block1"] > 0 and change["params/head"] > 0 and change["head"] > 0
    assert change["params/stem"] == 0.0 and change["params/block0"] == 0.0
    assert all(change[f"batch_stats/{b}"] == 0.0
               for b in backbones.get_config(tiny_backbone).blocks)  # freeze_bn=True by default
    assert len(result.history) == 3 and all(h["train_loss"] is not None for h in result.history[1:])
    on_disk = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert on_disk["best_epoch"] == result.best_epoch and not (tmp_path / "ft" / "finetune_state").exists()


@pytest.mark.slow
def test_trainable_bn_updates_statistics_and_unfreeze_zero_trains_the_head_alone(
        colours: data.Dataset, tmp_path: Path, tiny_run, tiny_backbone: str) -> None:
    trained_bn = tiny_run(colours, tmp_path / "bn", unfreeze=2, freeze_bn=False, epochs=1)
    assert all(trained_bn.weight_change[f"batch_stats/{b}"] > 0 for b in backbones.get_config(tiny_backbone).blocks)
    assert trained_bn.weight_change["params/block0"] == 0.0 and trained_bn.weight_change["params/head"] > 0
    head_only = tiny_run(colours, tmp_path / "h", unfreeze=0, epochs=1)
    assert head_only.trainable_blocks == ()
    assert head_only.weight_change["head"] > 0
    assert all(v == 0.0 for k, v in head_only.weight_change.items() if k != "head")


@pytest.mark.slow
def test_interrupted_finetune_resumes_to_the_same_model(colours: data.Dataset, tmp_path: Path, tiny_run,
                                                        save_tiny_head) -> None:
    reference = tiny_run(colours, tmp_path / "ref", unfreeze=2, epochs=3)

    class Stop(Exception):
        pass

    def stop_after_epoch_2(event: dict) -> None:
        if event["epoch"] == 2:
            raise Stop

    head = save_tiny_head(tmp_path / "head", colours.classes)
    config = finetuning.FinetuneConfig(unfreeze=2, epochs=3, batch_size=6, patience=None)
    out = tmp_path / "run"
    with pytest.raises(Stop):  # epoch 2 is trained but its checkpoint not yet written: resume from epoch 1
        finetuning.finetune(head, colours, config, out_dir=out, progress=stop_after_epoch_2)
    assert [p.name for p in (tmp_path / "run" / "finetune_state").iterdir()] == ["epoch-0001"]
    with pytest.raises(ValueError, match="other config"):  # a checkpoint of other settings is never mixed in
        finetuning.finetune(head, colours, dataclasses.replace(config, backbone_learning_rate=0.5), out_dir=out)
    resumed = finetuning.finetune(head, colours, config, out_dir=out)
    assert resumed.resumed_from_epoch == 1
    assert resumed.history == reference.history and resumed.best_epoch == reference.best_epoch
    a, b = finetuning.load_model(reference.model_dir), finetuning.load_model(resumed.model_dir)
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    again = finetuning.finetune(head, colours, config, out_dir=out)  # finished: returns the saved result, no training
    assert again.history == resumed.history


def test_load_model_predicts_files_and_matches_logits(colours: data.Dataset, tmp_path: Path, tiny_run) -> None:
    result = tiny_run(colours, tmp_path, unfreeze=2, epochs=1)
    model = finetuning.load_model(result.model_dir)
    assert model.label_names == colours.classes and model.image_size == 32
    paths = list(colours.split("val").sources[:3])
    top = model.predict_files(paths, top=2)
    images = np.stack([data.resize_center_crop(data.load_image(p), 32) for p in paths])
    probs = model.predict(images)
    assert [t[0][0] for t in top] == [colours.classes[i] for i in probs.argmax(-1)]
    np.testing.assert_allclose([t[0][1] for t in top], probs.max(-1), rtol=1e-6)
    with pytest.raises(ValueError, match="not a jaxheads model"):
        finetuning.load_model(tmp_path / "head")


def test_bad_requests_name_what_is_wrong(colours: data.Dataset, tmp_path: Path, save_tiny_head,
                                         tiny_backbone: str) -> None:
    head = save_tiny_head(tmp_path / "head", colours.classes)
    with pytest.raises(ValueError, match=rf"unfreeze=5: {tiny_backbone} has 4 blocks \(stem, block0"):
        finetuning.finetune(head, colours, finetuning.FinetuneConfig(unfreeze=5), out_dir=tmp_path / "a")
    other = save_tiny_head(tmp_path / "other", ("cat", "dog"))
    with pytest.raises(data.DatasetError, match=r"classes \['blue', 'red'\] differ from the head's label_names"):
        finetuning.finetune(other, colours, out_dir=tmp_path / "b")
    bare = heads_io.save_head(tmp_path / "bare", heads.HeadSpec(pooling="none"),
                              heads.init_head(0, heads.HeadSpec(pooling="none"), (16,)), (16,))
    with pytest.raises(ValueError, match="head meta has no 'backbone'"):
        finetuning.finetune(bare, colours, out_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="FinetuneConfig.crop_scale"):
        finetuning.finetune(head, colours, finetuning.FinetuneConfig(crop_scale=0.5), out_dir=tmp_path / "d")


def test_cli_finetune(colours: data.Dataset, tmp_path: Path, capsys: pytest.CaptureFixture, save_tiny_head) -> None:
    head = save_tiny_head(tmp_path / "head", colours.classes)
    code = cli.main(["finetune", str(head), "--dataset", str(colours.root), "--out", str(tmp_path / "ft"),
                     "--unfreeze", "2", "--epochs", "1", "--batch-size", "6"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "unfrozen: block1, head" in out and "model:" in out
    assert f"report: {tmp_path / 'ft' / 'report.html'}" in out and (tmp_path / "ft" / "report.md").is_file()
    assert finetuning.load_model(tmp_path / "ft" / "model").label_names == colours.classes
    code = cli.main(["finetune", str(head), "--dataset", str(colours.root), "--out", str(tmp_path / "x"),
                     "--unfreeze", "9"])
    assert code == 2 and "unfreeze=9" in capsys.readouterr().err


def test_cli_finetune_flags_map_to_config_fields_and_state_their_defaults() -> None:
    parse = cli.build_parser().parse_args
    assert cli.finetune_config_from_args(parse(["finetune", "head"])) == finetuning.FinetuneConfig()
    defaults = {field.name: field.default for field in dataclasses.fields(finetuning.FinetuneConfig)}
    for flag in cli.FINETUNE_FLAGS:
        if flag.parse is not bool and not isinstance(defaults[flag.field], (tuple, type(None))):  # tuples: recipe test
            assert f"(default {defaults[flag.field]})" in cli.parser.finetune_flag_help(flag), flag.name
    args = parse(["finetune", "head", "--train-bn", "--lr", "0.01", "--unfreeze", "0", "--patience", "2"])
    assert cli.finetune_config_from_args(args) == finetuning.FinetuneConfig(
        freeze_bn=False, learning_rate=0.01, unfreeze=0, patience=2)


# ------------------------------------------------------------------------------------------- the recipe


def test_schedule_warms_up_then_decays_and_rates_decay_down_the_blocks() -> None:
    from jaxheads.finetuning import step as finetune_step

    config = finetuning.FinetuneConfig(epochs=4, warmup_epochs=1.0)
    steps = finetune_step.schedule_steps(config, 10)
    scale = [float(finetune_step.lr_scale(t, steps, "warmup_cosine")) for t in range(40)]
    assert scale[0] == pytest.approx(0.1) and scale[9] == pytest.approx(1.0)  # the first step is 1/10 of the peak
    assert all(a < b for a, b in zip(scale[:10], scale[1:10]))  # rising, then falling to ~0
    assert all(a >= b for a, b in zip(scale[10:], scale[11:])) and scale[39] < 0.01
    assert float(finetune_step.lr_scale(39, steps, "constant")) == 1.0
    setup = finetune_step.FinetuneSetup(None, None, heads.HeadSpec(pooling="none"), ("block0", "block1", "head"),
                                        finetuning.FinetuneConfig(unfreeze=3, learning_rate=1e-3,
                                                                  backbone_learning_rate=1e-4, layer_decay=0.5), 32)
    rates = finetune_step.block_rates(setup)
    assert rates == pytest.approx({"head": 1e-3, "backbone/head": 1e-4, "backbone/block1": 5e-5,
                                   "backbone/block0": 2.5e-5})  # the backbone's block "head" is not the head
    with pytest.raises(ValueError, match="FinetuneConfig.metric"):
        finetuning.FinetuneConfig(metric="top5")


def _tiny_val_metrics(ds: data.Dataset, head_dir: Path, backbone_name: str) -> dict[str, float]:
    """The swept head on the frozen tiny backbone's pooled val features, as the sweep would score it."""
    spec, head_vars, _ = heads_io.load_head(head_dir)
    backbone = backbones.load(backbone_name)
    images = np.stack([data.resize_center_crop(data.load_image(p), 32) for p in ds.split("val").sources])
    fmap = backbone.module.apply(backbone.variables, backbone.config.preprocessing(images), train=False)["features"]
    logits = heads.apply_head(head_vars, fmap.mean(axis=(1, 2)), spec)
    labels = ds.split("val").labels
    return {"accuracy": float(np.mean(np.asarray(logits).argmax(-1) == labels)),
            "loss": float(heads.example_losses(logits, jnp.asarray(labels), spec).mean())}


@pytest.mark.slow
def test_epoch_zero_is_the_frozen_head_and_a_wrecking_run_keeps_it(colours: data.Dataset, tmp_path: Path, tiny_run,
                                                                   tiny_backbone: str) -> None:
    """Before any step the model is the frozen backbone + the swept head (its val metric is the head's); a run
    whose steps only make it worse saves that model unchanged, and its gain is exactly zero."""
    wreck = tiny_run(colours, tmp_path, unfreeze=2, epochs=2, learning_rate=30.0, backbone_learning_rate=30.0,
                      warmup_epochs=0.0, schedule="constant", ema_decay=None, metric="balanced_accuracy")
    frozen = _tiny_val_metrics(colours, tmp_path / "head", tiny_backbone)
    assert wreck.before["accuracy"] == pytest.approx(frozen["accuracy"])
    assert wreck.before["loss"] == pytest.approx(frozen["loss"], rel=1e-5)
    assert wreck.metric == "balanced_accuracy" and "balanced_accuracy" in wreck.before
    assert all(h["val"]["loss"] > wreck.before["loss"] for h in wreck.history[1:])  # the steps did wreck it
    assert not wreck.improved and wreck.best_epoch == 0 and wreck.best == wreck.before
    saved = finetuning.load_model(wreck.model_dir).variables
    start = {"backbone": backbones.load(tiny_backbone).variables, "head": heads_io.load_head(tmp_path / "head")[1]}
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(start)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    gain = wreck.gain["val"]["balanced_accuracy"]
    assert gain["diff"] == 0.0 and gain["low"] == gain["high"] == 0.0 and wreck.gain["test"] is None
    assert wreck.gain_lines() == [f"val balanced_accuracy: frozen {gain['a']:.4f} -> fine-tuned {gain['b']:.4f}, "
                                  "gain +0.0000 [95% +0.0000, +0.0000], P(gain > 0) 0.50, within noise "
                                  "(optimistic: the epoch was chosen on val)"]


@pytest.mark.slow
def test_the_moving_average_is_what_is_evaluated_and_the_gain_is_measured_on_test(tmp_path: Path, tiny_run,
                                                                                  make_colour_folder) -> None:
    """With a moving average that barely moves, val stays at the frozen model's while the raw weights train; with
    a test split the gain is also measured there, paired, once."""
    root = make_colour_folder(tmp_path / "colours", per_class=10)
    ds = data.load_dataset(root, val_fraction=0.2, test_fraction=0.2)
    slow = tiny_run(ds, tmp_path / "slow", unfreeze=2, epochs=1, ema_decay=1.0 - 1e-7, label_smoothing=0.2)
    assert slow.weight_change["params/head"] > 0 and slow.weight_change["head"] > 0
    assert slow.history[1]["val"]["loss"] == pytest.approx(slow.before["loss"], rel=1e-4)
    test = slow.gain["test"]
    assert set(test) == {"accuracy", "balanced_accuracy", "macro_f1"}
    assert test["accuracy"]["low"] <= test["accuracy"]["diff"] <= test["accuracy"]["high"]
    assert slow.gain["val"]["accuracy"]["a"] == pytest.approx(slow.before["accuracy"])
    assert slow.gain["val"]["accuracy"]["b"] == pytest.approx(slow.best["accuracy"])
    lines = slow.gain_lines()
    assert lines[0].startswith("test accuracy: frozen ") and lines[1].startswith("val accuracy: frozen ")
    saved = json.loads((tmp_path / "slow" / "ft" / "finetune.json").read_text())
    assert finetuning.FinetuneResult.from_dict({k: v for k, v in saved.items() if k != "run"}).gain_lines() == lines
    report = (tmp_path / "slow" / "ft" / "report.md").read_text()
    assert f"**{lines[0]}**" in report  # the honest (test) line leads
    table = [line for line in report.splitlines() if line.startswith("| test (scored once) |")]
    assert [row.split(" | ")[1] for row in table] == ["accuracy", "balanced_accuracy", "macro_f1"]
    c = test["macro_f1"]
    assert f"{c['diff']:+.4f} | [{c['low']:+.4f}, {c['high']:+.4f}]" in table[2]
    assert (tmp_path / "slow" / "ft" / "report.html").read_text().count("<table") == 2
