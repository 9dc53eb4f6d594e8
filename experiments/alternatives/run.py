"""Run the whole benchmark and write ``results/bench-<size>.json`` and ``.md``.

    python -m experiments.alternatives.run            # default: a few minutes on 2 CPU cores
    python -m experiments.alternatives.run --full     # GPU size: the whole elpv train/val in the trial loop
    python -m experiments.alternatives.run --tiny     # seconds: random backbone, toy data (what the test runs)

Parts: 1 trial loop (Keras vs plain JAX vs jaxheads), 2 sweep efficiency vs matmul, 3 backbone forward Flax vs
Keras, 4 quality (recommended head vs logistic regression vs ridge). ``--parts 1,3`` runs a subset.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

from jaxheads import checkpoint  # noqa: E402
from experiments.alternatives import efficiency, forward, quality, report, trial_loop  # noqa: E402
from experiments.alternatives.backbone_pair import make_pair  # noqa: E402
from experiments.alternatives.config import SIZES, BenchSize  # noqa: E402
from experiments.alternatives.datasets import quality_dataset, trial_dataset  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PROJECT_IMAGES = 2099  # elpv's train + val (60% + 20% of 2,624): the trial loop at full size


def load_average() -> str:
    """``uptime``'s load averages (1, 5, 15 min)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> dict[str, Any]:
    import keras
    import tensorflow as tf

    return {"device": f"{jax.devices()[0].platform} {jax.devices()[0].device_kind}", "devices": jax.device_count(),
            "cpu_count": os.cpu_count(), "cpu_model": _cpu_model(), "platform": platform.platform(),
            "python": platform.python_version(),
            "jax": jax.__version__, "keras": keras.__version__, "tensorflow": tf.__version__,
            "load_before": load_average(), "uptime_before": _uptime()}


def _cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (on a shared machine, compare with the wall time)."""
    times = os.times()
    return times.user + times.system


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def projection(p1: dict[str, Any], p3: dict[str, Any], n_images: int) -> dict[str, Any]:
    """A / jaxheads at ``n_images`` train+val images, from the measured costs (a model, not a measurement).

    A, low: designs x epochs x n / Keras forward images/s (part 3): forward passes only, no per-trial start-up and
    no head training. A, high: the measured trial loop scaled by n / measured n (its per-trial start-up scaled too).
    jaxheads = its measured fixed costs (feature pass less its images at the Flax
    forward rate; the sweep less its train and eval time) + n / Flax forward images/s + the sweep's train and
    eval time scaled by n / measured n.
    """
    n_measured = p1["n_train"] + p1["n_val"]
    flax_rate, keras_rate = p3["flax_images_per_s"], p3["keras_images_per_s"]
    jh, phases = p1["jaxheads"], p1["jaxheads"]["sweep_breakdown"]
    keras_s = p1["designs"] * p1["epochs"] * n_images / keras_rate
    keras_scaled_s = p1["keras"]["wall_s"] * n_images / n_measured
    linear = phases["train_s"] + phases["eval_s"]
    fixed = max(0.0, jh["feature_s"] - n_measured / flax_rate) + jh["sweep_s"] - linear
    jaxheads_s = fixed + n_images / flax_rate + linear * n_images / n_measured
    return {"n_images": n_images, "keras_s_lower_bound": keras_s, "keras_s_scaled": keras_scaled_s,
            "jaxheads_s": jaxheads_s, "keras_over_jaxheads": keras_s / jaxheads_s,
            "keras_scaled_over_jaxheads": keras_scaled_s / jaxheads_s}


def run(size: BenchSize, parts: set[int], out_dir: Path, command: str, cache_dir: Path | None = None) -> dict:
    """Every requested part at ``size``; writes JSON + Markdown into ``out_dir`` and returns the results."""
    start = time.perf_counter()
    results: dict[str, Any] = {"size": size.name, "command": command, "git": _git_commit(),
                               "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                               "config": json.loads(json.dumps(dataclasses.asdict(size), default=str)),
                               "machine": machine(), "loads": {}}
    pair = make_pair(size)
    results["backbone"] = f"MobileNetV2 {size.image_size}px, {pair.weights}; Flax weights {pair.flax.weights_id}"
    cache = cache_dir or checkpoint.cache_dir() / "features"
    jobs = {
        1: ("trial_loop", lambda: trial_loop.run(pair, trial_dataset(size), size)),
        2: ("efficiency", lambda: efficiency.run(size)),
        3: ("forward", lambda: forward.run(pair, size)),
        4: ("quality", lambda: quality.run(pair, quality_dataset(size), size, cache)),
    }
    for number in sorted(parts):
        name, fn = jobs[number]
        results[name] = _part(name, results, fn)
        if {1, 3} <= parts and "trial_loop" in results and "forward" in results and size.dataset == "elpv":
            results["trial_loop"]["projection"] = projection(results["trial_loop"], results["forward"],
                                                             PROJECT_IMAGES)
        _finish(results, start)
        write(results, out_dir)  # after every part: a long run leaves its finished parts behind
    return results


def _finish(results: dict[str, Any], start: float) -> None:
    results["machine"]["load_after"] = load_average()
    results["machine"]["uptime_after"] = _uptime()
    results["total_s"] = time.perf_counter() - start


def _part(name: str, results: dict[str, Any], fn: Any) -> dict[str, Any]:
    """Run one part, recording the load average before and after it, its wall time and this process's CPU time."""
    before, cpu = load_average(), _cpu_seconds()
    print(f"[bench] {name} ... (load {before})", flush=True)
    t = time.perf_counter()
    out = fn()
    results["loads"][name] = {"before": before, "after": load_average(), "wall_s": time.perf_counter() - t,
                              "process_cpu_s": _cpu_seconds() - cpu}
    print(f"[bench] {name} done in {time.perf_counter() - t:.1f} s", flush=True)
    return out


def write(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{results['size']}"
    if results["machine"]["device"].split()[0] != "cpu":
        stem += "-" + results["machine"]["device"].split()[0]
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    checkpoint.write_json_atomic(json_path, results)
    md_path.write_text(report.markdown(results))
    return json_path, md_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--full", action="store_const", dest="size", const="full", help="GPU size")
    group.add_argument("--tiny", action="store_const", dest="size", const="tiny", help="smoke size (tests)")
    parser.add_argument("--parts", default="1,2,3,4", help="comma-separated subset of 1,2,3,4")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    size = SIZES[args.size or "default"]
    parts = {int(p) for p in args.parts.split(",")}
    command = "python -m experiments.alternatives.run " + " ".join(argv if argv is not None else sys.argv[1:])
    results = run(size, parts, args.out, command.strip())
    print(report.markdown(results))


if __name__ == "__main__":
    main()
