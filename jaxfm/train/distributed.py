"""Multi-process start-up: ``jax.distributed.initialize`` from flags or the environment.

Three cases, checked in order:

1. explicit ``coordinator`` (``HOST:PORT``), ``num_processes`` and ``process_id`` (CLI flags
   ``--coordinator --num-processes --process-id``), e.g. two processes on one machine;
2. a multi-process environment JAX detects by itself: a Cloud TPU VM (``TPU_WORKER_HOSTNAMES``,
   ``MEGASCALE_*``, ``TPU_ACCELERATOR_TYPE`` variables or TPU device files; JAX reads the slice
   from the metadata server, one host included), a SLURM job step with several tasks
   (``SLURM_NTASKS`` > 1), or any cluster JAX knows when ``JAXFM_DISTRIBUTED=1``;
3. otherwise a single process: nothing to initialize.

On CPU the cross-process collectives use gloo. Must run before anything touches a device.
"""

from __future__ import annotations

import os

import jax

__all__ = ["initialize", "is_main_process"]


def _detected_cluster() -> str | None:
    env = os.environ
    if env.get("JAXFM_DISTRIBUTED", "").lower() in ("1", "true", "yes"):
        return "forced"  # JAX's own detection (any cluster type it knows)
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in env:
        return "tpu-pod"
    if env.get("TPU_ACCELERATOR_TYPE") or env.get("CLOUD_TPU_TASK_ID") or _tpu_vm_devices():
        return "tpu-vm"  # JAX reads the slice's hosts from the TPU metadata server
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    return None


def _tpu_vm_devices() -> bool:
    return os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")


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
