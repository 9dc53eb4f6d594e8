"""Run a sweep end to end: groups planned, compiled and trained, the ridge baseline, verdicts and result."""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jaxheads import probe
from jaxheads.features.split import FeatureSplit

from . import folds, stream, tta, verdicts
from . import group as groups
from .book import GroupRun
from .inputs import check_inputs, feature_shapes, host_inputs, place_inputs
from .loop import train_group
from .plan import fixed_map_batch, group_members, make_plan
from .result import SweepResult, group_record, leaderboard
from .resume import GroupStore
from .spec import MemberSpec, SweepSpec

__all__ = ["compile_sweep", "run_sweep"]


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


class _SweepRun(NamedTuple):
    """What every group of one sweep trains with: the resolved sweep, the splits the heads train on, the fold of
    every pooled row (None without folds), the members, task, ranking metric, progress callback and the
    device-memory budget (bytes per device) over which a group streams."""

    sweep: SweepSpec
    splits: Mapping[str, FeatureSplit]
    fold_of: np.ndarray | None
    members: list[MemberSpec]
    task: str
    metric: str
    progress: Callable | None
    budget: int


def _train_one_group(run: _SweepRun, plan: Any,
                     pool: concurrent.futures.Executor) -> tuple[dict[int, tuple], dict[str, Any]]:
    """Place (or, over ``run.budget`` bytes per device, stream), initialise, compile and train one group: ({member:
    (record, variables, predictions)}, its record)."""
    splits, fold_of, members, sweep, task = run.splits, run.fold_of, run.members, run.sweep, run.task
    budget = run.budget
    t0 = time.perf_counter()
    streamed = stream.streams(plan, splits, fold_of is not None, budget)
    host_x = None if streamed else host_inputs(plan, members, splits)
    pending = groups.start_init(plan, pool, abstract=False)
    inputs = stream.stream_inputs(plan, members, splits) if streamed else place_inputs(plan, host_x, splits, fold_of)
    timings = {"init_s": time.perf_counter() - t0, "compile_s": 0.0, "probe_s": 0.0, "train_s": 0.0, "eval_s": 0.0}
    rng = np.random.default_rng([sweep.data_seed, plan.gid])
    rngs = [rng] if fold_of is None else [np.random.default_rng([sweep.data_seed, plan.gid]) for _ in range(
        folds.fold_count(fold_of))]
    live, probed = None, None
    if sweep.map_batch == "probe" and not streamed:
        live = groups.collect_init(pending)
        t = time.perf_counter()
        map_batch, probed = groups.probe_map_batch(plan, inputs, live, rng)
        timings["probe_s"] = time.perf_counter() - t if probed is not None else 0.0
    else:
        map_batch = fixed_map_batch(plan, "auto" if sweep.map_batch == "probe" else sweep.map_batch)
    t = time.perf_counter()
    programs = (stream.compile_programs(pending, inputs, map_batch, task, pool, budget) if streamed
                else groups.compile_programs(pending, inputs, map_batch, task, pool))
    live = live if live is not None else groups.collect_init(pending)
    timings["compile_s"] += time.perf_counter() - t  # includes waiting for the init program
    group_run = GroupRun(plan, inputs, programs, sweep, run.metric, task, members, timings)
    done, slots_per_epoch = train_group(group_run, live, rngs, run.progress)
    record = group_record(plan, sweep.epochs, map_batch, probed, slots_per_epoch, timings)
    return done, {**record, "streamed": stream.record(plan, budget, inputs) if streamed else None}


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
    device_memory_budget: int | str | None = None,
) -> SweepResult:
    """Train every member of ``sweep`` on ``splits["train"]``, select on ``splits["val"]``, report on
    ``splits["test"]`` (optional), and rank. ``mesh`` defaults to a per-group ``parallel.sweep_mesh`` over all
    devices; pass ``Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("members", "data"))`` for one device.
    ``progress`` is called after every epoch of every group with {group, epoch, epochs, active, members, best}.

    ``checkpoint_dir`` (single-process runs): each finished group's records and variables are saved there, and a
    re-run of the same sweep on the same features loads them instead of training the group again, so a killed
    sweep resumes at its first unfinished group and ends with the same result (timings aside). The directory is
    removed when the sweep completes.

    ``device_memory_budget`` (bytes per device, or a size such as "2GiB"; default: half the device's memory, see
    :mod:`.stream`): a group whose inputs exceed it streams its features from the (memory-mapped) splits instead
    of placing them on the devices, with the same results; ``SweepResult.groups[*]["streamed"]`` says which did."""
    t_start = time.perf_counter()
    budget = stream.resolve_budget(device_memory_budget)
    sweep = sweep.for_splits({name: len(split) for name, split in splits.items()}, "run_sweep")
    members = sweep.expand(num_classes, task)
    if not members:
        raise ValueError("run_sweep: the sweep has no members")
    check_inputs(members, splits)
    metric = sweep.ranking_metric(task)
    store = GroupStore(checkpoint_dir, sweep, splits, num_classes, task, label_names)
    # The ridge baseline is independent of the heads: on one process it runs in a thread while the groups train.
    ridge_job = _Background(_ridge_rows, sweep, splits, num_classes, metric, background=jax.process_count() == 1)
    train_splits, fold_of = _cross_validation(sweep, splits, label_names)
    run = _SweepRun(sweep, train_splits, fold_of, members, task, metric, progress, budget)
    trained = _train_groups(run, mesh, store)
    ridge, ridge_s = ridge_job.result()
    board, recommended = leaderboard(trained.records, metric)
    store.clear()
    shapes = feature_shapes(splits["train"])
    predictions = _stack_predictions(trained.predictions, train_splits, fold_of)
    test_views = tta.test_views(splits.get("test"))
    if test_views > 1:  # test-time augmentation: the test figures average each test image's views
        predictions["test"] = tta.average_test_views(trained.records, trained.variables, splits["test"],
                                                     predictions["test"])
    result = SweepResult(task=task, num_classes=num_classes, metric=metric, sweep=sweep, members=trained.records,
                         leaderboard=board, recommended=recommended, ridge=ridge, groups=trained.groups,
                         timings={"total_s": time.perf_counter() - t_start, "ridge_s": ridge_s},
                         feature_shapes={k: None if v is None else list(v) for k, v in shapes.items()},
                         label_names=list(label_names) if label_names else None, variables=trained.variables,
                         predictions=predictions)
    result = verdicts.analyse(result)
    if test_views > 1 and result.selection.get("test") is not None:
        result.selection["test_views"] = test_views
    return result


