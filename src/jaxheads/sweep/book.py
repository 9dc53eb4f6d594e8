"""A group's run on the host: what it trains with (:class:`GroupRun`) and its members' bookkeeping
(:class:`MemberBook`: best scores, epochs, stop reasons and curves, by member position).

Which epoch a member keeps (:func:`selection_teams`). On a fixed split, the epoch of its best val score: chosen
on the very rows that then score it, so its val figure is optimistic (the report says so; the honest figure is
the test split's). With K folds, cross-fitted: the member of fold k keeps the epoch that maximises the mean val
curve of the config's *other* folds of the same partition (every seed of it), so no member's kept epoch is chosen
on any row it is scored on, and its out-of-fold predictions score an epoch picked without them. The folds of a
(config, partition) are one team: they stop together (early stopping once every member of the team has gone
``patience`` epochs without its selection curve improving; successive halving takes whole teams), so every
member's peers have a val score at every epoch it trains. Residual selection, not removed: the team's last
epoch depends (through the stopping rule) on all its folds' rows, and choosing the best config among many is a
selection of its own (the "vs best" intervals re-select it, :mod:`.verdicts`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

import numpy as np

if TYPE_CHECKING:
    from .group import Programs
    from .inputs import GroupInputs
    from .plan import GroupPlan
    from .spec import MemberSpec, SweepSpec


class GroupRun(NamedTuple):
    """What every stage of one group's training reads: its plan, placed inputs, compiled programs, the sweep, the
    ranking metric, the task, the sweep's members and the group's timings (seconds, accumulated in place)."""

    plan: GroupPlan
    inputs: GroupInputs
    programs: Programs
    sweep: SweepSpec
    metric: str
    task: str
    members: Sequence[MemberSpec]
    timings: dict[str, float]


def selection_teams(specs: Sequence[MemberSpec], folds: int | str | None) -> tuple[list[np.ndarray], np.ndarray]:
    """(peers, team) of a group's members ``specs``: ``peers[j]`` the positions whose mean val score chooses
    member j's kept epoch, ``team[j]`` the id of the members that stop together (module docstring). Without a
    fold, each member is its own peer and team. With folds, K = ``folds`` tells the partition of fold id r * K + k
    (if it is not a number, every fold id is taken as one partition)."""
    k = folds if isinstance(folds, int) and not isinstance(folds, bool) else None
    keys = [(j,) if s.fold is None else (s.config_id(), s.fold // k if k else 0) for j, s in enumerate(specs)]
    ids: dict[tuple, int] = {}
    team = np.asarray([ids.setdefault(key, len(ids)) for key in keys], int)
    peers = []
    for j, s in enumerate(specs):
        mates = np.flatnonzero(team == team[j])
        other = [i for i in mates if s.fold is not None and specs[i].fold != s.fold]
        peers.append(np.asarray(other if other else [j], int))
    return peers, team


class MemberBook:
    """Host bookkeeping of a group's members, indexed by member position j (not by device slot); only its own
    methods change it. ``best`` is the best *selection* score (the mean of the peers' val scores, see
    :func:`selection_teams`; a member's own val score without folds); ``best_val`` its own val metrics at the
    kept epoch."""

    def __init__(self, n: int, peers: Sequence[np.ndarray] | None = None, team: np.ndarray | None = None):
        self.peers = list(peers) if peers is not None else [np.asarray([j]) for j in range(n)]
        self.team = np.asarray(team) if team is not None else np.arange(n)
        self.best = np.full(n, -np.inf)
        self.best_epoch = np.zeros(n, int)
        self.epochs_run = np.zeros(n, int)
        self.since = np.zeros(n, int)  # epochs since the last improvement
        self.active = np.ones(n, bool)
        self.stopped = ["completed"] * n
        self.curves: list[dict[str, Any]] = [{"train_loss": [], "val": {}} for _ in range(n)]
        self.best_val: list[dict[str, np.ndarray] | None] = [None] * n  # val metrics at best_epoch

    def record_epoch(self, epoch: int, slots: np.ndarray, was_active: np.ndarray, improved: np.ndarray,
                     score: np.ndarray, losses: np.ndarray, val: Mapping[str, np.ndarray]) -> None:
        """Book one epoch of the slots that trained in it."""
        for slot in np.flatnonzero(was_active):
            j = slots[slot]
            self.epochs_run[j] = epoch
            self.curves[j]["train_loss"].append(float(np.mean(losses[slot])))
            for k, v in val.items():
                if v[slot].ndim == 0:
                    self.curves[j]["val"].setdefault(k, []).append(float(v[slot]))
            if improved[slot]:
                self.best[j], self.best_epoch[j], self.since[j] = score[slot], epoch, 0
                self.best_val[j] = {k: v[slot] for k, v in val.items()}
            else:
                self.since[j] += 1

    def selection_scores(self, own: np.ndarray) -> np.ndarray:
        """(n,) each member's selection score from every member's own val score this epoch ``own`` (n,) (NaN where
        a member did not train or diverged): the mean over its peers that have one; its own score when none has
        (every other fold of its team diverged), -inf when that is missing too."""
        out = np.full(len(own), -np.inf)
        for j, peers in enumerate(self.peers):
            values = own[peers][np.isfinite(own[peers])]
            if values.size:
                out[j] = values.mean()
            elif np.isfinite(own[j]):
                out[j] = own[j]
        return out

    def whole_teams(self, js: np.ndarray) -> np.ndarray:
        """The active members of the teams of ``js``."""
        return np.flatnonzero(self.active & np.isin(self.team, self.team[np.asarray(js, int)]))

    def exhausted_teams(self, patience: int | None) -> np.ndarray:
        """Active members whose whole team has gone ``patience`` epochs without improving (None: never)."""
        if patience is None:
            return np.zeros(0, int)
        done = self.active & (self.since >= patience)
        return np.flatnonzero(done & ~np.isin(self.team, self.team[self.active & ~done]))

    def stop(self, js: np.ndarray, why: str) -> None:
        for j in js:
            self.stopped[j] = why
        self.active[js] = False
