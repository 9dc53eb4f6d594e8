"""Compare two ``results.json`` of the same sweep: every member's metrics, curves and stopping, and the leaderboard.

    python experiments/tools/compare_runs.py runs/before/results.json runs/after/results.json

Prints each difference and the count; exit status 1 when any metric differs. Timings and group layouts are
reported but do not count (they legitimately differ between runs).
"""

from __future__ import annotations

import json
import sys

MEMBER_FIELDS = ("config", "val", "test", "curves", "best_epoch", "epochs_run", "stopped", "per_class", "thresholds",
                 "params")
RESULT_FIELDS = ("leaderboard", "recommended", "ridge", "metric", "feature_shapes")


def differences(a: dict, b: dict) -> list[str]:
    """Lines naming every member field and top-level field that differs."""
    out = [f"members: {len(a['members'])} vs {len(b['members'])}"] if len(a["members"]) != len(b["members"]) else []
    for ma, mb in zip(a["members"], b["members"]):
        out += [f"member {ma['member']} {k}" for k in MEMBER_FIELDS if ma.get(k) != mb.get(k)]
    return out + [f"top-level {k}" for k in RESULT_FIELDS if a.get(k) != b.get(k)]


def main(argv: list[str]) -> int:
    a, b = (json.loads(open(path).read()) for path in argv[:2])
    diffs = differences(a, b)
    for line in diffs:
        print(line)
    for ga, gb in zip(a.get("groups", []), b.get("groups", [])):
        for k in sorted(set(ga) - {"timings"}):
            if ga.get(k) != gb.get(k):
                print(f"(layout, not counted) group {ga['group']} {k}: {ga.get(k)} vs {gb.get(k)}")
    print(f"{len(a['members'])} members; {len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
