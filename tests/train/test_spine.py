"""The training spine's equivalences: 1 device = 8 devices, killed-and-resumed = uninterrupted.

Each run happens in a subprocess (8 simulated CPU devices need their own XLA flags; SIGKILL
needs a process to kill). Losses are compared from ``metrics.jsonl``, which a resumed run
continues, so "bit-identical" means the whole history of both runs is the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

DRIVER = Path(__file__).with_name("spine_driver.py")
REPO = Path(__file__).resolve().parents[2]


def _env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(*args, devices: int = 1) -> dict:
    out = subprocess.run(
        [sys.executable, str(DRIVER), *map(str, args)],
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _losses(workdir: Path, key: str) -> list[float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)[key] for x in lines if key in json.loads(x)]


def _kill_after_checkpoint(args, checkpoints: Path, min_step: int = 1) -> None:
    """Starts the driver and SIGKILLs it once a checkpoint of step >= min_step is complete."""
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), *map(str, args)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            done = (
                [
                    int(p.name)
                    for p in checkpoints.glob("*")
                    if p.name.isdigit() and (p / "meta").exists()
                ]
                if checkpoints.exists()
                else []
            )
            if done and max(done) >= min_step:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_fimp_on_8_devices_equals_one_device(tmp_path):
    one = _run("fimp", tmp_path / "one", "--devices", 8, devices=8)
    eight = _run("fimp", tmp_path / "eight", "--mesh", "data=2,fsdp=4", "--devices", 8,
                 devices=8)  # fmt: skip
    np.testing.assert_allclose(
        _losses(tmp_path / "eight", "train_loss"),
        _losses(tmp_path / "one", "train_loss"),
        rtol=1e-5,
        atol=1e-6,
    )
    assert abs(one["test"]["accuracy"] - eight["test"]["accuracy"]) < 1e-5


@pytest.mark.slow
def test_fimp_killed_and_resumed_equals_uninterrupted(tmp_path):
    full = _run("fimp", tmp_path / "full")
    _kill_after_checkpoint(["fimp", tmp_path / "cut"], tmp_path / "cut" / "checkpoints", 3)
    resumed = _run("fimp", tmp_path / "cut", "--resume")
    assert _losses(tmp_path / "cut", "train_loss") == _losses(tmp_path / "full", "train_loss")
    assert resumed == full


@pytest.mark.slow
def test_pretraining_killed_and_resumed_equals_uninterrupted(tmp_path):
    _run("pretrain", tmp_path / "full")
    _kill_after_checkpoint(["pretrain", tmp_path / "cut"], tmp_path / "cut" / "checkpoints", 2)
    _run("pretrain", tmp_path / "cut", "--resume")
    full, cut = _losses(tmp_path / "full", "loss"), _losses(tmp_path / "cut", "loss")
    assert len(full) == 6 and cut == full


@pytest.mark.slow
def test_finetune_killed_and_resumed_equals_uninterrupted_and_keeps_finished_splits(tmp_path):
    full = _run("mft", tmp_path / "full")
    cut = tmp_path / "cut"
    _kill_after_checkpoint(["mft", cut], cut / "split_1" / "checkpoints", 1)
    finished = (cut / "split_0" / "result.json").read_text()
    stamp = (cut / "split_0" / "metrics.jsonl").stat().st_mtime_ns
    resumed = _run("mft", cut, "--resume")
    assert resumed == full
    assert (cut / "split_0" / "result.json").read_text() == finished
    assert (cut / "split_0" / "metrics.jsonl").stat().st_mtime_ns == stamp  # not redone
    for split in ("split_0", "split_1"):
        assert _losses(cut / split, "train_loss") == _losses(tmp_path / "full" / split,
                                                             "train_loss")  # fmt: skip
