"""One host of tests/test_stream.py's two-process run: `python stream_hosts.py PORT RANK DIR SWEEP_JSON`. Reads the
synthetic cache in DIR/cache (tiny.write_cache) lazily, runs the sweep SWEEP_JSON (a SweepSpec's to_dict) streamed
on a (1, 8) mesh whose data axis spans both processes, and writes DIR/host-RANK.json: the shards its lazy reader
opened and every member's metrics."""

import json
import sys
from pathlib import Path

port, rank, root = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, str(Path(__file__).parent))

from jaxheads import distributed  # noqa: E402

distributed.initialize(f"127.0.0.1:{port}", 2, rank, heartbeat_timeout_s=30)  # a dead peer fails fast

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import tiny  # noqa: E402
from jaxheads.features import store  # noqa: E402
from jaxheads.sweep import SweepSpec, run_sweep  # noqa: E402

plan = store.Plan(np.asarray([f"img{i:04d}".encode() for i in range(160)], "S32"), 16)
labels = np.random.default_rng(0).integers(0, 3, 160)  # write_cache's labels (same seed, first draw)
splits = tiny.cache_splits(root / "cache", plan, labels, lazy=True)
mesh = Mesh(np.asarray(jax.devices()).reshape(1, 8), ("members", "data"))
sweep = SweepSpec.from_dict(json.loads(sys.argv[4]))
result = run_sweep(sweep, splits, num_classes=3, mesh=mesh, device_memory_budget=1)
opened = sorted(set().union(*(getattr(s, kind).opened for s in splits.values() for kind in ("pooled", "maps"))))
members = [{"config": m["config"], "val": m["val"], "test": m["test"], "loss": m["curves"]["train_loss"]}
           for m in result.members]
(root / f"host-{rank}.json").write_text(json.dumps({"opened": opened, "members": members,
                                                    "streamed": all(g["streamed"] for g in result.groups)}))
distributed.shutdown()
