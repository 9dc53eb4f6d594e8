"""``jaxheads sweep --dry-run``: what a sweep will train and what it will cost, before anything runs.

The plan is the sweep's own: ``SweepSpec.expand`` for the members, ``sweep.plan.group_members`` / ``make_plan`` for
the compiled groups, their padding and layout (host only), ``heads.flops_per_example`` for the arithmetic. The
features' shapes come from the backbone's architecture (``backbones.describe``): the backbone is never run.

The estimate comes from a short calibration on this machine (:func:`calibrate`): a matmul spread over every device
gives the FLOP rate, and a tiny real sweep (two members, synthetic features) gives the cost of compiling a group,
of one training step beyond its arithmetic and of one evaluation. A group then costs its compile plus, every epoch,
its steps and evaluation; every head is assumed to run all epochs, so early stopping only ends sooner. The
backbone's feature pass is not included (it is skipped for images already in the cache). How close the estimate
comes: experiments/README.md, "Figures moved out of code comments".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from jaxheads import heads, parallel
from jaxheads.cli.parser import conv_stack_text
from jaxheads.sweep import SweepSpec
from jaxheads.sweep.plan import GroupPlan, cached_shape, fixed_map_batch, group_members, make_plan, member_bytes

BYTES = 4  # float32 on the device
STATE_COPIES = 5  # parameters, the kept best copy, gradients and two Adam moments


@dataclasses.dataclass(frozen=True)
class GroupCost:
    """One compiled group of the plan and what an epoch of it costs."""

    gid: int
    members: int
    slots: int  # device positions (members padded to a multiple of the mesh)
    program: str  # poolings · conv stack · padded hidden widths (· norm)
    padded: tuple[int, ...]
    batch: int
    steps_per_epoch: int
    params: int  # per member slot, at the padded widths
    train_flops: float  # per epoch, every slot (forward + backward = 3 forwards)
    eval_flops: float  # per epoch: every slot scored on the val rows
    device_bytes: int  # per device: inputs + member state + the activations of the members run at once
    at_once: int  # members one device runs at once (vmap: all its slots; lax.map: k)
    chunks: int  # programs a device runs one after another per step (lax.map chunks)


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    members: int
    configs: int
    metric: str
    epochs: int
    n_train: int  # training rows (with folds: of the fold with the fewest)
    eval_rows: int
    devices: int
    shapes: Mapping[str, tuple[int, ...] | None]
    groups: tuple[GroupCost, ...]

    @property
    def flops_per_epoch(self) -> float:
        return sum(g.train_flops + g.eval_flops for g in self.groups)


def _rows(spec: SweepSpec, sizes: Mapping[str, int], views: int = 1) -> tuple[int, int, int]:
    """(training rows, rows each member scores per evaluation, rows placed on every device), as ``sweep.inputs``
    lays them out: with folds the pool (train + val) once, a member scoring its own fold (padded to the largest
    fold or the test split); without, val and test padded to one length. The training rows are placed once per
    augmented view (``views``)."""
    test = sizes.get("test", 0)
    if spec.folds:
        pool = sizes["train"] + sizes["val"]
        largest = -(-pool // spec.folds)  # folds differ in size by at most one row
        return pool - largest, max(largest, test), views * pool + test
    rows = max(sizes["val"], test)
    return sizes["train"], rows, views * sizes["train"] + rows * (2 if test else 1)


def _program(plan: GroupPlan) -> str:
    s = plan.structure
    parts = ["/".join(plan.sources)]
    if s.conv:
        parts.append("conv " + conv_stack_text(s.conv))
    parts.append("-".join(map(str, plan.padded)) if plan.padded else "linear")
    if s.norm != "none":
        parts.append(f"norm {s.norm}")
    return " · ".join(parts) + (" (gated depths)" if plan.gated else "")


def _group_cost(plan: GroupPlan, spec: SweepSpec, eval_rows: int, placed_rows: int) -> GroupCost:
    head = plan.structure.replace(hidden=plan.padded)
    forward = heads.flops_per_example(head, plan.input_shape)
    mode = "vmap" if spec.map_batch == "probe" else fixed_map_batch(plan, spec.map_batch)
    at_once = plan.local_slots if mode == "vmap" else min(int(mode), plan.local_slots)
    first = plan.specs[0].head
    data_shards = plan.mesh.shape[parallel.DATA]
    activations = member_bytes(first, plan.feature_shapes[first.pooling], max(1, plan.batch // data_shards),
                               plan.padded) * at_once
    inputs = BYTES * len(plan.sources) * math.prod(plan.input_shape) * placed_rows
    state = BYTES * STATE_COPIES * plan.padded_params() * plan.local_slots
    return GroupCost(
        gid=plan.gid, members=len(plan.ids), slots=plan.slots, program=_program(plan), padded=plan.padded,
        batch=plan.batch, steps_per_epoch=plan.steps_per_epoch, params=plan.padded_params(),
        train_flops=3.0 * forward * plan.batch * plan.steps_per_epoch * plan.slots,
        eval_flops=float(forward) * eval_rows * plan.slots, device_bytes=int(inputs + state + activations),
        at_once=at_once, chunks=math.ceil(plan.local_slots / at_once))


def plan_sweep(spec: SweepSpec, shapes: Mapping[str, tuple[int, ...] | None], sizes: Mapping[str, int],
               num_classes: int, task: str, views: int = 1) -> SweepPlan:
    """The sweep's members, groups and per-epoch cost on features of ``shapes`` ({"pooled": (C,), "maps": (h, w,
    C)}) with ``sizes`` examples per split (``views``: augmented views of the training rows, placed too); host
    only (nothing is compiled or placed)."""
    import jax

    members = spec.expand(num_classes, task)
    if not members:
        raise ValueError("the sweep has no members")
    for m in members:
        heads.check_input(m.head, cached_shape(m.head, shapes))
    n_train, eval_rows, placed = _rows(spec, sizes, views)
    groups = tuple(_group_cost(make_plan(gid, ids, members, shapes, n_train, spec, None), spec, eval_rows, placed)
                   for gid, ids in enumerate(group_members(members, shapes, spec.depth_grouping)))
    configs = len({m.config_id() for m in members})
    return SweepPlan(members=len(members), configs=configs, metric=spec.ranking_metric(task), epochs=spec.epochs,
                     n_train=n_train, eval_rows=eval_rows, devices=jax.device_count(), shapes=dict(shapes),
                     groups=groups)


# ------------------------------------------------------------------------------------------------ calibration
class Calibration(NamedTuple):
    flops_per_s: float  # a float32 matmul spread over every device
    step_s: float  # one training step of a tiny group, beyond its arithmetic
    eval_s: float  # one evaluation of a tiny group
    group_s: float  # compiling and initialising one group
    took_s: float  # how long the calibration itself took


def _matmul_rate(n: int = 512, repeats: int = 5) -> float:
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = jax.devices()
    sharding = NamedSharding(Mesh(np.array(devices), ("d",)), P("d"))
    a = jax.device_put(np.full((len(devices), n, n), 0.5, np.float32), sharding)
    f = jax.jit(lambda a: jnp.einsum("dij,djk->dik", a, a))
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 * len(devices) / best


def _tiny_sweep() -> dict[str, Any]:
    """One group of a real sweep on synthetic pooled features: two members per device, 4 epochs of 32 steps."""
    import jax

    from jaxheads.features.split import FeatureSplit
    from jaxheads.sweep import run_sweep

    rng = np.random.default_rng(0)
    split = lambda n: FeatureSplit(labels=rng.integers(0, 2, n).astype(np.int32),  # noqa: E731
                                   pooled=rng.normal(size=(n, 32)).astype(np.float16))
    spec = SweepSpec(pooling=("none",), widths=(8,), depth=(1,), epochs=4, batch_size=(8,), patience=None,
                     ridge_l2=(), seeds=2 * jax.device_count())
    return run_sweep(spec, {"train": split(256), "val": split(64)}, num_classes=2).groups[0]


def calibrate() -> Calibration:
    """Time this machine: a few seconds, mostly one tiny sweep's compile (see the module docstring)."""
    t0 = time.perf_counter()
    rate = _matmul_rate()
    group = _tiny_sweep()
    timings, steps, epochs = group["timings"], group["steps_per_epoch"], len(group["slots_per_epoch"])
    step_s = timings["train_s"] / max(1, steps * (epochs - 1))  # epoch 1 is counted as compile
    return Calibration(rate, step_s, timings["eval_s"] / max(1, epochs), timings["init_s"] + timings["compile_s"],
                       time.perf_counter() - t0)


