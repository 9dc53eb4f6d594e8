"""The group plan: which members share one compiled program, and how they are padded and laid out.

A :class:`GroupPlan` is frozen and host-only: a pure function of the member specs, the features' shapes and the
mesh, so it can be tested without placing anything on a device. Members share a group when their program
structure (``HeadSpec.structure`` without the pooling of conv-free heads, whose pooled width must agree), optimiser
and batch size agree; ``depth_grouping="gated"`` also merges members that differ only in depth (>= 1).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jaxheads import heads, parallel
from jaxheads.heads import HeadSpec

from .program import MemberConsts, ProgramKey
from .spec import MemberSpec, SweepSpec

# From this many parameters per member, map_batch="auto" on a CPU trains members one after another (k=1) so each
# member's weights stay in cache through its steps; the crossover is measured in experiments/sweep/bench_sweep.py.
CPU_MEMBER_MAJOR_PARAMS = 250_000


def program_structure(head: HeadSpec) -> HeadSpec:
    """What a group's program computes: a head without conv stages reads features pooled once before training
    (``heads.pool``, one array per pooling in the group), so its program starts at the dense layers."""
    structure = head.structure()
    return structure if structure.conv else structure.replace(pooling="none")


def cached_shape(head: HeadSpec, feature_shapes: Mapping[str, tuple[int, ...] | None]) -> tuple[int, ...]:
    """Per-example shape of the cached features ``head`` reads: pooled vectors for pooling "none", else maps."""
    shape = feature_shapes[head.feature_kind]
    if shape is None:
        raise ValueError(f"HeadSpec.pooling: {head.pooling!r} needs `{head.feature_kind}` features, which the splits "
                         f"lack")
    return tuple(shape)


def group_members(members: Sequence[MemberSpec], feature_shapes: Mapping[str, tuple[int, ...] | None],
                  depth_grouping: str = "separate") -> list[list[int]]:
    """Member indices per compiled group (module docstring). Linear probes stay in their own group under "gated":
    a gated layer 0 could not be an identity between different widths."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        structure = program_structure(m.head)
        depth: Any = len(m.head.hidden)
        if depth_grouping == "gated" and m.head.hidden:
            structure, depth = structure.replace(hidden=()), "any depth >= 1"
        width = None if m.head.conv else heads.pooled_dim(m.head, cached_shape(m.head, feature_shapes))
        groups.setdefault((structure, depth, width, m.optimizer, m.batch_size), []).append(i)
    return list(groups.values())


def member_bytes(spec: HeadSpec, feature_shape: tuple[int, ...], batch: int, padded: Sequence[int]) -> int:
    """Rough activation bytes of one member's step (forward + backward), for the memory cap on k."""
    per_example = heads.pooled_dim(spec, feature_shape) + sum(padded) * 3 + spec.num_classes * 2
    if spec.conv:
        h, w, c = feature_shape
        for s in spec.conv:
            h, w = math.ceil(h / s.stride), math.ceil(w / s.stride)
            per_example += 3 * h * w * s.features
            h, w = h // s.pool, w // s.pool
    return 4 * batch * per_example * 2


@dataclasses.dataclass(frozen=True, eq=False)
class GroupPlan:
    """One group: its members, program, padding and layout. Slots are the device positions of the group's member
    axis: the real members first, then copies of the first member as padding to a multiple of the mesh."""

    gid: int
    ids: tuple[int, ...]  # indices into the sweep's expanded members
    specs: tuple[MemberSpec, ...]  # one per slot
    structure: HeadSpec  # the program's structure (module docstring)
    optimizer: str
    batch: int  # global batch: the members' batch size, at most the training examples
    n_train: int  # training rows (folds: of the fold with the fewest, so every fold runs the same steps)
    sources: tuple[str, ...]  # the group's poolings: one input array each, every member reads its own
    feature_shapes: Mapping[str, tuple[int, ...]]  # pooling -> per-example shape of the cached features it reads
    input_shape: tuple[int, ...]  # per-example shape of the program's input
    true_hidden: np.ndarray  # (slots, depth) int32: each slot's true widths (0 beyond its depth)
    padded: tuple[int, ...]  # the program's hidden widths
    gated: bool  # several depths share the program; layers beyond a member's depth are an identity
    mesh: Mesh
    memory_cap: int  # members whose step activations fit ``member_memory_mb`` together on one device

    @property
    def slots(self) -> int:
        return len(self.specs)

    @property
    def local_slots(self) -> int:
        return self.slots // self.mesh.shape[parallel.MEMBERS]

    @property
    def depths(self) -> list[int]:
        """True depth of each real member."""
        return [len(s.head.hidden) for s in self.specs[:len(self.ids)]]

    @property
    def per_member_batches(self) -> bool:
        """Folds: every member trains on its own fold's rows, so it gathers its own batches."""
        return any(s.fold is not None for s in self.specs)

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch

    def program_key(self, map_batch: int | str, task: str) -> ProgramKey:
        return ProgramKey(self.structure, self.optimizer, self.batch, self.mesh, map_batch, self.gated,
                          dropout=any(s.head.dropout for s in self.specs),
                          input_dropout=any(s.head.input_dropout for s in self.specs), task=task,
                          per_member_batches=self.per_member_batches)

    def init_args(self) -> tuple[np.ndarray, ...]:
        """Arguments of :func:`program.group_init_program`, one row per slot."""
        depths = [len(s.head.hidden) for s in self.specs]
        return (np.asarray([s.seed for s in self.specs], np.uint32), self.true_hidden, np.asarray(depths, np.int32),
                np.asarray([s.learning_rate for s in self.specs], np.float32),
                np.asarray([s.weight_decay for s in self.specs], np.float32))

    def host_consts(self, keys: Any) -> MemberConsts:
        """The members' constants on the host; ``keys`` come from the init program."""
        return MemberConsts(
            dropout=np.asarray([s.head.dropout for s in self.specs], np.float32),
            input_dropout=np.asarray([s.head.input_dropout for s in self.specs], np.float32),
            keys=keys,
            masks=tuple(np.stack([(np.arange(p) < self.true_hidden[r, i]).astype(np.float32)
                                  for r in range(self.slots)]) for i, p in enumerate(self.padded)),
            depth=np.asarray([len(s.head.hidden) for s in self.specs], np.int32),
            source=np.asarray([self.sources.index(s.head.pooling) for s in self.specs], np.int32))

    def padded_params(self) -> int:
        return heads.param_count(self.structure.replace(hidden=self.padded), self.input_shape)


