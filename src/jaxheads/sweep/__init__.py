"""The sweep: train a whole grid of heads at once on cached features and rank them with noise.

The data flow, one module each::

    spec.py     SweepSpec (the grid) -> MemberSpec per member
    plan.py     members -> GroupPlan per group of one program structure (host only: padding, layout, memory)
    inputs.py   cached features -> each group's program input, pooled once and placed on the mesh
    program.py  the jitted heart: optimiser, member step, epoch, evaluation, init
    group.py    a group's init run in the background and its programs compiled
    loop.py     the epoch loop: early stopping, halving and compaction between epochs
    records.py  each member's final metrics and unpadded weights
    result.py   SweepResult and the leaderboard (layout in schema.py)
    resume.py   finished groups on disk, so a killed sweep resumes

``run_sweep`` needs ``"train"`` and ``"val"`` splits; ``"test"`` is optional.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jaxheads import metrics, probe
from jaxheads.splits import FeatureSplit

from . import group as groups
from .inputs import abstract_splits, check_inputs, feature_shapes, host_inputs, place_inputs
from .loop import train_group
from .plan import CPU_MEMBER_MAJOR_PARAMS, fixed_map_batch, group_members, make_plan
from .program import make_optimizer
from .result import SweepResult, group_record, leaderboard
from .resume import GroupStore
from .schema import SCHEMA
from .spec import DEPTH_GROUPING_DEFAULT, MemberSpec, SweepSpec

__all__ = ["CPU_MEMBER_MAJOR_PARAMS", "DEPTH_GROUPING_DEFAULT", "SCHEMA", "MemberSpec", "SweepResult", "SweepSpec",
           "abstract_splits", "compile_sweep", "leaderboard", "make_optimizer", "run_sweep"]


class _Background:
    """``fn(*args)`` run in a background thread, or on demand when ``background`` is false; :meth:`result`
    returns its value (re-raising its exception)."""

    def __init__(self, fn: Callable, *args: Any, background: bool):
        self._fn, self._args, self._pool = fn, args, None
        if background:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxheads-ridge")
            self._future = self._pool.submit(fn, *args)

    def result(self) -> Any:
        if self._pool is None:
            return self._fn(*self._args)
        try:
            return self._future.result()
        finally:
            self._pool.shutdown()


def _ridge_rows(sweep: SweepSpec, splits: Mapping[str, FeatureSplit], num_classes: int,
                metric: str) -> tuple[list[dict[str, Any]], float]:
    """The closed-form ridge baseline's rows (``probe.sweep_rows``) and its seconds; none without pooled features
    or with ``ridge_l2 == ()``."""
    t = time.perf_counter()
    if sweep.ridge_l2 == () or splits["train"].pooled is None:
        return [], time.perf_counter() - t
    rows = probe.sweep_rows(splits, l2=sweep.ridge_l2, num_classes=num_classes, metric=metric)
    return rows, time.perf_counter() - t


def _train_one_group(plan: Any, splits: Mapping[str, FeatureSplit], members: list[MemberSpec], sweep: SweepSpec,
                     task: str, metric: str, pool: concurrent.futures.Executor,
                     progress: Callable | None) -> tuple[dict[int, tuple], dict[str, Any]]:
    """Place, initialise, compile and train one group: ({member: (record, variables)}, the group's record)."""
    t0 = time.perf_counter()
    host_x = host_inputs(plan, members, splits)
    pending = groups.start_init(plan, pool, abstract=False)
    inputs = place_inputs(plan, host_x, splits)
    timings = {"init_s": time.perf_counter() - t0, "compile_s": 0.0, "probe_s": 0.0, "train_s": 0.0, "eval_s": 0.0}
    rng = np.random.default_rng([sweep.data_seed, plan.gid])
    live, probed = None, None
    if sweep.map_batch == "probe":
        live = groups.collect_init(pending)
        t = time.perf_counter()
        map_batch, probed = groups.probe_map_batch(plan, inputs, live, rng)
        timings["probe_s"] = time.perf_counter() - t if probed is not None else 0.0
    else:
        map_batch = fixed_map_batch(plan, sweep.map_batch)
    t = time.perf_counter()
    programs = groups.compile_programs(pending, inputs, map_batch, task, pool)
    live = live if live is not None else groups.collect_init(pending)
    timings["compile_s"] += time.perf_counter() - t  # includes waiting for the init program
    done, slots_per_epoch = train_group(plan, inputs, live, programs, sweep, metric, task, members, rng, timings,
                                        progress)
    return done, group_record(plan, sweep.epochs, map_batch, probed, slots_per_epoch, timings)


def run_sweep(
    sweep: SweepSpec,
    splits: Mapping[str, FeatureSplit],
    *,
    num_classes: int,
    task: str = "multiclass",
    mesh: Mesh | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    label_names: Sequence[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> SweepResult:
    """Train every member of ``sweep`` on ``splits["train"]``, select on ``splits["val"]``, report on
    ``splits["test"]`` (optional), and rank. ``mesh`` defaults to a per-group ``parallel.sweep_mesh`` over all
    devices; pass ``Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("members", "data"))`` for one device.
    ``progress`` is called after every epoch of every group with {group, epoch, epochs, active, members, best}.

    ``checkpoint_dir`` (single-process runs): each finished group's records and variables are saved there, and a
    re-run of the same sweep on the same features loads them instead of training the group again, so a killed
    sweep resumes at its first unfinished group and ends with the same result (timings aside). The directory is
    removed when the sweep completes."""
    t_start = time.perf_counter()
    if "train" not in splits or "val" not in splits:
        raise ValueError(f"run_sweep: splits need 'train' and 'val', got {sorted(splits)}")
    members = sweep.expand(num_classes, task)
    if not members:
        raise ValueError("run_sweep: the sweep has no members")
    check_inputs(members, splits)
    metric = metrics.metric_for_task(task)
    records: list[Any] = [None] * len(members)
    variables: list[Any] = [None] * len(members)
    groups_json: list[dict[str, Any]] = []
    store = GroupStore(checkpoint_dir, sweep, splits, num_classes, task, label_names)
    # The ridge baseline is independent of the heads: on one process it runs in a thread while the groups train.
    ridge_job = _Background(_ridge_rows, sweep, splits, num_classes, metric, background=jax.process_count() == 1)
    shapes = feature_shapes(splits["train"])
    # Compiles (and each group's init) run on this pool while the main thread compiles the epoch program.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="jaxheads-compile") as pool:
        for gid, ids in enumerate(group_members(members, shapes, sweep.depth_grouping)):
            if store.restore(gid, ids, records, variables, groups_json):
                continue
            plan = make_plan(gid, ids, members, shapes, len(splits["train"]), sweep, mesh)
            done, group_json = _train_one_group(plan, splits, members, sweep, task, metric, pool, progress)
            for i, (record, member_vars) in done.items():
                records[i], variables[i] = record, member_vars
            groups_json.append(group_json)
            store.save(gid, ids, records, variables, group_json)
    ridge, ridge_s = ridge_job.result()
    board, recommended = leaderboard(records, metric)
    store.clear()
    return SweepResult(task=task, num_classes=num_classes, metric=metric, sweep=sweep, members=records,
                       leaderboard=board, recommended=recommended, ridge=ridge, groups=groups_json,
                       timings={"total_s": time.perf_counter() - t_start, "ridge_s": ridge_s},
                       feature_shapes={k: None if v is None else list(v) for k, v in shapes.items()},
                       label_names=list(label_names) if label_names else None, variables=variables)


def compile_sweep(sweep: SweepSpec, splits: Mapping[str, FeatureSplit], *, num_classes: int,
                  task: str = "multiclass", mesh: Mesh | None = None) -> dict[str, Any]:
    """Compile every group program :func:`run_sweep` will run, from the features' shapes alone (``splits`` from
    :func:`abstract_splits`), so that they compile while the features are still being computed: the later
    ``run_sweep`` on features of these shapes finds them compiled. Features of other shapes (e.g. unreadable
    images left out) only make this wasted work. Returns what was compiled and how long it took.

    Not for ``map_batch="probe"`` (it times candidates on real data): such a sweep compiles nothing here."""
    t0 = time.perf_counter()
    members = sweep.expand(num_classes, task)
    check_inputs(members, splits)
    shapes = feature_shapes(splits["train"])
    compiled, ridge = [], None
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="jaxheads-compile") as pool:
        if sweep.ridge_l2 != () and (shapes["pooled"] or shapes["maps"]):
            grid = len(probe.DEFAULT_L2_GRID if sweep.ridge_l2 is None else sweep.ridge_l2)
            ridge = pool.submit(probe.compile_ridge_probe, splits["train"], splits["val"], splits.get("test"),
                                grid_size=grid, num_classes=num_classes)
        if sweep.map_batch != "probe":
            for gid, ids in enumerate(group_members(members, shapes, sweep.depth_grouping)):
                plan = make_plan(gid, ids, members, shapes, len(splits["train"]), sweep, mesh)
                pending = groups.start_init(plan, pool, abstract=True)
                inputs = place_inputs(plan, host_inputs(plan, members, splits), splits)
                map_batch = fixed_map_batch(plan, sweep.map_batch)
                groups.compile_programs(pending, inputs, map_batch, task, pool).evaluation_compiled.result()
                groups.collect_init(pending)
                compiled.append({"group": gid, "members": len(ids), "map_batch": map_batch})
        if ridge is not None:
            ridge.result()
    return {"groups": compiled, "compile_s": time.perf_counter() - t0}