def estimate(plan: SweepPlan, calib: Calibration) -> dict[str, float]:
    """Seconds the sweep should take on the calibrated machine if every head runs every epoch."""
    train = sum(plan.epochs * (g.steps_per_epoch * g.chunks * calib.step_s + calib.eval_s
                               + (g.train_flops + g.eval_flops) / calib.flops_per_s) for g in plan.groups)
    compile_s = calib.group_s * len(plan.groups)
    return {"train_s": train, "compile_s": compile_s, "total_s": train + compile_s}


# ------------------------------------------------------------------------------------------------ record
def _record_path(key: Mapping[str, Any]) -> Path:
    from jaxheads import checkpoint

    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return checkpoint.cache_dir() / "plans" / f"{digest}.json"


def record(key: Mapping[str, Any], plan: Mapping[str, Any]) -> Path:
    """Keep a dry run's plan and estimate under ``key`` (what decides the plan: flags, dataset, backbone)."""
    from jaxheads import checkpoint

    path = _record_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json_atomic(path, {"key": dict(key), "made": time.strftime("%Y-%m-%dT%H:%M:%S"), **plan})
    return path


def recorded(key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The plan :func:`record` kept under ``key``, or None."""
    try:
        return json.loads(_record_path(key).read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ output
def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _count(n: float, unit: str = "FLOP") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if n >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:,.0f} {unit}"


def plan_json(plan: SweepPlan, calib: Calibration | None, times: Mapping[str, float] | None) -> dict[str, Any]:
    """The plan and its estimate as JSON (``plan.json``; a later run records it beside its own timings)."""
    out: dict[str, Any] = {k: v for k, v in dataclasses.asdict(plan).items() if k != "groups"}
    out["groups"] = [dataclasses.asdict(g) for g in plan.groups]
    out["flops_per_epoch"] = plan.flops_per_epoch
    if calib is not None:
        out["calibration"] = calib._asdict()
    if times is not None:
        out["estimate"] = dict(times)
    return out


def print_plan(plan: SweepPlan, calib: Calibration | None, times: Mapping[str, float] | None,
               console: Any = None, header: str = "") -> None:
    """The plan as a table, then the estimate and how it was made."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    shapes = ", ".join(f"{k} {tuple(v)}" for k, v in plan.shapes.items() if v is not None)
    table = Table(title=f"{header}{plan.members} members ({plan.configs} configs) in {len(plan.groups)} compiled "
                        f"groups", caption=f"features: {shapes}; {plan.n_train} training rows; {plan.devices} "
                                           f"device(s); ranked by val {plan.metric}")
    for name in ("group", "members", "slots", "program (padded)", "params/member", "FLOP/epoch", "memory/device",
                 "steps/epoch"):
        table.add_column(name, justify="left" if name.startswith("program") else "right")
    for g in plan.groups:
        table.add_row(str(g.gid), str(g.members), str(g.slots), g.program, f"{g.params:,}",
                      _count(g.train_flops + g.eval_flops), _size(g.device_bytes),
                      f"{g.steps_per_epoch} × batch {g.batch}")
    console.print(table)
    console.print(f"Arithmetic: {_count(plan.flops_per_epoch)} per epoch, "
                  f"{_count(plan.flops_per_epoch * plan.epochs)} for {plan.epochs} epochs.")
    if calib is not None and times is not None:
        console.print(f"Estimate on this machine: about {times['total_s']:.0f} s for the sweep "
                      f"({times['compile_s']:.0f} s compiling {len(plan.groups)} groups, {times['train_s']:.0f} s "
                      f"training if every head runs all {plan.epochs} epochs; early stopping ends sooner).")
        console.print(f"Calibrated in {calib.took_s:.1f} s: matmul {calib.flops_per_s / 1e9:.0f} GFLOP/s, "
                      f"{calib.step_s * 1e6:.0f} µs per step, {calib.group_s:.1f} s to compile a group. "
                      "The backbone's feature pass is not included.", style="dim")
