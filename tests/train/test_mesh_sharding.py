"""Sharded pretraining equals single-device pretraining (issue 5), and sharding rules/bytes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxfm.graphfm import graphfm_config
from jaxfm.graphfm.summary import parameter_shapes
from jaxfm.model_dir import load_model_dir
from jaxfm.params import flatten, paths
from jaxfm.train.sharding import bytes_per_device, logical_axes, parse_mesh, spec_for, specs_for

DRIVER = Path(__file__).with_name("mesh_driver.py")


def _drive(tmp_path: Path, devices: int, *specs: str) -> dict:
    out = tmp_path / f"runs_{devices}.json"
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(out), str(tmp_path), *specs],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _params(tmp_path: Path, name: str) -> dict:
    return flatten(load_model_dir(tmp_path / name / "model")[0])


@pytest.mark.slow
def test_meshes_match_single_device_and_restore_across_meshes(tmp_path):
    """5 steps on data=8, data=4,fsdp=2, data=2,fsdp=2,model=2 == one device (fp32, 1e-5).

    Also: a checkpoint saved on 8 devices (fsdp=8, step 3) resumes on 1 device and continues
    with exactly the losses of the uninterrupted single-device run.
    """
    sharded = _drive(
        tmp_path,
        8,
        "dp8:data=8:8:5",
        "dp4fsdp2:data=4,fsdp=2:8:5",
        "dp2fsdp2mp2:data=2,fsdp=2,model=2:4:5",
        "fsdp8_part:fsdp=8:8:3",
    )
    shutil.copytree(tmp_path / "fsdp8_part", tmp_path / "resumed")
    single = _drive(tmp_path, 1, "one8::8:5", "one4::4:5", "resumed::8:5:resume")

    for name, ref in [("dp8", "one8"), ("dp4fsdp2", "one8"), ("dp2fsdp2mp2", "one4")]:
        assert sharded[name]["summary"]["mesh"] != single[ref]["summary"]["mesh"]
        np.testing.assert_allclose(
            sharded[name]["losses"], single[ref]["losses"], rtol=1e-5, err_msg=name
        )
        got, want = _params(tmp_path, name), _params(tmp_path, ref)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(got[k], want[k], atol=1e-5, rtol=1e-5, err_msg=f"{name} {k}")
    # the reference runs really differ from each other (4 vs 8 buckets per step)
    assert not np.allclose(single["one8"]["losses"], single["one4"]["losses"])

    # saved on an 8-device mesh at step 3, restored onto 1 device: steps 4, 5 continue exactly
    assert sharded["fsdp8_part"]["losses"] == pytest.approx(single["one8"]["losses"][:3], rel=1e-5)
    assert single["resumed"]["steps"] == [4, 5]
    np.testing.assert_allclose(single["resumed"]["losses"], single["one8"]["losses"][3:], rtol=1e-5)


def test_parse_mesh():
    assert parse_mesh(None, 8) == {"data": 1, "fsdp": 8, "model": 1}
    assert parse_mesh("data=4,fsdp=2", 8) == {"data": 4, "fsdp": 2, "model": 1}
    assert parse_mesh("data=2,fsdp=-1,model=2", 8) == {"data": 2, "fsdp": 2, "model": 2}
    for bad, match in [
        ("data=3", "multiply to 3"),
        ("pipeline=8", "unknown axis"),
        ("data=-1,fsdp=-1", "at most one -1"),
        ("data4", "entries must look like"),
        ("data=3,fsdp=-1", "not divisible"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_mesh(bad, 8)


def test_every_large_matrix_has_logical_axes_and_fsdp_divides_medium():
    shapes = parameter_shapes(graphfm_config("medium"))
    names = jax.tree.leaves(logical_axes(shapes), is_leaf=lambda t: isinstance(t, tuple))
    sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)]
    unnamed = [
        p
        for p, n, size in zip(paths(shapes), names, sizes, strict=True)
        if size >= 4096 and all(a is None for a in n)
    ]
    assert unnamed == []
    total, per_device = bytes_per_device(shapes, {"data": 1, "fsdp": 8, "model": 1})
    # FSDP: a device holds ~1/8 of the parameters (only small norms/biases stay replicated)
    assert total / 8 <= per_device <= 1.04 * total / 8
    total2, per_device2 = bytes_per_device(shapes, {"data": 8, "fsdp": 1, "model": 1})
    assert total2 == total and per_device2 == total  # pure data parallel: full copies


def test_specs_replicate_what_a_mesh_axis_does_not_divide():
    assert tuple(spec_for("encoder/latents", (30, 64), {"fsdp": 4})) == (None, "fsdp")
    assert tuple(spec_for("encoder/latents", (30, 62), {"fsdp": 4})) == (None, None)
    # the same rules reach optimizer-state leaves, whose paths end with the parameter path
    tree = {"0": {"mu": {"encoder": {"latents": np.zeros((8, 64))}}}, "count": np.zeros(())}
    specs = specs_for(tree, {"fsdp": 4})
    assert tuple(specs["0"]["mu"]["encoder"]["latents"]) == (None, "fsdp")
    assert tuple(specs["count"]) == ()


def test_summary_mesh_reports_bytes_per_device(capsys):
    from jaxfm.cli import main

    assert main(["graphfm", "summary", "--config", "medium", "--mesh", "fsdp=8", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    s = summary["sharding"]
    assert s["mesh"] == {"data": 1, "fsdp": 8, "model": 1}
    assert 0.125 <= s["per_device_fraction"] <= 0.13
    assert s["param_bytes"] == 4 * summary["total"]
