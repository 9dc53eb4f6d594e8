"""A real multi-process run: two processes on localhost joined by jax.distributed (gloo CPU collectives), 4 forced
CPU devices each, run the same sweep as one 8-device process and must get the same results; a dead peer must make
the survivor fail, not hang."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "sweep" / "pod_sweep.py"
# 6 configs (not a multiple of 8 devices), batch 10 (not a multiple of the data axis), 100 samples.
CONFIG = """
pooling: [none]
widths: [8, 16, 32]
depth: [1]
dropout: [0.0, 0.3]
epochs: {epochs}
seeds: 1
batch_size: [10]
map_batch: vmap
patience: null
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    return env


def _launch(tmp_path: Path, out: Path, epochs: int, devices: int, rank: int | None = None, port: int = 0,
            heartbeat: int = 100) -> subprocess.Popen:
    config = tmp_path / f"sweep{epochs}.yaml"
    config.write_text(CONFIG.format(epochs=epochs))
    cmd = [sys.executable, str(SCRIPT), "--synthetic", "100", "--config", str(config), "--out", str(out),
           "--heartbeat-timeout", str(heartbeat)]
    if rank is not None:
        cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(rank)]
    log = open(tmp_path / f"log-{out.name}-{rank}.txt", "w")
    return subprocess.Popen(cmd, env=_env(devices), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            start_new_session=True)


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return codes


def _log(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("log-*.txt")))


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    single = _launch(tmp_path, tmp_path / "single", epochs=3, devices=8)
    assert _wait([single], 240) == [0], _log(tmp_path)
    port = _free_port()
    pair = [_launch(tmp_path, tmp_path / "multi", epochs=3, devices=4, rank=r, port=port) for r in (0, 1)]
    assert _wait(pair, 240) == [0, 0], _log(tmp_path)
    one = json.loads((tmp_path / "single" / "results.json").read_text())
    two = json.loads((tmp_path / "multi" / "results.json").read_text())
    assert [g["mesh"] for g in two["groups"]] == [g["mesh"] for g in one["groups"]]
    assert len(one["members"]) == 6 and one["recommended"] == two["recommended"]
    for a, b in zip(one["members"], two["members"]):
        assert a["config"] == b["config"]
        for split in ("val", "test"):
            for k, v in a[split].items():
                assert b[split][k] == pytest.approx(v, abs=1e-5), (a["config"], split, k)
        assert b["curves"]["train_loss"] == pytest.approx(a["curves"]["train_loss"], abs=1e-5)


@pytest.mark.slow
def test_a_dead_peer_fails_the_survivor_instead_of_hanging(tmp_path):
    port = _free_port()
    pair = [_launch(tmp_path, tmp_path / "dead", epochs=100000, devices=4, rank=r, port=port, heartbeat=10)
            for r in (0, 1)]
    log1 = tmp_path / "log-dead-1.txt"
    deadline = time.monotonic() + 120
    while "process 1/2" not in log1.read_text() and time.monotonic() < deadline:
        assert pair[1].poll() is None, _log(tmp_path)
        time.sleep(0.5)
    time.sleep(3)  # let the sweep start its collectives
    os.killpg(pair[1].pid, signal.SIGKILL)
    start = time.monotonic()
    codes = _wait(pair[:1], 120)
    assert codes[0] != 0, _log(tmp_path)
    assert time.monotonic() - start < 110


def _image_folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, color in {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}.items():
        (root / name).mkdir(parents=True)
        for i in range(9):
            pixels = np.clip(np.asarray(color) + rng.normal(0, 25, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.jpg")
    return root


@pytest.mark.slow
def test_two_process_main_job_equals_one_process(tmp_path):
    """The whole `jaxheads sweep` (feature pass split between the hosts through a shared cache, then the sweep)."""
    images = _image_folder(tmp_path / "images")
    flags = ["--dataset", str(images), "--backbone", "efficientnet_lite0", "--pooling", "avg", "--widths", "8,16",
             "--conv", "none", "--norm", "none", "--folds", "none", "--design", "grid",
             "--depths", "1", "--dropouts", "0", "--epochs", "3", "--seeds", "1", "--batch-size", "6",
             "--feature-batch-size", "4"]

    def launch(out: str, devices: int, rank: int | None = None, port: int = 0) -> subprocess.Popen:
        env = _env(devices)
        env["JAXHEADS_CACHE"] = str(tmp_path / "cache")  # converted weights shared; features per run below
        cmd = [sys.executable, "-m", "jaxheads.cli", "sweep", *flags, "--out", str(tmp_path / out),
               "--cache-dir", str(tmp_path / f"features-{out}")]
        if rank is not None:
            cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(rank)]
        log = open(tmp_path / f"log-{out}-{rank}.txt", "w")
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                start_new_session=True)

    assert _wait([launch("single", 8)], 300) == [0], _log(tmp_path)
    port = _free_port()
    assert _wait([launch("multi", 4, r, port) for r in (0, 1)], 300) == [0, 0], _log(tmp_path)
    import numpy as np

    # One cache of every split's images: the same shards in both runs, all complete (meta.json).
    shards = {run: sorted((tmp_path / f"features-{run}").glob("*/shards/*.pooled.npy")) for run in ("single", "multi")}
    assert shards["single"] and [p.name for p in shards["single"]] == [p.name for p in shards["multi"]]
    assert all(len(list((tmp_path / f"features-{run}").glob("*/meta.json"))) == 1 for run in shards)
    for a, b in zip(shards["single"], shards["multi"], strict=True):
        np.testing.assert_allclose(np.load(a).astype(np.float32), np.load(b).astype(np.float32), atol=1e-5, rtol=0)
    one = json.loads((tmp_path / "single" / "results.json").read_text())
    two = json.loads((tmp_path / "multi" / "results.json").read_text())
    for a, b in zip(one["members"], two["members"], strict=True):
        assert b["val"]["accuracy"] == pytest.approx(a["val"]["accuracy"], abs=1e-5)
        assert b["curves"]["train_loss"] == pytest.approx(a["curves"]["train_loss"], abs=1e-4)
    assert not (tmp_path / "multi" / "head").exists() or (tmp_path / "multi" / "results.json").exists()