class _Trained(NamedTuple):
    records: list[Any]
    variables: list[Any]
    predictions: list[Any]
    groups: list[dict[str, Any]]


def _cross_validation(sweep: SweepSpec, splits: Mapping[str, FeatureSplit],
                      label_names: Sequence[str] | None) -> tuple[Mapping[str, FeatureSplit], np.ndarray | None]:
    """The splits the heads train on, and the fold of every pooled row (None without folds)."""
    if not sweep.folds:
        return splits, None
    pool = folds.pooled_splits(splits)
    folds.check_folds(pool["train"].labels, sweep.folds, label_names)
    return pool, folds.assign_repeats(pool["train"].labels, sweep.folds, sweep.repeats, sweep.data_seed)


def _train_groups(run: _SweepRun, mesh: Mesh | None, store: GroupStore) -> _Trained:
    """Every group, restored from ``store`` when it finished in an earlier run, else trained and saved."""
    sweep, splits, fold_of, members = run.sweep, run.splits, run.fold_of, run.members
    out = _Trained([None] * len(members), [None] * len(members), [None] * len(members), [])
    shapes = feature_shapes(splits["train"])
    n_train = len(splits["train"]) if fold_of is None else folds.min_train_rows(fold_of)
    # Compiles (and each group's init) run on this pool while the main thread compiles the epoch program.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="jaxheads-compile") as pool:
        for gid, ids in enumerate(group_members(members, shapes, sweep.depth_grouping)):
            if store.restore(gid, ids, out.records, out.variables, out.predictions, out.groups):
                continue
            plan = make_plan(gid, ids, members, shapes, n_train, sweep, mesh)
            done, group_json = _train_one_group(run, plan, pool)
            for i, (record, member_vars, predictions) in done.items():
                out.records[i], out.variables[i], out.predictions[i] = record, member_vars, predictions
            out.groups.append(group_json)
            store.save(gid, ids, out.records, out.variables, out.predictions, group_json)
    return out


