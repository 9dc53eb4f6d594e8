"""Benchmark: do the intervals cover the truth, call equal heads "within noise" and find real gains, for every
design the CLI can run and whichever noise source dominates?

Synthetic sweep outputs with a known population truth, scored as the sweep engine scores them, then compared by
each interval method. Deterministic (fixed seeds); figures in experiments/README.md and the JSON.

Generator. Features: C = 4 equiprobable classes in d = 8 dimensions, x = sep * e_y + N(0, I) (the class signal sits
in the first C dimensions; the other 4 are pure noise). A head is a fixed linear classifier on x~ = [x, 1]: logits =
x~ (W + D), W = [sep * I_C; alpha * P; 0], where P (4 x C) weighs the noise dimensions (larger alpha, more errors),
and D is the training noise of one trained model:

- seed noise: every model (each seed, and each fold and repeat under cross-validation) adds independent
  N(0, seed_sd^2) entries to W (initialisation and batch order);
- fold noise (cross-validation only): the model of each (repeat, fold) adds N(0, fold_sd^2) entries, half of the
  variance shared by the two heads (both train on the same rows). With a fixed split the training set is the same
  in every replicate, so its effect is part of W (the inference is conditional on it) and there is no fold noise.
  Fold noise is drawn independently per (repeat, fold): the overlap of real training sets (which no K-fold
  variance estimate can see, Bengio & Grandvalet 2004) is not modelled.

Heads: A has alpha_A = 1.2; "equal" is A with its noise map rotated (the same accuracy, errors on other
examples); "+m" is calibrated by bisection to beat A by about m in true accuracy.

Truth: a head's population accuracy averaged over its training noise, a Monte Carlo mean over 2,000,000 examples
each with its own noise draw (x~ D has the law N(0, sigma^2 |x~|^2 I_C)); for "equal" the truth is 0 exactly.

Designs: a fixed split (N = 525) with 1, 2 and 5 seeds; K = 5 cross-validation of N = 2100 with one seed (the main
job's design); R = 3 repeats of K = 5 (R x K = 15 models per config); R = 2 x K = 3 and R = 3 x K = 2 (about the
main job's member budget, candidates for its default). Fold noise has the same size whatever K: the generator
does not model that a model trained on fewer rows (K = 2: half the pooled rows) is worse and noisier. Regimes:
example noise dominant (seed_sd = fold_sd = 0.04), fold noise dominant (fold_sd = 0.36), seed noise dominant
(seed_sd = 0.36).

Methods on the same replicates: "today", the library's two-level bootstrap (:func:`jaxheads.stats.make_draws`:
folds, then examples within them, and seeds); "corrected", :mod:`jaxheads.intervals` (examples resampled once, the
models' own variance by the method of moments, t-widened on few models), and its variant "corrected,
Satterthwaite" whose degrees of freedom count only the models' excess variance as uncertain; under
cross-validation also "NB t" (Nadeau & Bengio 2003's corrected resampled t on the J per-model differences:
variance (1/J + 1/(K - 1)) s^2, t_{J-1}) and "CLT" (Bayle et al. 2020: normal, the within-fold variance of the per-example differences / N). With
repeats "today" treats the R partitions' passes as seeds of the first partition's folds.

Reported per design, regime and method: the fraction "within noise" for equal heads (target >= 93%), coverage of
the true difference for every case (target 93-97%), power (the fraction "b better") at +0.03 and +0.05, the mean
interval width, and the binomial standard error of each fraction.

    python experiments/stats/bench_coverage.py [--replicates 200] [--out experiments/results/bench_coverage.json]

The table adds each cross-validated design's training compute per config relative to K = 5 (models x the share of
rows each trains on) and its width scaled to K = 5's compute (width x sqrt(compute)): the narrowest intervals per
minute are the smallest of those among the designs that cover nominally.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
from scipy import stats as scipy_stats

from jaxheads import intervals, stats

CLASSES, NOISE_DIMS = 4, 4
DIM = CLASSES + NOISE_DIMS
MARGINS = (0.03, 0.05)
N_BOOT = 1000  # draws per interval here: coverage barely moves with B, the benchmark's time does


@dataclass(frozen=True)
class Problem:
    separation: float = 2.0  # class mean offset along its own axis
    alpha_a: float = 1.2  # head A's weight on the noise dimensions
    fold_shared: float = 0.5  # fraction of the fold noise variance shared by the two heads
    truth_examples: int = 2_000_000


@dataclass(frozen=True)
class Design:
    name: str
    examples: int
    seeds: int
    folds: int
    repeats: int = 1


@dataclass(frozen=True)
class Regime:
    name: str
    seed_sd: float  # sd of each weight entry's seed noise
    fold_sd: float  # sd of each weight entry's fold (training set) noise, cross-validation only


DESIGNS = (
    Design("split S=1", 525, 1, 1),
    Design("split S=2", 525, 2, 1),
    Design("split S=5", 525, 5, 1),
    Design("K=5", 2100, 1, 5),
    Design("R=3 x K=5", 2100, 1, 5, repeats=3),
    # The main job's member budget (R x K about today's K = 5), candidates for the default design:
    Design("R=2 x K=3", 2100, 1, 3, repeats=2),
    Design("R=3 x K=2", 2100, 1, 2, repeats=3),
)
REGIMES = (Regime("example", 0.04, 0.04), Regime("fold", 0.04, 0.36), Regime("seed", 0.36, 0.04))


def head_weights(problem: Problem, noise_map: np.ndarray, alpha: float) -> np.ndarray:
    """(DIM + 1, C): the class signal on the first C dims, ``alpha * noise_map`` on the noise dims, zero bias."""
    w = np.zeros((DIM + 1, CLASSES))
    w[:CLASSES] = problem.separation * np.eye(CLASSES)
    w[CLASSES:DIM] = alpha * noise_map
    return w


def sample(problem: Problem, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n examples: (n, DIM + 1) features with a trailing 1 (the bias input), (n,) labels."""
    y = rng.integers(0, CLASSES, n)
    x = rng.normal(size=(n, DIM))
    x[np.arange(n), y] += problem.separation
    return np.concatenate([x, np.ones((n, 1))], axis=1), y


