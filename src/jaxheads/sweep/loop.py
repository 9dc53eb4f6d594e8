"""The epoch loop of one group: run the jitted epoch, score val, then decide on the host from (M,) arrays.

Between epochs: the NaN guard's flags, early stopping (patience on the selection curve, the kept epoch's weights
held) and successive halving, both by team (with folds a member's kept epoch is chosen on its other folds' val
scores, :mod:`.book`); once stopped members hold half of the device slots, they are finalised and the device arrays
are compacted to the live ones. The decisions are pure functions on arrays; the loop alone owns the mutable state
(:class:`~.book.MemberBook` on the host, :class:`~.group.LiveMembers` on the devices).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads import parallel

from . import records
from .book import GroupRun, MemberBook, selection_teams
from .group import LiveMembers, epoch_args, epoch_batches, view_generator
from .plan import GroupPlan
from .program import keep_best
from .spec import SweepSpec


def patience_exhausted(active: np.ndarray, since: np.ndarray, patience: int | None) -> np.ndarray:
    """Members to stop early: still active and ``patience`` epochs without improvement (None: never)."""
    if patience is None:
        return np.zeros(0, int)
    return np.flatnonzero(active & (since >= patience))


def halving_victims(active: np.ndarray, best: np.ndarray, fraction: float) -> np.ndarray:
    """Successive halving: the weakest ``fraction`` of the active members by best score (stable on ties)."""
    alive = np.flatnonzero(active)
    return alive[np.argsort(best[alive], kind="stable")][: int(len(alive) * fraction)]


def compaction(slots: np.ndarray, active: np.ndarray, mesh: Any) -> tuple[np.ndarray, int] | None:
    """(the slots to keep, how many of them are live) when the live members fit fewer padded slots than now; the
    live slots come first, padded with inactive copies of the first. None when nothing shrinks. ``active`` is
    indexed by member position."""
    live = np.flatnonzero((slots >= 0) & active[np.maximum(slots, 0)])
    size = parallel.padded_members(len(live), mesh)
    if len(live) == 0 or size >= len(slots):
        return None
    return np.concatenate([live, np.full(size - len(live), live[0])]), len(live)


@jax.jit
def _gather_members(tree: Any, sel: jax.Array) -> Any:
    return jax.tree.map(lambda a: a[sel], tree)


def _compact(plan: GroupPlan, live: LiveMembers, keep: np.ndarray, n_live: int) -> LiveMembers:
    """``live`` reduced to the slots ``keep`` (the first ``n_live`` real); the group program retraces for it."""
    sharding = parallel.member_sharding(plan.mesh)
    take = lambda tree: jax.device_put(_gather_members(tree, jnp.asarray(keep)), sharding)  # noqa: E731
    slots = live.slots[keep].copy()
    slots[n_live:] = -1
    return LiveMembers(take(live.state), take(live.consts), take(live.best), slots)


def _unfinished(plan: GroupPlan, slots: np.ndarray, done: Mapping[int, Any]) -> np.ndarray:
    """Slots of real members without a final record yet."""
    return np.asarray([s for s, j in enumerate(slots) if j >= 0 and plan.ids[j] not in done], int)


def _train_epoch(run: GroupRun, live: LiveMembers, active: np.ndarray, idx: np.ndarray, step0: int,
                 first: bool) -> tuple[LiveMembers, np.ndarray, dict[str, np.ndarray]]:
    """One jitted epoch and the val metrics after it: (live with the new state, losses, val metrics)."""
    plan, inputs, programs, timings = run.plan, run.inputs, run.programs, run.timings
    t = time.perf_counter()
    state, losses = programs.epoch(*epoch_args(plan, live, inputs, active, idx, step0))
    losses = parallel.to_host(losses)
    timings["compile_s" if first else "train_s"] += time.perf_counter() - t  # the benchmarks time epochs 2..
    t = time.perf_counter()
    programs.evaluation_compiled.result()
    val = records.evaluate(programs.evaluate, plan, inputs, live.consts, live.slots, "val", state.variables)[0]
    timings["eval_s"] += time.perf_counter() - t
    return live._replace(state=state), losses, val


def _decide(book: MemberBook, slots: np.ndarray, was_active: np.ndarray, diverged: np.ndarray, epoch: int,
            sweep: SweepSpec) -> None:
    """Stop the diverged, the patient-out and (on halving epochs) the weakest members."""
    book.stop(slots[was_active & diverged], "diverged")
    book.stop(book.exhausted_teams(sweep.patience), "early_stopping")
    if sweep.halving_every and epoch % sweep.halving_every == 0 and epoch < sweep.epochs:
        book.stop(book.whole_teams(halving_victims(book.active, book.best, sweep.halving_fraction)), "halving")


def _report(progress: Callable | None, run: GroupRun, epoch: int, book: MemberBook) -> None:
    if progress is not None:
        progress({"group": run.plan.gid, "epoch": epoch, "epochs": run.sweep.epochs,
                  "active": int(book.active.sum()), "members": len(run.plan.ids), "best": float(np.max(book.best))})


def train_group(run: GroupRun, live: LiveMembers, rngs: list[np.random.Generator],
                progress: Callable | None) -> tuple[dict[int, tuple], list[int]]:
    """Train the group; returns ({member index: (record, unpadded variables, predictions)}, slots computed per
    epoch). ``rngs``: the batch-order generator, one copy per fold with folds."""
    plan, inputs, sweep = run.plan, run.inputs, run.sweep
    book = MemberBook(len(plan.ids), *selection_teams(plan.specs[: len(plan.ids)], sweep.folds))
    done, slots_per_epoch, step0 = {}, [], 0
    finish = lambda lv, which: done.update(records.finalize(run, lv, which, book))  # noqa: E731
    for epoch in range(1, sweep.epochs + 1):
        if not book.active.any():
            break
        real, js = live.slots >= 0, np.maximum(live.slots, 0)
        was_active = real & book.active[js]
        idx = epoch_batches(plan, inputs, rngs, live.slots, view_generator(sweep.data_seed, plan.gid, epoch))
        live, losses, val = _train_epoch(run, live, was_active, idx, step0, epoch == 1)
        slots_per_epoch.append(len(live.slots))
        step0 += plan.steps_per_epoch
        diverged = parallel.to_host(live.state.diverged)
        own = np.full(len(plan.ids), np.nan)
        own[js[was_active & ~diverged]] = np.asarray(val[run.metric], np.float64)[was_active & ~diverged]
        score = book.selection_scores(own)[js]  # per slot: the peers' mean (own score without folds)
        improved = was_active & ~diverged & (score > book.best[js])
        book.record_epoch(epoch, live.slots, was_active, improved, score, losses, val)
        best = keep_best(live.best, live.state.variables, jax.device_put(improved, parallel.member_sharding(plan.mesh)))
        live = live._replace(best=best)
        _decide(book, live.slots, was_active, diverged, epoch, sweep)
        _report(progress, run, epoch, book)
        # Free the compute of stopped members once they hold at least half of the device slots.
        if book.active.any() and np.sum(real & ~book.active[js]) >= len(live.slots) // 2:
            finish(live, np.asarray([s for s in _unfinished(plan, live.slots, done)
                                     if not book.active[live.slots[s]]], int))
            shrink = compaction(live.slots, book.active, plan.mesh)
            if shrink is not None:
                live = _compact(plan, live, *shrink)
    if book.epochs_run.max(initial=0) < sweep.epochs:  # stopped early: the group is done, so its bar ends full
        _report(progress, run, sweep.epochs, book)
    finish(live, _unfinished(plan, live.slots, done))
    return done, slots_per_epoch
