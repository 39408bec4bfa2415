"""`jaxfm pretrain` as separate processes: two-process runs, SIGKILL + --resume, SIGTERM save.

Each case launches the real CLI (``python -m jaxfm.cli pretrain``) on a tiny synthetic corpus and
compares the JSON step lines it prints.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY = ["--synthetic", "6", "--node-budget", "512", "--seed", "5", "--no-progress"]


def _env(devices: int = 1) -> dict:
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return env


def _cmd(workdir: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxfm.cli", "pretrain", "--steps", str(steps),
            "--workdir", str(workdir), *TINY, *extra]  # fmt: skip


def _lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


def _steps(lines: list[dict]) -> dict[int, float]:
    return {x["step"]: x["loss"] for x in lines if "loss" in x}


def _run(cmd, env) -> list[dict]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _lines(proc.stdout)


def _run_until(cmd, env, step: int, sig: int) -> tuple[int, list[dict], str]:
    """Starts ``cmd``, sends ``sig`` once the line of ``step`` is printed; -> (rc, lines, err)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("{") and json.loads(line).get("step") == step:
            proc.send_signal(sig)
            break
    rest, err = proc.communicate(timeout=900)
    return proc.returncode, _lines("".join(out) + rest), err


@pytest.mark.slow
def test_sigkill_resume_and_sigterm_save(tmp_path):
    steps = 8
    ref = _steps(_run(_cmd(tmp_path / "ref", steps), _env()))
    assert sorted(ref) == list(range(1, steps + 1))

    # SIGKILL at a random step (checkpoints every step, saved asynchronously: the newest may be
    # half-written and must be skipped), then --resume: the losses continue exactly
    kill_at = random.Random(0).randint(2, steps - 2)
    work = tmp_path / "killed"
    cmd = _cmd(work, steps, "--checkpoint-every", "1")
    rc, before, _ = _run_until(cmd, _env(), kill_at, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert not (work / "model").exists()
    after = _steps(_run([*cmd, "--resume"], _env()))
    first = min(after)
    assert 1 < first <= kill_at + 1 and sorted(after) == list(range(first, steps + 1))
    for s, loss in after.items():
        assert loss == pytest.approx(ref[s], rel=1e-6, abs=1e-7), s
    assert _steps(before)[first - 1] == pytest.approx(ref[first - 1], rel=1e-6)

    # SIGTERM: the step in flight finishes, a checkpoint is written, exit code 143
    term_at = 3
    work = tmp_path / "terminated"
    rc, lines, err = _run_until(_cmd(work, steps), _env(), term_at, signal.SIGTERM)
    assert rc == 143, err[-3000:]
    summary = lines[-1]["summary"]
    assert summary["preempted"] is True and term_at <= summary["last_step"] < steps
    saved = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == summary["last_step"]
    resumed = _steps(_run([*_cmd(work, steps), "--resume"], _env()))
    assert min(resumed) == summary["last_step"] + 1
    np.testing.assert_allclose([resumed[s] for s in resumed], [ref[s] for s in resumed], rtol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """2 processes x 2 CPU devices (gloo collectives), mesh data=2,fsdp=2 == 1 process, 1 device."""
    steps = 5
    ref = _steps(_run(_cmd(tmp_path / "one", steps, "--devices", "4"), _env(1)))
    port = _free_port()
    procs = [
        subprocess.Popen(
            _cmd(
                tmp_path / "two",
                steps,
                "--mesh",
                "data=2,fsdp=2",
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ),
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    main, other = _lines(outs[0][0]), _lines(outs[1][0])
    assert other == []  # only process 0 prints
    assert main[-1]["summary"]["processes"] == 2
    got = _steps(main)
    assert sorted(got) == list(range(1, steps + 1))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)],
                               rtol=1e-5)  # fmt: skip