def correct_with_noise(x: np.ndarray, y: np.ndarray, w: np.ndarray, sd: float, z: np.ndarray) -> np.ndarray:
    """Whether each example is classified right by its own noisy head W + D, D ~ i.i.d. N(0, sd^2); x D is drawn
    as sd * |x| * z with z ~ N(0, I_C) (the same law)."""
    logits = x @ w + sd * np.linalg.norm(x, axis=1, keepdims=True) * z
    return np.argmax(logits, axis=1) == y


def true_accuracies(problem: Problem, heads: list[np.ndarray], sd: float, n: int, seed: int) -> np.ndarray:
    """(len(heads), n) per-example correctness on n population examples shared by all heads (independent noise)."""
    rng = np.random.default_rng(seed)
    x, y = sample(problem, n, rng)
    return np.stack([correct_with_noise(x, y, w, sd, rng.normal(size=(n, CLASSES))) for w in heads])


def calibrate_alpha(problem: Problem, noise_map: np.ndarray, sd: float, target: float, seed: int) -> float:
    """The alpha at which a head is ``target`` more accurate than A, by bisection on 200,000 shared examples."""
    rng = np.random.default_rng(seed)
    x, y = sample(problem, 200_000, rng)
    z = rng.normal(size=(2, len(y), CLASSES))
    base = correct_with_noise(x, y, head_weights(problem, noise_map, problem.alpha_a), sd, z[0]).mean()
    low, high = 0.0, problem.alpha_a
    for _ in range(30):
        mid = (low + high) / 2
        gain = correct_with_noise(x, y, head_weights(problem, noise_map, mid), sd, z[1]).mean() - base
        low, high = (mid, high) if gain > target else (low, mid)
    return (low + high) / 2


def replica_sd(problem: Problem, w: np.ndarray, sd: float, seed: int, replicas: int = 200) -> float:
    """The sd over replicas (W + D, D ~ N(0, sd^2)) of the population accuracy, on 20,000 shared examples."""
    rng = np.random.default_rng(seed)
    x, y = sample(problem, 20_000, rng)
    accs = [np.mean(np.argmax(x @ (w + sd * rng.normal(size=w.shape)), 1) == y) for _ in range(replicas)]
    return float(np.std(accs, ddof=1))




