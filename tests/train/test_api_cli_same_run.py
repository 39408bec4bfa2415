"""The Python API and the CLI give the same run: defaults live only in the config dataclasses."""

from __future__ import annotations

import dataclasses
import json

import pytest

from jaxfm.cli import main
from jaxfm.cli.fields import field_default
from jaxfm.fimp.data import DataOptions
from jaxfm.train.fimp import RunConfig, train_fimp
from jaxfm.train.graphfm_finetune import FinetuneConfig
from jaxfm.train.graphfm_pretrain import PretrainConfig


def _parse(argv):
    from jaxfm.cli import _parser

    return _parser().parse_args(argv)


def test_cli_defaults_are_the_dataclass_defaults():
    args = _parse(["fimp", "train", "--task", "fmri"])
    run = RunConfig(task="fmri")
    assert args.optimizer__learning_rate == run.optimizer.learning_rate == 3e-3
    assert args.data_options__patch_mask_rate == run.data_options.patch_mask_rate
    assert args.data_options__mask_rate == run.data_options.mask_rate
    for name in ("epochs", "patience", "batch_size", "recordings_per_batch", "workdir", "seed"):
        assert getattr(args, name) == getattr(run, name), name
    ft = _parse(["finetune", "--mode", "nft", "--checkpoint", "m", "--dataset", "d"])
    for f in dataclasses.fields(FinetuneConfig):
        if hasattr(ft, f.name) and f.name not in ("mode", "checkpoint", "dataset", "splits"):
            assert getattr(ft, f.name) == field_default(FinetuneConfig, f.name), f.name
    pt = _parse(["pretrain"])
    for name in ("steps", "node_budget", "target_budget", "keep", "workdir", "log_every", "seed"):
        assert getattr(pt, name) == field_default(PretrainConfig, name), name
    assert pt.checkpoint_every == PretrainConfig().checkpoint_every


@pytest.mark.parametrize("steps", [1, 300, 1000])
def test_pretraining_api_and_cli_give_the_same_schedule(steps):
    from jaxfm.cli.graphfm import _pretrain_config

    cli = _pretrain_config(_parse(["pretrain", "--steps", str(steps)]))
    api = PretrainConfig(steps=steps)
    assert cli == api
    resolved = api.optimizer.for_run(api.steps)
    assert resolved.total_steps == steps  # the schedule ends where the run ends
    assert resolved.warmup_steps < max(steps, 2)


@pytest.mark.slow
def test_readme_python_example_equals_its_cli_twin(tmp_path, capsys):
    # The README's example as written (only the workdir differs, so the two runs do not meet).
    res = train_fimp(
        RunConfig(
            task="celltype",
            data="synthetic",
            epochs=10,
            data_options=DataOptions(knn=6),
            workdir=str(tmp_path / "api"),
        ),
        log_stream=None,
        progress=False,
    )
    rc = main(["fimp", "train", "--task", "celltype", "--data", "synthetic", "--epochs", "10",
               "--knn", "6", "--workdir", str(tmp_path / "cli"), "--no-progress"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
    assert summary["test"] == res["test"]
    # It learns: above the majority class (the README example used to sit at 0.34).
    assert res["test"]["accuracy"] > 0.4, res["test"]


@pytest.mark.slow
def test_fmri_defaults_learn_and_beat_the_no_graph_mlp(tmp_path, capsys):
    r2 = {}
    for model in ("fimp", "mlp"):
        argv = ["fimp", "train", "--task", "fmri", "--data", "synthetic", "--model", model,
                "--workdir", str(tmp_path / model), "--no-progress"]  # fmt: skip
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
        r2[model] = out["test"]["r2"]
    assert r2["fimp"] > 0.5 and r2["fimp"] > r2["mlp"] + 0.1, r2