def _input_shape(head: HeadSpec, feature_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-example shape of a group program's input: the maps for conv heads, else the pooled features."""
    if head.conv:
        return feature_shape
    example = jax.ShapeDtypeStruct((1, *feature_shape), np.float32)
    return tuple(jax.eval_shape(functools.partial(heads.pool, head), example).shape[1:])


def _padding(specs: Sequence[MemberSpec]) -> tuple[np.ndarray, tuple[int, ...], bool]:
    """(true widths per slot, the program's widths, gated). Gated: every layer takes the widest width so that a
    gated layer can pass its input through unchanged, and a member's missing layers have true width 0."""
    depths = [len(s.head.hidden) for s in specs]
    gated = len(set(depths)) > 1
    true_hidden = np.zeros((len(specs), max(depths)), np.int32)
    for r, s in enumerate(specs):
        true_hidden[r, :len(s.head.hidden)] = s.head.hidden
    padded = ((int(true_hidden.max()),) * max(depths) if gated else tuple(int(w) for w in true_hidden.max(axis=0)))
    return true_hidden, padded, gated


def make_plan(gid: int, ids: Sequence[int], members: Sequence[MemberSpec],
              feature_shapes: Mapping[str, tuple[int, ...] | None], n_train: int, sweep: SweepSpec,
              mesh: Mesh | None) -> GroupPlan:
    """The plan of group ``gid`` (members ``ids``); ``mesh`` defaults to ``parallel.sweep_mesh`` for it."""
    first = max((members[i] for i in ids), key=lambda m: len(m.head.hidden))  # the deepest (gated groups)
    batch = min(first.batch_size, n_train)
    mesh = mesh if mesh is not None else parallel.sweep_mesh(len(ids), batch)
    data_shards = mesh.shape[parallel.DATA]
    if batch % data_shards:
        raise ValueError(f"batch size {batch} does not split over the mesh's data axis ({data_shards} devices)")
    slots = parallel.padded_members(len(ids), mesh)
    specs = tuple(members[i] for i in ids) + (members[ids[0]],) * (slots - len(ids))
    true_hidden, padded, gated = _padding(specs)
    shapes = {members[i].head.pooling: cached_shape(members[i].head, feature_shapes) for i in ids}
    cap_bytes = member_bytes(first.head, shapes[first.head.pooling], batch // data_shards, padded)
    return GroupPlan(
        gid=gid, ids=tuple(ids), specs=specs, structure=program_structure(first.head), optimizer=first.optimizer,
        batch=batch, n_train=n_train, sources=tuple(dict.fromkeys(members[i].head.pooling for i in ids)),
        feature_shapes=shapes, input_shape=_input_shape(first.head, shapes[first.head.pooling]),
        true_hidden=true_hidden, padded=padded, gated=gated, mesh=mesh,
        memory_cap=max(1, int(sweep.member_memory_mb * 2**20 // max(1, cap_bytes))))


def fixed_map_batch(plan: GroupPlan, setting: str | int) -> int | str:
    """How members are batched on a device, for every setting but "probe". ``auto``: all local members in one
    ``vmap`` when their activations fit the memory cap, else ``lax.map`` in chunks of as many as fit; on a CPU,
    members of at least ``CPU_MEMBER_MAJOR_PARAMS`` parameters one after another (k=1). An int is capped by the
    memory bound too."""
    if setting == "auto":
        if plan.mesh.devices.flat[0].platform == "cpu" and plan.padded_params() >= CPU_MEMBER_MAJOR_PARAMS:
            return 1
        return "vmap" if plan.local_slots <= plan.memory_cap else plan.memory_cap
    return setting if setting == "vmap" else min(int(setting), plan.memory_cap)


def probe_candidates(plan: GroupPlan) -> list[int | str]:
    """lax.map batch sizes worth timing: 1, 4, 16 and the whole local member set (vmap), capped by memory."""
    ks: list[int | str] = [k for k in (1, 4, 16) if k < plan.local_slots and k <= plan.memory_cap]
    if plan.local_slots <= plan.memory_cap:
        ks.append("vmap")
    return ks or [1]