def replica_scores(problem: Problem, design: Design, regime: Regime, x: np.ndarray, partitions: np.ndarray,
                   heads: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """(R * S, N, C) logits of every head: in pass r * S + s the model of (repeat r, fold k, seed s) scores fold k
    of partition r."""
    passes = design.repeats * design.seeds
    out = {name: np.zeros((passes, len(x), CLASSES)) for name in heads}
    for r, folds in enumerate(partitions):
        for k in range(design.folds):
            rows = folds == k
            shared = rng.normal(size=(DIM + 1, CLASSES))  # the training rows' effect common to both heads
            for name, w in heads.items():
                fold = 0.0
                if design.folds > 1:
                    own = rng.normal(size=w.shape)
                    fold = regime.fold_sd * (np.sqrt(problem.fold_shared) * shared
                                             + np.sqrt(1 - problem.fold_shared) * own)
                for s in range(design.seeds):
                    noise = regime.seed_sd * rng.normal(size=w.shape)
                    out[name][r * design.seeds + s, rows] = x[rows] @ (w + fold + noise)
    return out


def nb_t(diff: intervals.Evidence, folds: int, level: float) -> tuple[float, float]:
    """Nadeau & Bengio's corrected resampled t interval on the per-model differences."""
    j = len(diff.cells)
    var = (1.0 / j + 1.0 / (folds - 1)) * float(np.var(diff.cells, ddof=1))
    half = float(scipy_stats.t.ppf((1 + level) / 2, j - 1)) * np.sqrt(var)
    return diff.point - half, diff.point + half


def satterthwaite(diff: intervals.Evidence, layout: intervals.Layout, level: float) -> tuple[float, float]:
    """The corrected interval with degrees of freedom from tau^2 alone, (M - 1) * (V / tau^2)^2 (the variant
    "corrected, Satterthwaite": narrower, and optimistic when tau^2 is underestimated by chance)."""
    q_obs, q_ex, scale = intervals.cell_moments(diff)
    tau2 = max(0.0, q_obs - q_ex) * scale if np.isfinite(q_obs) else 0.0
    deviation = (diff.draws - diff.point) + np.sqrt(tau2) * layout.normal
    if tau2 > 0:
        v = float(np.nanvar(diff.draws)) + tau2
        dof = (len(diff.sizes) - 1) * (v / tau2) ** 2
        deviation = deviation * float(scipy_stats.t.ppf((1 + level) / 2, dof)) / NormalDist().inv_cdf((1 + level) / 2)
    return stats.percentile_interval(diff.point + deviation, level)


def clt(correct: dict[str, np.ndarray], case: str, folds: np.ndarray, level: float) -> tuple[float, float]:
    """Bayle et al.'s CLT interval: the per-example differences (mean over passes), their within-fold variance."""
    d = (correct[case] - correct["A"]).mean(axis=0)
    centred = d - np.bincount(folds, d)[folds] / np.bincount(folds)[folds]
    half = NormalDist().inv_cdf((1 + level) / 2) * np.sqrt(np.sum(centred**2) / (len(d) - folds.max() - 1) / len(d))
    return float(d.mean() - half), float(d.mean() + half)


def replicate(problem: Problem, design: Design, regime: Regime, heads: dict[str, np.ndarray], seed: int,
              rng: np.random.Generator) -> dict[str, dict[str, tuple[float, float]]]:
    """One replicate: {method: {case: (low, high)}} for every B head against A."""
    x, y = sample(problem, design.examples, rng)
    partitions = np.stack([rng.permutation(design.examples) % design.folds for _ in range(design.repeats)])
    scores = replica_scores(problem, design, regime, x, partitions, heads, rng)
    cases = [c for c in heads if c != "A"]
    draws = stats.make_draws(partitions[0], design.repeats * design.seeds, n_boot=N_BOOT, seed=seed)
    today = {n: stats.draw_values(s, y, "accuracy", "multiclass", draws) for n, s in scores.items()}
    layout = intervals.make_layout(partitions, design.seeds, n_boot=N_BOOT, seed=seed)
    evidence = {n: intervals.evidence(s, y, "accuracy", "multiclass", layout) for n, s in scores.items()}
    out: dict[str, dict[str, tuple[float, float]]] = {"today": {}, "corrected": {}}
    for case in cases:
        c = stats.comparison_from_values(0.0, 0.0, today["A"], today[case])
        out["today"][case] = (c.low, c.high)
        c = intervals.compare(evidence["A"], evidence[case], layout)
        out["corrected"][case] = (c.low, c.high)
    out["corrected, Satterthwaite"] = {c: satterthwaite(evidence["A"].combine(evidence[c], -1.0, 1.0), layout,
                                                        stats.LEVEL) for c in cases}
    if design.folds > 1:
        correct = {n: (s.argmax(-1) == y).astype(float) for n, s in scores.items()}
        out["NB t"] = {c: nb_t(evidence["A"].combine(evidence[c], -1.0, 1.0), design.folds, stats.LEVEL)
                       for c in cases}
        out["CLT"] = {c: clt(correct, c, partitions[0], stats.LEVEL) for c in cases}
    return out


def summarise(bounds: list[tuple[float, float]], truth: float) -> dict[str, float]:
    low, high = np.array(bounds).T
    n = len(low)
    frac = {"b_better": float(np.mean(low > 0)), "within_noise": float(np.mean((low <= 0) & (0 <= high))),
            "a_better": float(np.mean(high < 0)), "covers": float(np.mean((low <= truth) & (truth <= high)))}
    se = {f"{k}_se": float(np.sqrt(v * (1 - v) / n)) for k, v in frac.items()}
    return {**frac, **se, "mean_width": float(np.mean(high - low))}


def truths_for(problem: Problem, sd: float, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """The heads at a training-noise sd (B alphas calibrated to it) and their true accuracies and differences."""
    rng = np.random.default_rng(seed)
    noise_map = rng.normal(size=(NOISE_DIMS, CLASSES)) / np.sqrt(NOISE_DIMS)
    rotation, _ = np.linalg.qr(rng.normal(size=(NOISE_DIMS, NOISE_DIMS)))
    heads = {"A": head_weights(problem, noise_map, problem.alpha_a),
             "equal": head_weights(problem, rotation @ noise_map, problem.alpha_a)}
    for m in MARGINS:
        heads[f"+{m:.2f}"] = head_weights(problem, noise_map, calibrate_alpha(problem, noise_map, sd, m, seed + 1))
    correct = true_accuracies(problem, list(heads.values()), sd, problem.truth_examples, seed + 2)
    acc = dict(zip(heads, correct.mean(axis=1).tolist()))
    diff = {n: (0.0 if n == "equal" else acc[n] - acc["A"]) for n in heads}
    mc_se = {n: float(np.std(correct[i].astype(float) - correct[0], ddof=1) / np.sqrt(correct.shape[1]))
             for i, n in enumerate(heads)}
    return heads, {"true_accuracy": acc, "true_diff": diff, "true_diff_mc_se": mc_se, "training_noise_sd": sd}


def run_cell(problem: Problem, design: Design, regime: Regime, truth: tuple, replicates: int, seed: int) -> dict:
    heads, info = truth
    rng = np.random.default_rng(seed)
    bounds: dict[str, dict[str, list]] = {}
    for r in range(replicates):
        for method, cases in replicate(problem, design, regime, heads, seed * 100_003 + r, rng).items():
            for case, b in cases.items():
                bounds.setdefault(method, {}).setdefault(case, []).append(b)
    return {method: {case: summarise(b, info["true_diff"][case]) for case, b in cases.items()}
            for method, cases in bounds.items()}


def relative_compute(design: dict) -> float | None:
    """Training compute per config relative to K = 5 with one seed (the main job's today): models x the share of
    the pooled rows each trains on (an epoch's steps scale with its rows). None for a fixed split (its training
    rows are not part of this generator)."""
    k = design["folds"]
    if k < 2:
        return None
    return design.get("repeats", 1) * design["seeds"] * k * (k - 1) / k / (5 * 4 / 5)


def table_rows(results: list[dict]) -> list[dict]:
    """Per design, regime and method: within noise (equal), coverage per case, power, width, targets met, and the
    width at K = 5's compute (width x sqrt(relative compute): the narrowest per minute is the smallest)."""
    rows = []
    for res in results:
        compute = relative_compute(res["design"])
        for method, cases in res["figures"].items():
            cover = {c: f["covers"] for c, f in cases.items()}
            width = cases["equal"]["mean_width"]
            rows.append({"design": res["design"]["name"], "regime": res["regime"]["name"], "method": method,
                         "within_noise_equal": cases["equal"]["within_noise"], "coverage": cover,
                         "power": {c: f["b_better"] for c, f in cases.items() if c != "equal"},
                         "mean_width_equal": width, "relative_compute": compute,
                         "width_at_equal_compute": None if compute is None else width * float(np.sqrt(compute)),
                         "coverage_target_met": all(0.93 <= v <= 0.97 for v in cover.values()),
                         "within_noise_target_met": cases["equal"]["within_noise"] >= 0.93})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'design':<11} {'regime':<8} {'method':<10} {'within':>6} {'cover eq/.03/.05':>17} "
          f"{'power .03/.05':>13} {'width':>6} {'compute':>7} {'w@K=5':>6}")
    for r in rows:
        cover = "/".join(f"{v:.1%}"[:-1] for v in r["coverage"].values())
        power = "/".join(f"{v:.1%}"[:-1] for v in r["power"].values())
        compute = "" if r.get("relative_compute") is None else f"{r['relative_compute']:.2f}"
        equal = "" if r.get("width_at_equal_compute") is None else f"{r['width_at_equal_compute']:.3f}"
        print(f"{r['design']:<11} {r['regime']:<8} {r['method']:<10} {r['within_noise_equal']:>6.1%} {cover:>17} "
              f"{power:>13} {r['mean_width_equal']:>6.3f} {compute:>7} {equal:>6}")


