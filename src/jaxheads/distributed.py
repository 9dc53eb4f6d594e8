"""Multi-host set-up on JAX's own runtime: ``jax.distributed.initialize`` with explicit flags or the cluster's env.

On TPU pods, GPU clusters under SLURM/Open MPI, ``jax.distributed.initialize()`` finds the coordinator itself; on
CPU hosts (and in tests) pass the coordinator address, process count and id. CPU processes exchange data
through gloo collectives.
"""

from __future__ import annotations

import os

import jax

_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS")


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