def _stack_predictions(per_member: list[dict[str, Any]], splits: Mapping[str, FeatureSplit],
                       fold_of: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every member's per-example probabilities at its kept epoch, stacked (see ``SweepResult.predictions``)."""
    out = {"val": np.stack([p["val"] for p in per_member]), "val_labels": np.asarray(splits["val"].labels)}
    if fold_of is not None:
        out["val_fold"] = np.asarray(fold_of)
    if "test" in per_member[0]:
        out["test"] = np.stack([p["test"] for p in per_member])
        out["test_labels"] = np.asarray(splits["test"].labels)
    return out


def _abstract_rows(split: FeatureSplit, rows: int) -> FeatureSplit:
    """An abstract split with ``rows`` examples."""
    resize = lambda a: None if a is None else jax.ShapeDtypeStruct((rows, *a.shape[1:]), a.dtype)  # noqa: E731
    return FeatureSplit(*(resize(a) for a in split))


def compile_sweep(sweep: SweepSpec, splits: Mapping[str, FeatureSplit], *, num_classes: int,
                  task: str = "multiclass", mesh: Mesh | None = None) -> dict[str, Any]:
    """Compile every group program :func:`run_sweep` will run, from the features' shapes alone (``splits`` from
    :func:`abstract_splits`), so that they compile while the features are still being computed: the later
    ``run_sweep`` on features of these shapes finds them compiled. Features of other shapes (e.g. unreadable
    images left out) only make this wasted work. Returns what was compiled and how long it took.

    Not for ``map_batch="probe"`` (it times candidates on real data): such a sweep compiles nothing here."""
    t0 = time.perf_counter()
    sweep = sweep.for_splits({name: len(split) for name, split in splits.items()}, "compile_sweep")
    members = sweep.expand(num_classes, task)
    check_inputs(members, splits)
    shapes = feature_shapes(splits["train"])
    n_train, fold_of = len(splits["train"]), None
    if sweep.folds:  # folds.assign_folds deals rows round-robin: the fold sizes of arange(N) % K
        pool = _abstract_rows(splits["train"], len(splits["train"]) + len(splits["val"]))
        splits = {"train": pool, "val": pool, **({"test": splits["test"]} if "test" in splits else {})}
        fold_of = np.arange(len(pool)) % sweep.folds
        fold_of = fold_of if sweep.repeats == 1 else np.tile(fold_of, (sweep.repeats, 1))
        n_train = len(pool) - -(-len(pool) // sweep.folds)
    compiled, ridge = [], None
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="jaxheads-compile") as pool:
        if sweep.ridge_l2 != () and (shapes["pooled"] or shapes["maps"]):
            grid = len(probe.DEFAULT_L2_GRID if sweep.ridge_l2 is None else sweep.ridge_l2)
            ridge = pool.submit(probe.compile_ridge_probe, splits["train"], splits["val"], splits.get("test"),
                                grid_size=grid, num_classes=num_classes)
        if sweep.map_batch != "probe":
            for gid, ids in enumerate(group_members(members, shapes, sweep.depth_grouping)):
                plan = make_plan(gid, ids, members, shapes, n_train, sweep, mesh)
                pending = groups.start_init(plan, pool, abstract=True)
                inputs = place_inputs(plan, host_inputs(plan, members, splits), splits, fold_of)
                map_batch = fixed_map_batch(plan, sweep.map_batch)
                groups.compile_programs(pending, inputs, map_batch, task, pool).evaluation_compiled.result()
                groups.collect_init(pending)
                compiled.append({"group": gid, "members": len(ids), "map_batch": map_batch})
        if ridge is not None:
            ridge.result()
    return {"groups": compiled, "compile_s": time.perf_counter() - t0}