def merge(paths: list[str], out: Path) -> None:
    """One result file from subset runs (``--designs``): their cells in DESIGNS x REGIMES order, each run's
    settings kept under "runs"."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    order = {(d.name, r.name): i for i, (d, r) in enumerate((d, r) for d in DESIGNS for r in REGIMES)}
    cell = lambda res: (res["design"]["name"], res["regime"]["name"])  # noqa: E731
    latest = {cell(res): res for run in runs for res in run["results"]}  # a later file's cell replaces an earlier's
    results = sorted(latest.values(), key=lambda res: order[cell(res)])
    replicates = {}
    for run in runs:  # per "design / regime": an earlier merge holds a dict of them, a subset run one number
        got = run["config"]["replicates"]
        for res in run["results"]:
            name = " / ".join(cell(res))
            replicates[name] = got.get(name, got.get(res["design"]["name"])) if isinstance(got, dict) else got
    merged = {"config": runs[0]["config"] | {"replicates": replicates},
              "table": table_rows(results), "results": results,
              "runs": [{k: v for k, v in run.items() if k not in ("table", "results")} | {"file": p}
                       for p, run in zip(paths, runs)]}
    out.write_text(json.dumps(merged, indent=1) + "\n")
    print(markdown_table(merged["table"]))


def training_sd(design: Design, regime: Regime) -> float:
    """The sd of a model's weight noise: seed noise, and fold noise under cross-validation."""
    return float(np.hypot(regime.seed_sd, regime.fold_sd if design.folds > 1 else 0.0))


