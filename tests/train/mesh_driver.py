"""Runs small GraphFM pretraining on given meshes in a fresh process (for test_mesh_sharding.py).

The device count is fixed when JAX starts, so each device count is its own process:

    JAX_NUM_CPU_DEVICES=8 python mesh_driver.py OUT.json ROOT name:mesh:devices:steps[:resume] ...

Each run writes ``ROOT/<name>/`` (checkpoints, model) and its logged losses into OUT.json.
"""

from __future__ import annotations

import io
import json
import sys

TINY = dict(
    synthetic_graphs=6,
    synthetic_nodes=(40, 160),
    node_budget=256,
    graph_budget=8,
    target_budget=64,
    checkpoint_every=1,
    keep=10,
    seed=3,
)


def run(root: str, name: str, mesh: str, devices: int, steps: int, resume: bool) -> dict:
    import dataclasses

    from jaxfm.train.graphfm_pretrain import PretrainConfig, pretrain

    # One schedule for every run (the default follows each run's own length), so that the
    # 3-step run is the prefix of the 5-step ones and a resume continues the same schedule.
    opt = dataclasses.replace(PretrainConfig().optimizer, total_steps=300)
    cfg = PretrainConfig(
        mesh=mesh or None, devices=devices, steps=steps, workdir=f"{root}/{name}", optimizer=opt,
        **TINY,
    )  # fmt: skip
    log = io.StringIO()
    summary = pretrain(cfg, resume=resume, log_stream=log, progress=False)
    lines = [json.loads(x) for x in log.getvalue().splitlines()]
    lines = [x for x in lines if "loss" in x]  # step records (not the held-out evaluations)
    return {"steps": [x["step"] for x in lines], "losses": [x["loss"] for x in lines],
            "summary": summary}  # fmt: skip


def main(argv: list[str]) -> int:
    out, root, *specs = argv
    results = {}
    for spec in specs:
        name, mesh, devices, steps, *flags = spec.split(":")
        results[name] = run(root, name, mesh, int(devices), int(steps), "resume" in flags)
    with open(out, "w") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
