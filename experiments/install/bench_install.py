"""Benchmark: what the README's command 1 installs, before and after TensorFlow left the core (issue 27, item 1).

For each variant (a commit of this repository, optionally with extras) it clones the commit into the work folder,
makes a fresh venv there and runs command 1's install, ``pip install -e .`` (``.[EXTRAS]`` for a variant with
extras), then records:
  - the install's wall time (pip's cache as this machine has it: wheels come from local indexes, so it is warm),
    in ``--rounds`` rounds, each a fresh clone and venv, the variants' order reversed every other round (the page
    cache and a shared machine's load favour one position or another); ``install_s`` is the median;
  - site-packages' size (``du -sm``) and the package count (``pip list``; ``pip list | wc -l`` is that plus 2);
  - the largest distributions, and what each core requirement of jaxheads brings alone: the summed file sizes of
    the distributions that only it pulls in (its exclusive dependency closure, from the installed metadata);
  - ``python -c "import jaxheads"`` and ``jaxheads sweep --help``: the first run (writes jaxheads' .pyc files), then
    the median and minimum of ``--repeats`` runs, the variants alternated run by run so a shared machine's load hits
    them alike.
Prints a table and writes JSON. Only the standard library is needed (each venv's own pip answers for its packages).

    python experiments/install/bench_install.py --variant before=f332eae~1 --variant after=94451e4 \\
        --variant "after[tfrecord]=94451e4:tfrecord" --out experiments/results/bench_install.json

f332eae moved TensorFlow out of the core; 94451e4 added flatbuffers, which jax.export needs and TensorFlow had
brought (safetensors joined the core in between, for timm weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# Runs inside a variant's venv: every distribution's size (summed RECORD file sizes) and its requirements, each as
# [name, extras it asks for, the extra of ours it belongs to ("" for none)], plus jaxheads' own core requirements.
# pip's vendored packaging evaluates the markers.
_METADATA_SCRIPT = r"""
import json, os, re
from importlib import metadata
from pip._vendor.packaging.requirements import Requirement

def canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def reqs(dist):
    out = []
    for text in dist.requires or ():
        req = Requirement(text)
        extras = [e for e in [""] + list(dist.metadata.get_all("Provides-Extra") or [])
                  if req.marker is None or req.marker.evaluate({"extra": e})]
        if extras:
            out.append([canon(req.name), sorted(req.extras), "" if "" in extras else extras[0]])
    return out

dists = {}
for dist in metadata.distributions():
    size = 0
    for f in dist.files or ():
        try:
            size += os.path.getsize(f.locate())
        except OSError:
            pass
    dists[canon(dist.metadata["Name"])] = {"bytes": size, "requires": reqs(dist)}
core = [r[0] for r in reqs(metadata.distribution("jaxheads")) if r[2] == ""]
print(json.dumps({"dists": dists, "core": core}))
"""


def run(cmd: list[str], cwd: Path | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, check=True, text=True, capture_output=True, **kwargs)


def clean_env() -> dict[str, str]:
    """This process's environment without an activated venv or a PYTHONPATH that could leak into the variants."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(os.environ.get("VIRTUAL_ENV", "\0")))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def parse_variant(text: str) -> tuple[str, str, str]:
    """``LABEL=REV[:EXTRAS]`` -> (label, rev, extras)."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise SystemExit(f"--variant {text!r}: expected LABEL=REV or LABEL=REV:EXTRAS (e.g. after=HEAD:tfrecord)")
    rev, _, extras = rest.partition(":")
    return label, rev, extras


def closure(roots: set[str], dists: dict[str, Any]) -> set[str]:
    """The installed distributions ``roots`` pull in, following each requirement's own extras (``etils[epath]``)."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(r, ()) for r in roots if r in dists]
    while todo:
        name, extras = todo.pop()
        if (name, extras) not in seen:
            seen.add((name, extras))
            todo += [(r, tuple(asked)) for r, asked, extra in dists[name]["requires"]
                     if r in dists and (extra == "" or extra in extras)]
    return {name for name, _ in seen}


