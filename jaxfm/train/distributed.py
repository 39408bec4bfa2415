"""Multi-process start-up: ``jax.distributed.initialize`` from flags or the environment.

Three cases, checked in order:

1. explicit ``coordinator`` (``HOST:PORT``), ``num_processes`` and ``process_id`` (CLI flags
   ``--coordinator --num-processes --process-id``), e.g. two processes on one machine;
2. a multi-process environment JAX detects by itself: a Cloud TPU pod slice (``TPU_WORKER_*`` /
   ``MEGASCALE_*`` variables), or a SLURM job step with several tasks (``SLURM_NTASKS`` > 1);
3. otherwise a single process: nothing to initialize.

On CPU the cross-process collectives use gloo. Must run before anything touches a device.
"""

from __future__ import annotations

import os

import jax

__all__ = ["initialize", "is_main_process"]


def _detected_cluster() -> str | None:
    env = os.environ
    if any(k.startswith(("TPU_WORKER_HOSTNAMES", "MEGASCALE_")) for k in env):
        hosts = env.get("TPU_WORKER_HOSTNAMES", "")
        if "," in hosts or "MEGASCALE_COORDINATOR_ADDRESS" in env:
            return "tpu-pod"
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    return None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> str:
    """Initializes ``jax.distributed`` when needed; returns how (``single``/``explicit``/...).

    Raises:
      ValueError: only some of the explicit arguments given, or out of range.
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            "--coordinator, --num-processes and --process-id go together (got "
            f"coordinator={coordinator!r}, num_processes={num_processes}, "
            f"process_id={process_id})"
        )
    if all(given):
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(
                f"--process-id must be in [0, --num-processes), got {process_id} of {num_processes}"
            )
        if ":" not in coordinator:
            raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
        if num_processes == 1:
            return "single"
        _cpu_collectives()
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
        return "explicit"
    cluster = _detected_cluster()
    if cluster is None:
        return "single"
    jax.distributed.initialize()  # JAX's own TPU / SLURM cluster detection
    return cluster


def _cpu_collectives() -> None:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms in ("", "cpu") or platforms.startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def is_main_process() -> bool:
    """Process 0 writes logs, summaries and the final model."""
    return jax.process_index() == 0
