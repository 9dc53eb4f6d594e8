"""Benchmark: the main job (``jaxheads sweep`` on ELPV) run under several split seeds and designs, its verdicts side
by side: do the three data splits give opposite verdicts on any question (issue 26), and what does each design
cost and give (the question intervals' mean half-width, verdicts called, the recommended head and its test
figure, wall time)?

Each run is ``jaxheads sweep --seed S [design flags] --out DIR``, one after another, at low priority (the box is
shared); a run already finished in DIR (its results.json) is read, not run again.

    python experiments/stats/bench_main_job.py --seeds 1,2,3                      # the default design
    python experiments/stats/bench_main_job.py --seeds 0 --variant "K=5:" --variant "R=3 x K=2:--folds 2 --repeats 3"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def run_one(seed: int, flags: str, out: Path, nice: int) -> dict:
    """Run (or read) one main job; returns its summary."""
    results = out / "results.json"
    wall = None
    if not results.exists():
        cmd = ["nice", "-n", str(nice), sys.executable, "-m", "jaxheads.cli", "sweep", "--seed", str(seed),
               *shlex.split(flags), "--out", str(out)]
        print("$", " ".join(cmd), flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        wall = time.perf_counter() - t
    return summarise(json.loads(results.read_text()), wall)


def summarise(doc: dict, wall: float | None) -> dict:
    sel = doc.get("selection") or {}
    questions = [{"title": q["title"], "diff": q["diff"], "low": q["low"], "high": q["high"], "verdict": q["verdict"]}
                 for q in doc.get("questions") or []]
    half = [(q["high"] - q["low"]) / 2 for q in questions]
    rec = next((r for r in doc["leaderboard"] if r["config"] == doc.get("recommended")), None)
    return {"wall_s": wall, "sweep_s": (doc.get("timings") or {}).get("total_s"), "members": len(doc["members"]),
            "questions": questions, "mean_half_width": float(np.mean(half)) if half else None,
            "called": sum(q["verdict"] != "within noise" for q in questions),
            "recommended": doc.get("recommended"), "recommended_params": rec and rec["params"],
            "recommended_val": rec and rec.get("val_interval"), "test": sel.get("test"),
            "method": sel.get("method"), "best_rule": sel.get("best_rule")}


def opposite(verdicts: list[str]) -> bool:
    """Whether two runs call the same question for opposite sides."""
    called = {v for v in verdicts if v != "within noise"}
    return len(called) > 1


def print_side_by_side(runs: dict[str, dict]) -> None:
    names = list(runs)
    titles = list(dict.fromkeys(q["title"] for r in runs.values() for q in r["questions"]))
    print(f"{'question':<34}" + "".join(f"{n[:26]:>28}" for n in names))
    for t in titles:
        cells = []
        for n in names:
            q = next((q for q in runs[n]["questions"] if q["title"] == t), None)
            cells.append("—" if q is None else f"{q['diff']:+.3f} [{q['low']:+.3f},{q['high']:+.3f}] "
                         f"{'=' if q['verdict'] == 'within noise' else '*'}")
        print(f"{t[:34]:<34}" + "".join(f"{c:>28}" for c in cells))
    for key in ("mean_half_width", "called", "recommended", "sweep_s"):
        values = [runs[n][key] for n in names]
        print(f"{key:<34}" + "".join(f"{round(v, 4) if isinstance(v, float) else v!s:>28}" for v in values))
    print(f"{'test (recommended)':<34}" + "".join(
        f"{(runs[n]['test'] or {}).get('estimate', float('nan')):>28.3f}" for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3", help="split seeds (jaxheads sweep --seed)")
    parser.add_argument("--variant", action="append", help="NAME:FLAGS, a design (default: the CLI's own)")
    parser.add_argument("--work", default="runs/bench_main_job")
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--out", default="experiments/results/bench_main_job.json")
    args = parser.parse_args()
    variants = dict(v.partition(":")[::2] for v in args.variant or ["default:"])
    start, load = time.perf_counter(), os.getloadavg()
    runs: dict[str, dict] = {}
    for name, flags in variants.items():
        for seed in (int(s) for s in args.seeds.split(",")):
            tag = f"{name} seed {seed}"
            out = ROOT / args.work / f"{name.replace(' ', '').replace('=', '')}-s{seed}"
            runs[tag] = {"seed": seed, "flags": flags, **run_one(seed, flags, out, args.nice)}
            write(args, runs, start, load)
    print_side_by_side(runs)
    seeds_of = {}
    for r in runs.values():
        seeds_of.setdefault(r["flags"], []).append(r)
    for flags, rs in seeds_of.items():
        bad = [q["title"] for q in rs[0]["questions"]
               if opposite([next((x["verdict"] for x in r["questions"] if x["title"] == q["title"]), "within noise")
                            for r in rs])]
        print(f"opposite verdicts across seeds ({flags or 'default'}): {bad or 'none'}")


def write(args: argparse.Namespace, runs: dict, start: float, load: tuple) -> None:
    out = {"runs": runs, "wall_s": time.perf_counter() - start, "platform": platform.platform(),
           "cpus": os.cpu_count(), "loadavg_start": load, "loadavg_end": os.getloadavg()}
    path = ROOT / args.out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
