"""The model saved is the model scored: the bagged head a folded sweep saves predicts what its test figure scored,
``jaxheads predict`` and ``model.jaxexport`` (image -> probabilities, loaded where jaxheads is not importable) agree
with it, a tap head's input is rebuilt from images, and a fine-tuned model exports and predicts the same way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxheads import checkpoint, cli, export, features, finetuning, heads, job, metrics, predict
from jaxheads.heads import io as heads_io
from jaxheads.sweep import SweepSpec, representation

ATOL = 1e-5

# A child that cannot import jaxheads (sys.modules entry None makes every `import jaxheads` fail), started in an
# empty folder with no PYTHONPATH: it decodes the files with PIL as the sidecar describes, and runs the export.
CHILD = r"""
import json, sys
sys.modules["jaxheads"] = None
try:
    import jaxheads
    raise SystemExit("jaxheads is importable")
except ImportError:
    pass
import jax, numpy as np
from PIL import Image

path, images, out = sys.argv[1], sys.argv[2:-1], sys.argv[-1]
meta = json.load(open(path + ".json"))
size = meta["image_size"]

def load(file):
    image = Image.open(file).convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new != (w, h):
        image = image.resize(new, Image.Resampling.BILINEAR)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)

exported = jax.export.deserialize(bytearray(open(path, "rb").read()))
probs = np.asarray(exported.call(np.stack([load(f) for f in images])))
assert not [m for m in sys.modules if m.startswith(("jaxheads.", "tiny"))], "jaxheads was loaded"
np.save(out, probs)
json.dump(meta["label_names"], open(out + ".json", "w"))
"""


def _child_probabilities(exported: Path, images: list[str], tmp_path: Path) -> tuple[np.ndarray, list[str]]:
    """(probabilities, label names) of ``images`` under the export, computed in a child without jaxheads."""
    work = tmp_path / "child"
    work.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = work / "probs.npy"
    done = subprocess.run([sys.executable, "-c", CHILD, str(exported), *images, str(out)], check=False, cwd=work,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(out), json.loads((work / "probs.npy.json").read_text())


def _files(out: job.JobOutput, split: str = "test") -> list[str]:
    return [str(s) for s in out.dataset.split(split).sources]


def test_a_bag_predicts_the_mean_of_its_members_probabilities(tmp_path: Path) -> None:
    """save_bag / load_head / export_head of three heads with batch norm, multiclass and multilabel."""
    x = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
    for task in ("multiclass", "multilabel"):
        spec = heads.HeadSpec(num_classes=3, task=task, pooling="none", hidden=(4,), norm="batch")
        members = [heads.init_head(seed, spec, (6,)) for seed in range(3)]
        expected = np.mean([metrics.probabilities(heads.apply_head(v, x, spec), task) for v in members], axis=0)
        path = heads_io.save_bag(tmp_path / task, spec, members, (6,), label_names=["a", "b", "c"])
        assert heads_io.load_meta(path)["bag"] == 3
        spec2, stacked, apply_fn = heads_io.load_head(path)
        np.testing.assert_allclose(metrics.probabilities(apply_fn(stacked, x), task), expected, atol=1e-6)
        exported = heads_io.export_head(tmp_path / f"{task}.jaxexport", spec2, stacked, (6,), bagged=True)
        np.testing.assert_allclose(metrics.probabilities(heads_io.load_exported(exported)(x), task), expected,
                                   atol=1e-6)
    one = heads_io.save_bag(tmp_path / "one", spec, members[:1], (6,))  # a bag of 1 is the model itself
    np.testing.assert_array_equal(heads_io.load_head(one)[2](heads_io.load_head(one)[1], x),
                                  heads.apply_head(members[0], x, spec))


def test_the_export_runs_without_jaxheads_and_agrees_with_predict(tmp_path: Path, save_tiny_head,
                                                                  make_colour_folder) -> None:
    """An old-layout head (save_head: unstacked, no bag field) predicts as a bag of 1, and its image -> label
    export, loaded by a child that cannot import jaxheads, gives predict's probabilities on the same files."""
    head = save_tiny_head(tmp_path / "head", ("red", "blue"))
    files = [str(p) for p in sorted(make_colour_folder(tmp_path / "images", per_class=3).rglob("*.png"))]
    probs, names = predict.probabilities_of_files(head, files)
    path = export.export_saved(head, tmp_path / "model.jaxexport")
    child, child_names = _child_probabilities(path, files, tmp_path)
    assert names == child_names == ["red", "blue"] and child.shape == (6, 2)
    np.testing.assert_allclose(child, probs, atol=ATOL)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)


