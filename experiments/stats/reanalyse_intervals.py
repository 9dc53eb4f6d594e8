"""Re-analyse a finished sweep (its results.json and predictions.npz) with the sweep's bootstrap and with the
moment-corrected interval (:mod:`jaxheads.intervals`): every question's interval under both, the mean half-width,
the verdicts called and the recommended head. No training: both read the same per-example predictions.

    python experiments/stats/reanalyse_intervals.py runs/latest [--out experiments/results/reanalyse_intervals.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxheads import intervals, stats
from jaxheads.sweep import SweepSpec, verdicts
from jaxheads.sweep.result import SweepResult
from jaxheads.sweep.scores import config_scores


class Corrected:
    """The evidence interface of :mod:`jaxheads.sweep.verdicts` (interval, compare) on the corrected interval."""

    def __init__(self, scores: Mapping[str, np.ndarray], labels: np.ndarray, metric: str, task: str,
                 layout: intervals.Layout):
        self.layout = layout
        self.of = {c: intervals.evidence(s, labels, metric, task, layout) for c, s in scores.items()}

    def interval(self, config: str) -> stats.Interval:
        return intervals.interval(self.of[config], self.layout)

    def compare(self, a: Sequence[str], b: Sequence[str]) -> stats.Comparison:
        side = lambda configs: intervals.mean_of([self.of[c] for c in configs])  # noqa: E731
        return intervals.compare(side(a), side(b), self.layout)


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
    today = verdicts.analyse(result)
    per_config = config_scores(result)
    scores = {c: cs.val for c, cs in per_config.items()}
    partitions = np.atleast_2d(result.predictions["val_fold"])
    layout = intervals.make_layout(partitions, next(iter(scores.values())).shape[0] // len(partitions))
    evidence = Corrected(scores, result.predictions["val_labels"], result.metric, result.task, layout)
    configs = {c: {k: v for k, v in result.members[cs.members[0]]["spec"].items() if k not in ("seed", "fold")}
               for c, cs in per_config.items()}
    rows = [{"title": a["title"], "diff": a["diff"], "bootstrap": [a["low"], a["high"]],
             "corrected": [b["low"], b["high"]], "bootstrap_verdict": a["verdict"], "corrected_verdict": b["verdict"]}
            for a, b in zip(today.questions, verdicts.answer_questions(configs, evidence, result.metric))]
    board = today.leaderboard
    vs_best = [evidence.compare([board[0]["config"]], [r["config"]]) for r in board]
    recommended = board[stats.smallest_within_noise(vs_best, [r["params"] for r in board])]["config"]
    half = {m: float(np.mean([(r[m][1] - r[m][0]) / 2 for r in rows])) for m in ("bootstrap", "corrected")}
    called = {m: sum(r[f"{m}_verdict"] != "within noise" for r in rows) for m in ("bootstrap", "corrected")}
    for r in rows:
        print(f"{r['title']:<44} {r['diff']:+.3f}  [{r['bootstrap'][0]:+.3f}, {r['bootstrap'][1]:+.3f}] "
              f"{r['bootstrap_verdict']:<15} [{r['corrected'][0]:+.3f}, {r['corrected'][1]:+.3f}] "
              f"{r['corrected_verdict']}")
    print(f"mean half-width {half['bootstrap']:.4f} -> {half['corrected']:.4f}; verdicts called {called['bootstrap']} "
          f"-> {called['corrected']}; recommended {today.recommended} -> {recommended}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "questions": rows, "mean_half_width": half,
                                    "called": called, "recommended": {"bootstrap": today.recommended,
                                                                      "corrected": recommended}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