def markdown_table(rows: list[dict]) -> str:
    """The table for experiments/README.md: one line per design, regime and method."""
    lines = ["| design | regime | method | within noise (equal) | coverage equal / +0.03 / +0.05 | power +0.03 / +0.05 "
             "| width (equal) | compute | width at K=5's compute |", "|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    fmt = lambda v, d: "" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['design']} | {r['regime']} | {r['method']} | {pct(r['within_noise_equal'])} | "
                     f"{' / '.join(map(pct, r['coverage'].values()))} | {' / '.join(map(pct, r['power'].values()))} | "
                     f"{r['mean_width_equal']:.3f} | {fmt(r.get('relative_compute'), 2)} | "
                     f"{fmt(r.get('width_at_equal_compute'), 3)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--designs", default=",".join(d.name for d in DESIGNS), help="comma-separated names")
    parser.add_argument("--regimes", default=",".join(r.name for r in REGIMES), help="comma-separated names")
    parser.add_argument("--out", default="experiments/results/bench_coverage.json")
    parser.add_argument("--merge", nargs="+", help="join the cells of these result files (subset runs) into --out")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, Path(args.out))
        return
    problem, chosen = Problem(), set(args.designs.split(","))
    start, load_start = time.perf_counter(), os.getloadavg()
    results, truths = [], {}
    all_sds = list(dict.fromkeys(training_sd(d, r) for d in DESIGNS for r in REGIMES))
    for i, design in ((i, d) for i, d in enumerate(DESIGNS) if d.name in chosen):  # seeds follow DESIGNS
        for j, regime in ((j, r) for j, r in enumerate(REGIMES) if r.name in args.regimes.split(",")):
            t0 = time.perf_counter()
            sd = training_sd(design, regime)
            if sd not in truths:  # seeded by the sd's place among all cells': a subset run repeats the full run
                truths[sd] = truths_for(problem, sd, seed=1000 + all_sds.index(sd))
            figures = run_cell(problem, design, regime, truths[sd], args.replicates, seed=10 * i + j + 1)
            results.append({"design": asdict(design), "regime": asdict(regime), "truth": truths[sd][1],
                            "figures": figures, "wall_s": time.perf_counter() - t0})
            print(f"{design.name} / {regime.name}: {time.perf_counter() - t0:.0f} s", flush=True)
            write(args, results, start, load_start)  # after every cell: a long run's finished cells are kept
    print_table(table_rows(results))


def write(args: argparse.Namespace, results: list[dict], start: float, load_start: tuple) -> None:
    out = {"config": {"problem": asdict(Problem()), "replicates": args.replicates, "n_boot": N_BOOT,
                      "level": stats.LEVEL, "cell_draws": intervals.CELL_DRAWS, "metric": "accuracy",
                      "classes": CLASSES, "dims": DIM, "margins": MARGINS},
           "wall_s": time.perf_counter() - start, "cpu_s": time.process_time(), "table": table_rows(results),
           "results": results, "platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start": load_start,
           "loadavg_end": os.getloadavg(), "numpy": np.__version__}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
