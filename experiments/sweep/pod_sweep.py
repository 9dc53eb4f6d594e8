"""The job a user submits to a TPU/GPU pod (or several CPU hosts): every host runs this same script.

On a TPU pod or a SLURM/Open MPI GPU cluster, `jax.distributed.initialize()` finds the coordinator itself::

    # every host of the job (e.g. `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...` or `srun`):
    python experiments/sweep/pod_sweep.py --dataset tfds:oxford_iiit_pet --data-dir gs://.../tfds \
        --backbone efficientnet_lite0 --out runs/pets

By hand (CPU hosts, or tests), name the coordinator and each process::

    python experiments/sweep/pod_sweep.py --coordinator host0:1234 --num-processes 2 --process-id 0 ...
    python experiments/sweep/pod_sweep.py --coordinator host0:1234 --num-processes 2 --process-id 1 ...

``--synthetic N`` replaces the dataset and backbone by N seeded Gaussian-blob feature vectors (no images, no
backbone): the fast way to check a cluster's set-up, and what the multi-process test runs. Only process 0 writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def synthetic_splits(n: int, dim: int = 24, classes: int = 3, seed: int = 0):
    """Seeded blobs, split 60/20/20: every process builds the same arrays."""
    import numpy as np

    from jaxheads.features.split import FeatureSplit

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.5, (classes, dim))
    labels = rng.integers(0, classes, n)
    x = (centers[labels] + rng.normal(0, 1.0, (n, dim))).astype(np.float32)
    cut = [int(n * 0.6), int(n * 0.8)]
    parts = np.split(np.arange(n), cut)
    return {name: FeatureSplit(labels[i].astype(np.int32), pooled=x[i])
            for name, i in zip(("train", "val", "test"), parts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--heartbeat-timeout", type=int, default=100, help="seconds before a lost peer fails the job")
    parser.add_argument("--synthetic", type=int, help="N synthetic feature vectors instead of a dataset")
    parser.add_argument("--dataset", default="elpv")
    parser.add_argument("--data-dir")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--config", type=Path, help="a YAML/JSON SweepSpec")
    parser.add_argument("--out", type=Path, default=Path("runs/pod"))
    args = parser.parse_args(argv)

    from jaxheads import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                           heartbeat_timeout_s=args.heartbeat_timeout)
    import jax
    import yaml

    from jaxheads import job
    from jaxheads.sweep import SweepSpec, run_sweep

    spec = SweepSpec.from_dict(yaml.safe_load(args.config.read_text())) if args.config else job.DEFAULT_SWEEP
    print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
          f"{jax.device_count()} devices", file=sys.stderr)
    if args.synthetic:
        result = run_sweep(spec, synthetic_splits(args.synthetic), num_classes=3, task="multiclass")
        if distributed.is_main_process():
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(result.to_json())
    else:
        job.sweep_job(args.dataset, args.backbone, sweep=spec,
                      options=job.JobOptions(out_dir=args.out, data_dir=args.data_dir))
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
