"""Kills (SIGKILL: no clean-up, no finally) in the middle of the long steps, then a re-run with the same
arguments: it resumes and ends with exactly what an uninterrupted run gives.

The child processes slow themselves down in their progress callbacks so that a kill lands inside the step, at a
point drawn from a seeded generator (printed, so a failure can be replayed). Every wait is bounded."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import pytest

from jaxheads import data, features, finetuning, job
from jaxheads.sweep import SweepSpec

HERE = Path(__file__).parent
TIMEOUT_S = 240

SWEEP = SweepSpec(pooling=("none", "catavgmax"), widths=(8,), depth=(0, 1), dropout=(0.0,), learning_rate=(1e-2,),
                  batch_size=(8,), epochs=6, seeds=2, patience=None, ridge_l2=(1.0,), map_batch="vmap")
"""Four groups (pooling x depth: catavgmax is twice as wide as the pooled vector, so it cannot share a group with
"none"), so that a kill can land between groups and inside one."""

_PRELUDE = """
import sys, time
sys.path.insert(0, sys.argv[1])
import tiny  # registers the tiny backbone
"""

_JOB_CHILD = _PRELUDE + """
import json
from jaxheads import job
from jaxheads.features import ExtractOptions
from jaxheads.sweep import SweepSpec
def features(event):
    print("features", event.split, event.done, flush=True)
    time.sleep(0.15)
def sweep(event):
    print("sweep", event["group"], event["epoch"], flush=True)
    time.sleep(0.05)
job.sweep_job(sys.argv[2], tiny.NAME, sweep=SweepSpec.from_dict(json.loads(sys.argv[5])),
              options=job.JobOptions(out_dir=sys.argv[3]), extract=ExtractOptions(cache_dir=sys.argv[4], batch_size=2),
              feature_progress=features, sweep_progress=sweep)
print("done", flush=True)
"""

_FINETUNE_CHILD = _PRELUDE + """
import json
from jaxheads import finetuning
def progress(event):
    print("epoch", event["epoch"], flush=True)
    time.sleep(0.2)
