"""Multi-process start-up decisions (no cluster needed: only what would be initialized)."""

from __future__ import annotations

import pytest

from jaxfm.train import distributed

VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE",
        "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS", "JAXFM_DISTRIBUTED")  # fmt: skip


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),  # one task: nothing to join
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, "slurm"),
        ({"TPU_WORKER_HOSTNAMES": "10.0.0.1,10.0.0.2"}, "tpu-pod"),
        ({"TPU_ACCELERATOR_TYPE": "v5litepod-8"}, "tpu-vm"),
        ({"JAXFM_DISTRIBUTED": "1"}, "forced"),
    ],
)
def test_detected_cluster(monkeypatch, env, expected):
    for k in VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(distributed, "_tpu_vm_devices", lambda: False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert distributed._detected_cluster() == expected


def test_explicit_flags_are_checked_before_touching_jax(monkeypatch):
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: 1 / 0)
    with pytest.raises(ValueError, match="go together"):
        distributed.initialize("localhost:1234", None, 0)
    with pytest.raises(ValueError, match=r"\[0, --num-processes\)"):
        distributed.initialize("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.initialize("localhost", 2, 0)
    assert distributed.initialize("localhost:1234", 1, 0) == "single"
