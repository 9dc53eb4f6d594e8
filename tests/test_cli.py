"""The main job end to end through the `jaxheads` command: a tiny real image folder, every artifact, a cache hit,
predict, a CSV multilabel run, and one-line errors for bad input."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxheads import backbones, cli, distributed, heads_io

# The main job's folds, conv and BN axes are switched off: these tests need a small grid.
SWEEP_FLAGS = ["--pooling", "avg,none", "--conv", "none", "--norm", "none", "--folds", "none", "--design", "grid",
               "--widths", "16", "--depths", "0,1", "--dropouts", "0",
               "--epochs", "4", "--seeds", "2", "--batch-size", "8", "--feature-batch-size", "16"]


def _write_image(path, color, rng, mode="RGB", size=(48, 40)):
    """A small real image file: a class colour plus noise, so a linear head can separate the classes."""
    base = np.clip(np.asarray(color, np.float32) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(base)
    image = image.convert(mode) if mode != "RGB" else image
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    colors = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
    for name, color in colors.items():
        for i in range(10):
            suffix, mode = (".png", "RGBA") if i % 3 == 0 else (".jpg", "RGB")
            _write_image(root / name / f"{i}{suffix}", color, rng, mode)
    return root


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_sweep_end_to_end_then_cache_hit_then_predict(image_folder, tmp_path, jaxheads_cache, capsys, monkeypatch):
    out = tmp_path / "run"
    code, stdout, err = _run(capsys, "sweep", "--dataset", image_folder, "--out", out, *SWEEP_FLAGS)
    assert code == 0, err
    for name in ("results.json", "report.md", "report.html", "val_vs_params.png", "learning_curves.png",
                 "confusion_matrix.png", "head_questions.json", "head.jaxexport"):
        assert (out / name).is_file(), name
    assert "Recommended head" in stdout and "ridge" in stdout
    result = json.loads((out / "results.json").read_text())
    assert len(result["members"]) == 2 * 2 * 2  # pooling (avg, none) x depth (0, 1) x 2 seeds
    assert result["recommended"] is not None
    best = result["leaderboard"][0]
    assert best["val"]["accuracy"]["mean"] > 0.6  # three colour classes are easy on ImageNet features

    # Second run: every split is cached, so the backbone must not be built at all.
    def refuse(*args, **kwargs):
        raise AssertionError("backbone built on a cache hit")

    monkeypatch.setattr(backbones, "load", refuse)
    code, _, err = _run(capsys, "sweep", "--dataset", image_folder, "--out", tmp_path / "run2", *SWEEP_FLAGS)
    assert code == 0, err
    again = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert again["leaderboard"][0]["val"] == best["val"]  # same cached features, same seeds: same numbers
    monkeypatch.undo()

    # predict: the saved head + its backbone on the training images gives their labels.
    spec, _, _ = heads_io.load_head(out / "head")
    images = sorted((image_folder / "red").glob("*.jpg"))[:2] + sorted((image_folder / "blue").glob("*.jpg"))[:2]
    code, stdout, err = _run(capsys, "predict", out / "head", *images)
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert [line.split(": ")[1].split()[0] for line in lines] == ["red", "red", "blue", "blue"]


def test_csv_multilabel_sweep(image_folder, tmp_path, jaxheads_cache, capsys):
    rows = ["path,label,label"]
    for folder in ("red", "green", "blue"):
        for path in sorted((image_folder / folder).iterdir()):
            labels = {"red": "warm", "green": "natural", "blue": "cool,natural"}[folder]
            rows.append(f"{path},{labels}")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "ml"
    code, _, err = _run(capsys, "sweep", "--dataset", csv, "--out", out, "--pooling", "none", "--widths", "8",
                        "--conv", "none", "--norm", "none", "--folds", "none", "--depths", "1", "--epochs", "3", "--seeds", "1", "--batch-size", "8")
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    assert result["task"] == "multilabel" and result["label_names"] == ["cool", "natural", "warm"]
    assert result["members"][0]["thresholds"] is not None
    assert (out / "head").is_dir()


@pytest.mark.parametrize("argv, expected", [
    (["sweep", "--dataset", "/nonexistent/images"], "/nonexistent/images"),
    (["sweep", "--backbone", "resnet9000"], "resnet9000"),
    (["sweep", "--dataset", "tfds:no_such_dataset_xyz"], "no_such_dataset_xyz"),
    (["sweep", "--widths", "wide"], "--widths"),
    (["predict", "/nonexistent/head", "x.jpg"], "/nonexistent/head"),
])
def test_bad_input_gives_one_line_error(argv, expected, capsys, jaxheads_cache):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_empty_class_folder_is_named(tmp_path, capsys, jaxheads_cache):
    rng = np.random.default_rng(1)
    for i in range(3):
        _write_image(tmp_path / "data" / "cat" / f"{i}.jpg", (200, 100, 50), rng)
    (tmp_path / "data" / "dog").mkdir()
    code, _, err = _run(capsys, "sweep", "--dataset", tmp_path / "data", "--out", tmp_path / "o")
    assert code == 2 and "dog" in err and len(err.strip().splitlines()) == 1


def test_backbones_list_and_compare(image_folder, capsys, jaxheads_cache):
    code, stdout, err = _run(capsys, "backbones", "list")
    assert code == 0 and "efficientnet_lite0" in stdout.split()
    code, stdout, err = _run(capsys, "backbones", "compare", "efficientnet_lite0", "--dataset", image_folder)
    assert code == 0, err
    row = [line for line in stdout.splitlines() if line.startswith("efficientnet_lite0")][0].split()
    assert int(row[1]) == 1280 and 0.6 < float(row[2]) <= 1.0  # pooled width; ridge val accuracy on 3 colours


@pytest.mark.parametrize("env, cores, expected", [
    ({}, 2, 2),
    ({}, 64, 8),                                                           # capped at CPU_SPLIT_MAX
    ({}, 1, None),                                                         # nothing to split
    ({"JAX_NUM_CPU_DEVICES": "1"}, 16, None),                              # the user's choice stands
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}, 16, None),
    ({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}, 4, 4),             # other XLA flags do not count
])
def test_cpu_device_count_is_one_per_core_unless_the_user_chose(env, cores, expected):
    assert distributed.cpu_device_count(env, cores) == expected


def test_split_cpu_host_before_jax_starts_gives_one_device_per_core():
    """In a fresh interpreter (JAX not started) the split takes effect; the user's JAX_NUM_CPU_DEVICES wins."""
    code = ("import jax, jaxheads; from jaxheads import distributed; n = jaxheads.split_cpu_host(); "
            "print(n, jax.local_device_count(), distributed.cpu_device_count({}, distributed.usable_cores()))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    split, devices, expected = out.split()
    assert split == expected and int(devices) == (1 if expected == "None" else int(expected))
    env["JAX_NUM_CPU_DEVICES"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[:2] == ["None", "1"]


def test_split_cpu_host_after_jax_started_changes_nothing(monkeypatch):
    """In-process callers whose JAX already runs keep their devices (JAX cannot re-split a started backend)."""
    jax.devices()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    before = jax.device_count()
    assert distributed.split_cpu_host() is None
    assert jax.device_count() == before