def brings_alone(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For each core requirement: the distributions only it pulls in, and their size."""
    dists, core = meta["dists"], set(meta["core"])
    out = {}
    for req in sorted(core):
        only = closure({req}, dists) - closure(core - {req}, dists)
        out[req] = {"mb": round(sum(dists[d]["bytes"] for d in only) / 2**20, 1), "packages": sorted(only)}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["mb"]))


def build(label: str, rev: str, extras: str, work: Path, env: dict[str, str], reuse: bool) -> dict[str, Any]:
    """Clone ``rev``, make a fresh venv, time command 1's install, and size what it installed (``reuse``: size and
    time the venv a former run left, with no install time)."""
    tree = work / label.replace("[", "-").replace("]", "")
    commit = run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT).stdout.strip()
    bin_dir = tree / ".venv" / "bin"
    target = f".[{extras}]" if extras else "."
    install_s = None
    if not (reuse and (bin_dir / "jaxheads").is_file()):
        shutil.rmtree(tree, ignore_errors=True)
        run(["git", "clone", "-q", str(ROOT), str(tree)])
        run(["git", "checkout", "-q", "--detach", commit], cwd=tree)
        run([sys.executable, "-m", "venv", str(tree / ".venv")], env=env)
        t0 = time.perf_counter()
        run([str(bin_dir / "pip"), "install", "-q", "-e", target], cwd=tree, env=env)
        install_s = round(time.perf_counter() - t0, 1)
    purelib = run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  env=env).stdout.strip()
    size_mb = int(run(["du", "-sm", purelib]).stdout.split()[0])
    packages = json.loads(run([str(bin_dir / "pip"), "list", "--format=json"], env=env).stdout)
    meta = json.loads(run([str(bin_dir / "python"), "-c", _METADATA_SCRIPT], env=env).stdout)
    largest = sorted(meta["dists"].items(), key=lambda kv: -kv[1]["bytes"])[:10]
    return {
        "label": label, "rev": rev, "commit": commit, "install": f"pip install -e {target}" if extras else
        "pip install -e .", "install_s": install_s, "site_packages_mb": size_mb,
        "packages": len(packages), "pip_list_wc_l": len(packages) + 2,
        "largest_mb": {name: round(d["bytes"] / 2**20, 1) for name, d in largest},
        "core_requirement_brings_alone": brings_alone(meta),
        "has_tensorflow": bool({"tensorflow", "tensorflow-cpu"} & set(meta["dists"])),
        "_bin": str(bin_dir), "_tree": str(tree),
    }


def timed(cmd: list[str], cwd: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    run(cmd, cwd=Path(cwd), env=env)
    return time.perf_counter() - t0


def time_startup(variants: list[dict[str, Any]], repeats: int, env: dict[str, str]) -> None:
    """First run, then ``repeats`` runs alternated across variants, of the import and of ``sweep --help``."""
    commands = {
        "import_jaxheads": lambda b: [f"{b}/python", "-c", "import jaxheads"],
        "sweep_help": lambda b: [f"{b}/jaxheads", "sweep", "--help"],
    }
    samples: dict[tuple[str, str], list[float]] = {}
    for v in variants:
        for key, cmd in commands.items():
            v[f"{key}_first_s"] = round(timed(cmd(v["_bin"]), v["_tree"], env), 2)
    for _ in range(repeats):
        for v in variants:
            for key, cmd in commands.items():
                samples.setdefault((v["label"], key), []).append(timed(cmd(v["_bin"]), v["_tree"], env))
    for v in variants:
        for key in commands:
            s = samples[(v["label"], key)]
            v[f"{key}_median_s"], v[f"{key}_min_s"] = round(statistics.median(s), 2), round(min(s), 2)


def table(variants: list[dict[str, Any]]) -> str:
    head = (f"{'variant':18} {'commit':8} {'install s':>9} {'site-pkgs MB':>12} {'packages':>8} "
            f"{'import s (1st/med)':>18} {'sweep --help s (1st/med)':>24}")
    rows = [head]
    for v in variants:
        install = "-" if v["install_s"] is None else f"{v['install_s']:.1f}"  # median of the rounds
        rows.append(
            f"{v['label']:18} {v['commit'][:8]:8} {install:>9} {v['site_packages_mb']:12d} "
            f"{v['packages']:8d} {v['import_jaxheads_first_s']:8.2f} / {v['import_jaxheads_median_s']:<7.2f} "
            f"{v['sweep_help_first_s']:12.2f} / {v['sweep_help_median_s']:<7.2f}")
    for v in variants:
        top = ", ".join(f"{k} {m['mb']:.0f}" for k, m in list(v["core_requirement_brings_alone"].items())[:6])
        rows.append(f"{v['label']}: core requirements by what they bring alone (MB): {top}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=None,
                        help="LABEL=REV[:EXTRAS], repeatable (default: before=f332eae~1 after=94451e4, see "
                             "the docstring)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/jaxheads-bench-install"),
                        help="where the clones and venvs go (each variant's folder is replaced)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="installs of each variant (fresh clone and venv)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse each variant's venv from a former run (sizes and start-up times only)")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_install.json"))
    args = parser.parse_args()
    if args.repeats < 1 or args.rounds < 1:
        raise SystemExit(f"--repeats {args.repeats} --rounds {args.rounds}: expected at least 1 each")
    specs = [parse_variant(v) for v in (args.variant or ["before=f332eae~1", "after=94451e4"])]
    env = clean_env()
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    built: dict[str, dict[str, Any]] = {}
    installs: dict[str, list[float]] = {}
    for r in range(1 if args.reuse else args.rounds):
        for label, rev, extras in specs if r % 2 == 0 else specs[::-1]:
            print(f"round {r + 1}: building {label} ({rev}{' with ' + extras if extras else ''}) ...", flush=True)
            built[label] = build(label, rev, extras, args.work, env, args.reuse)
            installs.setdefault(label, []).append(built[label]["install_s"])
    variants = [built[label] for label, _, _ in specs]
    for v in variants:
        times = [t for t in installs[v["label"]] if t is not None]
        v["install_rounds_s"], v["install_s"] = times, round(statistics.median(times), 1) if times else None
    time_startup(variants, args.repeats, env)
    print(table(variants))
    out = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "pip_source": "local wheel indexes (the machine's pip config): a warm cache; nothing is downloaded",
        "repeats": args.repeats, "rounds": args.rounds,
        "variants": [{k: v for k, v in var.items() if not k.startswith("_")} for var in variants],
        "command": "python experiments/install/bench_install.py " + " ".join(f"--variant '{v}'" for v in
                                                                      (args.variant or [])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
