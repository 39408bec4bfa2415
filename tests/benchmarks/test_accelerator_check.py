"""experiments/benchmarks/accelerator_check.py --cpu-smoke runs end to end and prints every row."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "benchmarks" / "accelerator_check.py"


# ~50 s of compiles on an idle 2-core host: the CI smoke of the accelerator check
@pytest.mark.slow
def test_cpu_smoke(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = proc.stdout
    for section in ("attention", "graphfm", "input", "fimp", "packed vs padded", "feature MLP"):
        assert f"| {section} |" in table, section
    assert "GraphFM/encoder/cross_attention | xla" in table
    for needle in ("small (1 block)", "medium (1 block)", "MFU", "tokens/s", "input share"):
        assert needle in table, needle
    assert "failed" not in table
    assert out.stat().st_size > 0
