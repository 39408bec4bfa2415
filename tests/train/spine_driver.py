"""Runs one small training job of a given kind; the spine tests kill and resume it.

python spine_driver.py KIND WORKDIR [--resume] [--mesh SPEC --devices D] -> prints one JSON line
with the run's losses (read back from WORKDIR/metrics.jsonl, so a resumed run reports the whole
history) and its final metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY_GRAPHFM = dict(
    dim=16, num_latents=4, encoder_depth=1, decoder_depth=2, cross_heads=2, self_heads=2,
    decoder_heads=2, pe_dim=4, pe_width=4, signnet_hidden=8, feature_dim=16, num_neighbors=3,
)  # fmt: skip


def fimp(workdir: str, resume: bool, mesh: str | None, devices: int | None) -> dict:
    from jaxfm.fimp.data import DataOptions
    from jaxfm.train.fimp import RunConfig, train_fimp

    run = RunConfig(
        task="celltype",
        epochs=4,
        patience=10,
        batch_size=32,
        data_options=DataOptions(num_nodes=160, max_genes=16),
        overrides={"dim": 16},
        mesh=mesh,
        devices=devices,
        workdir=workdir,
    )
    res = train_fimp(run, resume=resume, log_stream=None, progress=False)
    return {"test": res["test"], "val": res["val"], "best_epoch": res["best_epoch"]}


def pretrain_cfg(workdir: str, steps: int = 6):
    from jaxfm.train.graphfm_pretrain import PretrainConfig
    from jaxfm.train.optim import OptimizerConfig

    return PretrainConfig(
        model_overrides=TINY_GRAPHFM,
        neighbors=TINY_GRAPHFM["num_neighbors"],
        synthetic_graphs=4,
        synthetic_nodes=(30, 90),
        steps=steps,
        node_budget=256,
        graph_budget=4,
        target_budget=32,
        optimizer=OptimizerConfig(name="lamb", learning_rate=3e-3, schedule="constant"),
        workdir=workdir,
        checkpoint_every=1,
    )


def pretrain(workdir: str, resume: bool, *_) -> dict:
    from jaxfm.train.graphfm_pretrain import pretrain as run

    summary = run(pretrain_cfg(workdir), resume=resume, log_stream=None, progress=False)
    return {"last_step": summary["last_step"]}


def mft(workdir: str, resume: bool, *_) -> dict:
    from jaxfm.train.graphfm_finetune import FinetuneConfig, finetune
    from jaxfm.train.graphfm_pretrain import pretrain as run

    model = Path(workdir).parent / "pretrained"
    if not (model / "model").exists():
        run(pretrain_cfg(str(model), steps=2), overwrite=True, log_stream=None, progress=False)
    cfg = FinetuneConfig(
        mode="nft",
        checkpoint=str(model / "model"),
        dataset=str(FIXTURES / "graphs" / "heterophilous" / "tiny.npz"),
        epochs=6,
        unfreeze_start=2,
        unfreeze_every=2,
        batch_targets=8,
        workdir=workdir,
    )
    res = finetune(cfg, resume=resume, progress=False)
    return {"per_split": res["per_split"]}


def main(argv: list[str]) -> int:
    kind, workdir = argv[0], argv[1]
    resume = "--resume" in argv
    mesh = argv[argv.index("--mesh") + 1] if "--mesh" in argv else None
    devices = int(argv[argv.index("--devices") + 1]) if "--devices" in argv else None
    out = {"fimp": fimp, "pretrain": pretrain, "mft": mft}[kind](workdir, resume, mesh, devices)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
