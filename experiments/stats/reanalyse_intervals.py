"""Re-analyse a finished cross-validated sweep (its results.json and predictions.npz) with the two-level bootstrap
(:mod:`jaxheads.stats`, the sweep's verdicts before issue 26) and with the moment-corrected interval
(:mod:`jaxheads.intervals`, the sweep's verdicts now): every question's interval under both, the mean half-width,
the verdicts called and the recommended head ("vs best" re-chosen in every draw, :mod:`jaxheads.winners`, under
both). No training: both read the same per-example predictions.

    python experiments/stats/reanalyse_intervals.py runs/latest [--out experiments/results/reanalyse_intervals.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jaxheads import stats
from jaxheads.sweep import SweepSpec, verdicts
from jaxheads.sweep.result import SweepResult
from jaxheads.sweep.scores import config_scores


def load(run: Path) -> SweepResult:
    j = json.loads((run / "results.json").read_text())
    fields = ("task", "num_classes", "metric", "members", "leaderboard", "recommended", "ridge", "groups", "timings",
              "feature_shapes", "label_names")
    return SweepResult(**{k: j.get(k) for k in fields}, sweep=SweepSpec.from_dict(j["sweep"]),
                       predictions=dict(np.load(run / "predictions.npz")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/reanalyse_intervals.json"))
    args = parser.parse_args()
    result = load(args.run)
    now = verdicts.analyse(result)  # the corrected interval
    per_config = config_scores(result)
    scores = {c: cs.val for c, cs in per_config.items()}
    partitions = np.atleast_2d(result.predictions["val_fold"])
    passes = next(iter(scores.values())).shape[0]
    labels = result.predictions["val_labels"]
    draws = stats.make_draws(partitions[0], passes)  # the bootstrap: folds, then examples, and passes as seeds
    evidence = verdicts._Evidence(scores, labels, result.metric, result.task, draws)
    configs = {c: {k: v for k, v in result.members[cs.members[0]]["spec"].items() if k not in ("seed", "fold")}
               for c, cs in per_config.items()}
    rows = [{"title": b["title"], "diff": b["diff"], "bootstrap": [a["low"], a["high"]],
             "corrected": [b["low"], b["high"]], "bootstrap_verdict": a["verdict"], "corrected_verdict": b["verdict"]}
            for a, b in zip(verdicts.answer_questions(configs, evidence, result.metric), now.questions)]
    board = now.leaderboard
    vs_best = evidence.versus_best([r["config"] for r in board])
    bootstrap_recommended = board[stats.smallest_within_noise(vs_best, [r["params"] for r in board])]["config"]
    half = {m: float(np.mean([(r[m][1] - r[m][0]) / 2 for r in rows])) for m in ("bootstrap", "corrected")}
    called = {m: sum(r[f"{m}_verdict"] != "within noise" for r in rows) for m in ("bootstrap", "corrected")}
    for r in rows:
        print(f"{r['title']:<44} {r['diff']:+.3f}  [{r['bootstrap'][0]:+.3f}, {r['bootstrap'][1]:+.3f}] "
              f"{r['bootstrap_verdict']:<15} [{r['corrected'][0]:+.3f}, {r['corrected'][1]:+.3f}] "
              f"{r['corrected_verdict']}")
    print(f"mean half-width {half['bootstrap']:.4f} -> {half['corrected']:.4f}; verdicts called {called['bootstrap']} "
          f"-> {called['corrected']}; recommended {bootstrap_recommended} -> {now.recommended}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "questions": rows, "mean_half_width": half,
                                    "called": called, "recommended": {"bootstrap": bootstrap_recommended,
                                                                      "corrected": now.recommended}},
                                   indent=1) + "\n")


if __name__ == "__main__":
    main()
