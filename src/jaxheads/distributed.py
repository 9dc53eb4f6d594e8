"""Process set-up before JAX's backends start: multi-host runs on JAX's own runtime (``jax.distributed.initialize``
with explicit flags or the cluster's env), and the split of a CPU host into one JAX device per core.

On TPU pods, GPU clusters under SLURM/Open MPI, ``jax.distributed.initialize()`` finds the coordinator itself; on
CPU hosts (and in tests) pass the coordinator address, process count and id. CPU processes exchange data
through gloo collectives.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax

_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS")
# Most JAX devices a CPU host is split into. Measured only on 2 cores (experiments/sweep/bench_sweep.py, README); the cap
# keeps a many-core host from putting a small group's spare devices on the data axis, where they only add
# collectives (host devices share one pool of cores).
CPU_SPLIT_MAX = 8


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 120,
    heartbeat_timeout_s: int = 100,
) -> bool:
    """Join a multi-process run when asked to (flags) or when the environment describes one; returns whether it did.

    A single process with no flags and no cluster environment stays single-process (no-op). A process that
    stops answering for ``heartbeat_timeout_s`` fails the others (they exit with an error instead of hanging).
    """
    explicit = coordinator is not None or num_processes is not None or process_id is not None
    if not explicit and not any(var in os.environ for var in _CLUSTER_ENV):
        return False
    if explicit and (coordinator is None or num_processes is None or process_id is None):
        raise ValueError("multi-process run: give all of --coordinator, --num-processes and --process-id")
    # Only the CPU backend reads this; it must be set before the backend starts (so no backend query here).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
    )
    return True


def is_main_process() -> bool:
    """Only process 0 writes reports and prints the leaderboard."""
    return jax.process_index() == 0


def shutdown() -> None:
    """Leave the multi-process run cleanly (no-op for a single process)."""
    if jax.process_count() > 1:
        jax.distributed.shutdown()


def cpu_device_count(env: Mapping[str, str], cores: int, cap: int = CPU_SPLIT_MAX) -> int | None:
    """How many JAX devices to split a CPU host into: one per core, at most ``cap``; ``None`` where the user already
    chose (``JAX_NUM_CPU_DEVICES``, or ``xla_force_host_platform_device_count`` in ``XLA_FLAGS``) or nothing splits."""
    if "JAX_NUM_CPU_DEVICES" in env or "xla_force_host_platform_device_count" in env.get("XLA_FLAGS", ""):
        return None
    n = min(cores, cap)
    return n if n > 1 else None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def split_cpu_host(cap: int = CPU_SPLIT_MAX) -> int | None:
    """Give JAX's CPU backend one device per core (see :func:`cpu_device_count`), so that a sweep's independent
    members train side by side instead of sharing every matmul between the cores; returns the count, or ``None``
    when nothing changed (the user chose, one core, or a backend already started: JAX fixes its devices then).

    Call it before any JAX computation. Accelerator hosts are unaffected: their sweeps run on the accelerators."""
    n = cpu_device_count(os.environ, usable_cores(), cap)
    if n is None or jax.config.jax_num_cpu_devices != -1:
        return None
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already initialised (e.g. the CLI called in-process after JAX ran)
        return None
    return n
