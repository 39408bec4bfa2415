"""experiments/benchmarks/graphfm_pretrain_step.py --quick measures the library's own step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = (
    Path(__file__).resolve().parents[2] / "experiments" / "benchmarks" / "graphfm_pretrain_step.py"
)


# ~40 s on an idle 2-core host (two short pretraining runs and their compiles)
@pytest.mark.slow
def test_quick_rows_are_consistent(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXFM_PE_CACHE": str(tmp_path / "pe")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--models", "small", "--targets", "64,256",
         "--steps", "2", "--repeats", "1", "--out", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["target_budget"] for r in rows] == [64, 256]
    for r in rows:
        assert 0 < r["real_rows"] <= r["node_rows"] == 2048
        assert 0 < r["decoded_targets"] <= r["target_budget"]
        assert r["tokens_per_s"] == pytest.approx(r["real_rows"] / r["step_s"])
        assert r["model_flops_per_step"] > 0 and r["executed_flops_per_step"] > 0
        assert 0 < r["fraction_of_dense"] < 2
    # decoding 4x the targets costs more model FLOPs (the decoder runs per target)
    assert rows[1]["model_flops_per_step"] > rows[0]["model_flops_per_step"]
    assert "| small | 256 |" in (tmp_path / "out" / "results.md").read_text()
