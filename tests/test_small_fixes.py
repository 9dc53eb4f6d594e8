"""Three fixes found while trying the CLI: a corrupt head meta is one line naming the file, a group that stops
early ends its progress bar full, and the report's test confusion matrix comes from the test figure's predictions."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import jaxheads
from jaxheads import cli
from jaxheads.sweep import scores


def _saved_head(path: Path) -> Path:
    spec = jaxheads.HeadSpec(num_classes=2, pooling="avg", hidden=(4,))
    variables = jaxheads.init_head(jax.random.key(0), spec, (2, 2, 5))
    return jaxheads.save_head(path, spec, variables, (2, 2, 5), label_names=["a", "b"])


def test_a_corrupt_head_meta_is_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    head = _saved_head(tmp_path / "head")
    (head / "meta.json").write_text("{'spec': oops")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert cli.main(["predict", str(head), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(head / "meta.json") in err and "not valid JSON" in err
    with pytest.raises(ValueError, match="meta.json: not valid JSON"):
        jaxheads.load_head(head)


@pytest.mark.slow
def test_a_group_that_stops_early_ends_its_progress_full() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(64) % 2  # labels the features do not predict: val accuracy stalls at once
    x = rng.normal(size=(64, 6)).astype(np.float32)
    train, val = (jaxheads.FeatureSplit(labels=y[s], pooled=x[s]) for s in (slice(0, 48), slice(48, 64)))
    sweep = jaxheads.SweepSpec(pooling=("none",), depth=(1,), widths=(4,), epochs=12, patience=1,
                               folds=None, ridge_l2=())
    events: list[dict] = []
    result = jaxheads.run_sweep(sweep, {"train": train, "val": val}, num_classes=2, progress=events.append)
    assert max(m["epochs_run"] for m in result.members) < sweep.epochs  # the group did stop early
    last = [e for e in events if "epoch" in e][-1]
    assert last["epoch"] == last["epochs"] == sweep.epochs and last["active"] == 0


@pytest.mark.slow
def test_the_test_confusion_matrix_is_the_test_figures_predictor() -> None:
    rng = np.random.default_rng(1)
    y = np.arange(150) % 3
    x = (np.eye(3)[y] * 1.5 + rng.normal(size=(150, 3))).astype(np.float32)
    train, val, test = (jaxheads.FeatureSplit(labels=y[s], pooled=x[s])
                        for s in (slice(0, 60), slice(60, 90), slice(90, 150)))
    sweep = jaxheads.SweepSpec(pooling=("none",), depth=(0,), epochs=4, folds=3, seeds=2, ridge_l2=())
    result = jaxheads.run_sweep(sweep, {"train": train, "val": val, "test": test}, num_classes=3)
    matrices = scores.confusion_matrices(result, result.recommended)
    test_cm = np.asarray(matrices["test"])
    assert matrices["seeds"] == 2 and test_cm.sum() == 2 * len(test)
    assert np.trace(test_cm) / test_cm.sum() == pytest.approx(result.selection["test"]["estimate"], abs=1e-12)
    recall = np.diag(test_cm) / test_cm.sum(axis=1)
    assert recall.tolist() == pytest.approx(list(result.selection["per_class_test"]["recall"].values()), abs=1e-12)


def test_a_tap_head_saved_without_its_input_transform_is_refused_in_one_line(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    """A tap head saved before heads recorded their standardisation cannot be rebuilt: predict says so, and
    finetune refuses every tap head (tests/test_export_model.py rebuilds a tap head that records it)."""
    spec = jaxheads.HeadSpec(num_classes=2, pooling="none", hidden=(4,))
    variables = jaxheads.init_head(jax.random.key(0), spec, (6,))
    extra = {"backbone": "efficientnet_lite0", "weights": "default", "weights_id": "x", "representation": "block3"}
    head = jaxheads.save_head(tmp_path / "head", spec, variables, (6,), label_names=["a", "b"], extra=extra)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert cli.main(["predict", str(head), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'block3' representation" in err and "no 'input'" in err
    from jaxheads.heads import io as heads_io

    with pytest.raises(ValueError, match="finetune does not train.*--representation last"):
        heads_io.read_swept_head(head)