config = finetuning.FinetuneConfig(**json.loads(sys.argv[5]))
finetuning.finetune(sys.argv[2], sys.argv[3], config, out_dir=sys.argv[4], progress=progress)
print("done", flush=True)
"""


def _run_until(script: str, args: list[str], kill_when: Callable[[str], bool], delay_s: float) -> list[str]:
    """Run ``script`` in a child, SIGKILL it ``delay_s`` after the first stdout line where ``kill_when`` holds;
    returns the lines read. Fails (never hangs) if the child finishes first or takes too long."""
    child = subprocess.Popen([sys.executable, "-c", script, str(HERE), *args],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ.copy())
    lines: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for line in child.stdout:
            lines.append(line.strip())
            if kill_when(line.strip()):
                time.sleep(delay_s)
                break
            if time.monotonic() > deadline:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, f"child was not killed mid-run: {lines[-5:]}"
    assert "done" not in lines, "the child finished before the kill"
    return lines


def _comparable(results: dict) -> dict:
    """results.json without what legitimately differs between runs: wall-clock timings and timing probes."""
    results = json.loads(json.dumps(results))
    results.pop("timings", None)
    for group in results.get("groups", []):
        group.pop("timings", None)
        group.pop("map_batch_probe", None)
    return results


def _features_of(cache: Path, colours: Path, backbone: str) -> dict[str, dict[str, np.ndarray]]:
    """Every split of the job's dataset as the feature cache holds it (read without the backbone), by split name:
    its arrays."""
    def never() -> Any:
        raise AssertionError("the feature cache is not complete")

    source = dataclasses.replace(features.backbone_source(backbone), load=never)
    splits = features.extract_all(source, data.load_dataset(colours),
                                  features.ExtractOptions(cache_dir=cache, need_maps=True))
    return {name: {k: np.asarray(v) for k, v in split._asdict().items()} for name, split in splits.items()}


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory, make_colour_folder) -> Path:
    return make_colour_folder(tmp_path_factory.mktemp("faults") / "colours", per_class=24)


@pytest.fixture(scope="module")
def reference(colours: Path, tmp_path_factory: pytest.TempPathFactory, tiny_backbone: str) -> tuple[Path, Path]:
    """The uninterrupted main job: (out dir, feature cache)."""
    root = tmp_path_factory.mktemp("reference")
    job.sweep_job(colours, tiny_backbone, sweep=SWEEP, options=job.JobOptions(out_dir=root / "out"),
                  extract=features.ExtractOptions(cache_dir=root / "cache", batch_size=2))
    return root / "out", root / "cache"


@pytest.mark.slow
def test_sigkill_during_feature_extraction_resumes_to_identical_results(
        colours: Path, reference: tuple[Path, Path], tmp_path: Path, tiny_backbone) -> None:
    rng = random.Random(8)
    kill_at = rng.randint(16, 30)  # images done in train: after its first 16-image chunk, before the last
    delay = rng.uniform(0.0, 0.3)
    print(f"\nkilling the feature pass at train image {kill_at} + {delay:.2f}s")
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = [str(colours), str(out), str(cache), json.dumps(SWEEP.to_dict())]
    lines = _run_until(_JOB_CHILD, args, lambda l: l.startswith("features train") and int(l.split()[2]) >= kill_at,
                       delay)
    assert not any(line.startswith("sweep") for line in lines)
    (entry,) = list(cache.iterdir())  # one cache for all the splits' images, train's first
    assert not (entry / "meta.json").exists() and list((entry / "shards").glob("*.kept.npy"))
    events: list[Any] = []
    job.sweep_job(colours, tiny_backbone, sweep=SWEEP, options=job.JobOptions(out_dir=out),
                  extract=features.ExtractOptions(cache_dir=cache, batch_size=2), feature_progress=events.append)
    first_train = next(e for e in events if e.split == "train")
    assert first_train.done >= 16 and not first_train.cached  # resumed after the chunks on disk
    ref_out, ref_cache = reference
    got, want = _features_of(cache, colours, tiny_backbone), _features_of(ref_cache, colours, tiny_backbone)
    assert sorted(got) == sorted(want) == ["test", "train", "val"]
    for split in want:
        for name in want[split]:
            np.testing.assert_array_equal(got[split][name], want[split][name], err_msg=f"{split}/{name}")
    assert _comparable(json.loads((out / "results.json").read_text())) == \
        _comparable(json.loads((ref_out / "results.json").read_text()))


@pytest.mark.slow
def test_sigkill_during_finetune_resumes_to_the_same_model(colours: Path, tmp_path: Path, save_tiny_head) -> None:
    ds = data.load_dataset(colours)
    head = save_tiny_head(tmp_path / "head", ds.classes)
    settings = {"unfreeze": 2, "epochs": 4, "batch_size": 6, "patience": None}
    want = finetuning.finetune(head, colours, finetuning.FinetuneConfig(**settings), out_dir=tmp_path / "ref")
    rng = random.Random(9)
    kill_epoch, delay = rng.randint(1, 3), rng.uniform(0.0, 0.4)
    print(f"\nkilling the fine-tune after epoch {kill_epoch} + {delay:.2f}s")
    out = tmp_path / "killed"
    _run_until(_FINETUNE_CHILD, [str(head), str(colours), str(out), json.dumps(settings)],
               lambda l: l == f"epoch {kill_epoch}", delay)
    assert not (out / "model").exists()
    got = finetuning.finetune(head, colours, finetuning.FinetuneConfig(**settings), out_dir=out)
    assert 0 <= got.resumed_from_epoch <= kill_epoch
    assert got.history == want.history and got.best_epoch == want.best_epoch
    a, b = finetuning.load_model(want.model_dir), finetuning.load_model(got.model_dir)
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_sigkill_during_the_sweep_resumes_to_identical_results(
        colours: Path, reference: tuple[Path, Path], tmp_path: Path, tiny_backbone) -> None:
    ref_out, ref_cache = reference
    rng = random.Random(10)
    kill_group, kill_epoch, delay = rng.randint(1, 3), rng.randint(1, SWEEP.epochs), rng.uniform(0.0, 0.1)
    print(f"\nkilling the sweep in group {kill_group} after epoch {kill_epoch} + {delay:.2f}s")
    out, cache = tmp_path / "out", tmp_path / "cache"
    shutil.copytree(ref_cache, cache)  # features cached: the child goes straight to the sweep
    args = [str(colours), str(out), str(cache), json.dumps(SWEEP.to_dict())]
    _run_until(_JOB_CHILD, args, lambda l: l == f"sweep {kill_group} {kill_epoch}", delay)
    state = out / job.SWEEP_STATE
    finished = sorted(p.name for p in state.iterdir() if (p / "meta.json").exists())
    assert finished[: kill_group] == [f"group-{g:04d}" for g in range(kill_group)]
    events: list[dict] = []
    job.sweep_job(colours, tiny_backbone, sweep=SWEEP, options=job.JobOptions(out_dir=out),
                  extract=features.ExtractOptions(cache_dir=cache, batch_size=2), sweep_progress=events.append)
    trained = sorted({e["group"] for e in events})
    assert trained == list(range(len(finished), 4))  # the finished groups were loaded, not trained again
    assert _comparable(json.loads((out / "results.json").read_text())) == \
        _comparable(json.loads((ref_out / "results.json").read_text()))
    assert not state.exists()