@pytest.fixture(scope="module")
def folded(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: str, make_colour_folder) -> job.JobOutput:
    """The tiny backbone's job with 3 folds: the recommended config is a bag of its 3 fold models."""
    tmp = tmp_path_factory.mktemp("folded")
    root = make_colour_folder(tmp / "colours", per_class=12)
    sweep = SweepSpec(pooling=("none",), widths=(8,), depth=(1,), norm=("batch",), epochs=3, seeds=1,
                      patience=None, map_batch="vmap", ridge_l2=(), folds=3)
    return job.sweep_job(root, tiny_backbone, sweep=sweep, options=job.JobOptions(out_dir=tmp / "run"),
                         extract=features.ExtractOptions(cache_dir=tmp / "cache"))


@pytest.mark.slow  # the tiny job: a feature pass, a 3-fold sweep, two exports
def test_a_folded_sweep_saves_scores_predicts_and_exports_one_bag(folded: job.JobOutput, tmp_path: Path) -> None:
    result, head = folded.result, folded.files["head"]
    members = job.bag_members(result)
    meta = heads_io.load_meta(head)
    assert len(members) == 3 and meta["bag"] == 3 and meta["members"] == members
    assert meta["bag_scored_as"] == "the report's test figure"
    scored = result.predictions["test"][members].mean(axis=0)  # what the test figure and confusion matrix read
    files = _files(folded)
    probs, names = predict.probabilities_of_files(head, files)
    assert names == list(folded.dataset.classes)
    np.testing.assert_allclose(probs, scored, atol=ATOL)
    labels = folded.dataset.split("test").labels
    confusion = np.zeros((2, 2), np.int64)
    np.add.at(confusion, (labels, probs.argmax(-1)), 1)
    assert confusion.tolist() == result.selection["confusion_matrix"]["test"]
    assert np.trace(confusion) / len(labels) == pytest.approx(result.selection["test"]["estimate"], abs=1e-12)
    child, _ = _child_probabilities(folded.files["model_export"], files, tmp_path)
    np.testing.assert_allclose(child, probs, atol=ATOL)
    logits = heads_io.load_exported(folded.files["head_export"])(folded.splits["test"].pooled)
    np.testing.assert_allclose(metrics.probabilities(logits, "multiclass"), scored, atol=ATOL)
    # A fine-tune starts from one model: the member the sweep ranked best, as the head held before bags.
    one = heads_io.read_swept_head(head)
    best = result.recommended_member()
    assert members[meta["bag_best"]] == best
    jax.tree.map(np.testing.assert_array_equal, one.variables, jax.tree.map(np.asarray, result.variables[best]))


@pytest.fixture(scope="module")
def tapped(tmp_path_factory: pytest.TempPathFactory, tiny_tapped_backbone: str, make_colour_folder) -> job.JobOutput:
    """The tapped tiny backbone's job at one tap level, select:0.5 (every tap, standardised, half the columns
    kept), without folds (a selection reads the training labels)."""
    tmp = tmp_path_factory.mktemp("tapped")
    root = make_colour_folder(tmp / "colours", per_class=10)
    sweep = SweepSpec(pooling=("none",), widths=(8,), depth=(1,), epochs=3, seeds=1, patience=None,
                      map_batch="vmap", ridge_l2=(), folds=None)
    return job.sweep_job(root, tiny_tapped_backbone, sweep=sweep,
                         options=job.JobOptions(out_dir=tmp / "run", representation="select:0.5"),
                         extract=features.ExtractOptions(cache_dir=tmp / "cache"))


