"""The one device layout every jitted program takes: a ``Mesh(("members", "data"))`` over the visible devices.

Members (independent heads) are sharded first; the batch axis takes the devices left over. Sizes that do not
divide the mesh are padded by the caller with :func:`pad_to` and the padding is masked out of every metric.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MEMBERS, DATA = "members", "data"


def make_mesh(num_members: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (members, data) mesh: as many devices on the member axis as divide ``num_members`` rounded up to the
    device count's largest useful factor, the rest on the data axis. ``num_members=1`` gives an all-data mesh."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    member_devices = max(d for d in _divisors(n) if d <= max(1, num_members))
    return Mesh(np.asarray(devices).reshape(member_devices, n // member_devices), (MEMBERS, DATA))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P((MEMBERS, DATA)))


def member_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (member) axis split over the member axis; replicated over data."""
    return NamedSharding(mesh, P(MEMBERS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Whole array on every device."""
    return NamedSharding(mesh, P())


def pad_to(x: np.ndarray, multiple: int, axis: int = 0) -> tuple[np.ndarray, int]:
    """Pad ``x`` along ``axis`` with zeros up to a multiple of ``multiple``; returns (padded, original length)."""
    n = x.shape[axis]
    target = math.ceil(n / multiple) * multiple if n else multiple
    if target == n:
        return x, n
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, target - n)
    return np.pad(x, widths), n


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def sweep_mesh(num_members: int, batch_size: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh one sweep group trains on: :func:`make_mesh`, except that the data axis must divide the batch
    size (each data shard takes an equal slice of every batch); when it does not, devices move to the member
    axis (more member padding, never a ragged batch)."""
    mesh = make_mesh(num_members, devices)
    n, member_devices = mesh.size, mesh.shape[MEMBERS]
    while batch_size % (n // member_devices):
        member_devices = min(d for d in _divisors(n) if d > member_devices)
    if member_devices == mesh.shape[MEMBERS]:
        return mesh
    return Mesh(mesh.devices.reshape(member_devices, n // member_devices), (MEMBERS, DATA))  # same device order


def padded_members(num_members: int, mesh: Mesh) -> int:
    """Member count rounded up to a multiple of the mesh's member axis (the extra members are dummies)."""
    m = mesh.shape[MEMBERS]
    return max(m, math.ceil(num_members / m) * m)


def to_host(x: jax.Array | np.ndarray) -> np.ndarray:
    """A device array as numpy on this host. An array spread over several processes' devices (multi-host) is
    all-gathered first, so every process sees the same whole value."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