@pytest.mark.slow  # the tiny job with taps
def test_predict_rebuilds_a_tap_heads_input_from_images(tapped: job.JobOutput, tmp_path: Path) -> None:
    """predict of a tap head equals the head applied to the cached taps of the same images (the sweep's own test
    predictions), and so does its export; a tap read up to block0 only runs the backbone that far."""
    head, files = tapped.files["head"], _files(tapped)
    meta = heads_io.load_meta(head)
    assert meta["input"]["level"] == "select:0.5" and meta["input"]["taps"] == ["stem", "block0", "block1", "head"]
    probs, _ = predict.probabilities_of_files(head, files)
    (member,) = job.bag_members(tapped.result)
    np.testing.assert_allclose(probs, tapped.result.predictions["test"][member], atol=ATOL)
    call, sidecar = export.load_export(export.export_saved(head, tmp_path / "model.jaxexport"))
    np.testing.assert_allclose(call(predict.read_images(files, sidecar["image_size"])), probs, atol=ATOL)
    # block0 alone: another transform on the same cached taps, saved as a head with a fresh (untrained) member.
    made = representation.level_input(tapped.splits, "block0", ("stem", "block0", "block1", "head"), folds=False,
                                       num_classes=2)
    spec = heads.HeadSpec(num_classes=2, pooling="none", hidden=(4,))
    variables = heads.init_head(1, spec, (len(made.mean),))
    tap = heads_io.TapInput("block0", made.taps, made.mean, made.scale)
    extra = {k: meta[k] for k in heads_io.PROVENANCE_FIELDS} | {"representation": "block0"}
    block0 = heads_io.save_bag(tmp_path / "block0", spec, [variables], (len(made.mean),), extra=extra, tap_input=tap)
    cached = made.apply(np.asarray(tapped.splits["test"].taps["block0"], np.float32))
    expected = metrics.probabilities(heads.apply_head(variables, cached, spec), "multiclass")
    np.testing.assert_allclose(predict.probabilities_of_files(block0, files)[0], expected, atol=ATOL)


@pytest.mark.slow  # reuses the tapped job
def test_a_tap_head_is_refused_by_a_backbone_without_its_taps_and_by_finetune(tapped: job.JobOutput, tmp_path: Path,
                                                                             tiny_backbone: str,
                                                                             capsys: pytest.CaptureFixture) -> None:
    moved = tmp_path / "head"
    shutil.copytree(tapped.files["head"], moved)
    meta = heads_io.load_meta(moved) | {"backbone": tiny_backbone}  # the same network, naming no taps
    checkpoint.write_json_atomic(moved / checkpoint.META, meta)
    assert cli.main(["predict", str(moved), _files(tapped)[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tap 'stem'" in err and f"backbone {tiny_backbone} lacks" in err
    with pytest.raises(ValueError, match="finetune does not train"):
        finetuning.finetune(tapped.files["head"], tapped.dataset, out_dir=tmp_path / "ft")


@pytest.mark.slow  # a one-epoch fine-tune of the tiny backbone
def test_a_finetuned_model_predicts_and_exports_as_it_loads(tmp_path: Path, save_tiny_head, make_colour_folder,
                                                            capsys: pytest.CaptureFixture) -> None:
    from jaxheads import data

    ds = data.load_dataset(make_colour_folder(tmp_path / "colours", per_class=8), val_fraction=0.25,
                           test_fraction=0.25)
    head = save_tiny_head(tmp_path / "head", ds.classes)
    config = finetuning.FinetuneConfig(epochs=1, batch_size=6, patience=None, unfreeze=1)
    finetuning.finetune(head, ds, config, out_dir=tmp_path / "ft")
    model_dir, exported = tmp_path / "ft" / "model", tmp_path / "ft" / "model.jaxexport"
    files = [str(s) for s in ds.split("test").sources]
    probs, names = predict.probabilities_of_files(model_dir, files)
    loaded = finetuning.load_model(model_dir)
    assert names == list(loaded.label_names)
    np.testing.assert_allclose(probs, loaded.predict(predict.read_images(files, loaded.image_size)), atol=ATOL)
    call, sidecar = export.load_export(exported)
    assert sidecar["label_names"] == names and sidecar["source"]["kind"] == "jaxheads.model"
    np.testing.assert_allclose(call(predict.read_images(files, sidecar["image_size"])), probs, atol=ATOL)
    assert cli.main(["predict", str(model_dir), files[0], "--top", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"{files[0]}: ")


def test_predict_names_a_directory_that_is_no_saved_model(tmp_path: Path) -> None:
    checkpoint.save(tmp_path / "other", {"x": np.zeros(2)}, {"kind": "something.else"})
    with pytest.raises(ValueError, match="meta kind 'something.else'; expected a head written by `jaxheads sweep`"):
        predict.predict_files(tmp_path / "other", [])
