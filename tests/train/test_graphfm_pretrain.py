"""GraphFM pretraining end to end: losses fall, resume == uninterrupted, finetune freezing."""

import dataclasses
import io
import json
import shutil

import numpy as np
import pytest

from jaxfm.model_dir import load_model_dir
from jaxfm.params import flatten
from jaxfm.train.graphfm_finetune import FinetuneConfig, unfreeze_epochs
from jaxfm.train.graphfm_pretrain import PretrainConfig, dataset_lr_scales, pretrain
from jaxfm.train.optim import OptimizerConfig

TINY = dict(
    dim=16, num_latents=4, encoder_depth=1, decoder_depth=2, cross_heads=2, self_heads=2,
    decoder_heads=2, pe_dim=4, pe_width=4, signnet_hidden=8, feature_dim=16, num_neighbors=3,
)  # fmt: skip


def _cfg(workdir, steps=4, **kw):
    return PretrainConfig(
        model_overrides=TINY,
        neighbors=TINY["num_neighbors"],
        synthetic_graphs=4,
        synthetic_nodes=(30, 90),
        steps=steps,
        node_budget=256,
        graph_budget=4,
        target_budget=32,
        optimizer=OptimizerConfig(name="lamb", learning_rate=3e-3, schedule="constant"),
        workdir=str(workdir),
        checkpoint_every=2,
        **kw,
    )


def _run(cfg, resume=False):
    log = io.StringIO()
    summary = pretrain(cfg, resume=resume, log_stream=log, progress=False)
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    return summary, [r for r in lines if "loss" in r]  # step records (not the evaluations)


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_losses(tmp_path):
    full, lines = _run(_cfg(tmp_path / "a", steps=4))
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in lines)
    # Simulate a kill after step 2: only checkpoint 2 survives.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    shutil.rmtree(tmp_path / "b" / "model")
    _, resumed = _run(_cfg(tmp_path / "b", steps=4), resume=True)
    assert [r["step"] for r in resumed] == [3, 4]
    np.testing.assert_allclose(
        [r["loss"] for r in resumed], [r["loss"] for r in lines[2:]], rtol=1e-6
    )
    pa, ca = load_model_dir(tmp_path / "a" / "model")
    pb, cb = load_model_dir(tmp_path / "b" / "model")
    assert ca == cb
    fa, fb = flatten(pa), flatten(pb)
    assert fa.keys() == fb.keys()
    for path, v in fa.items():
        np.testing.assert_allclose(v, fb[path], rtol=1e-6, atol=1e-7, err_msg=path)
    assert full["datasets"] == 4


def test_resume_with_another_config_is_refused(tmp_path):
    _run(_cfg(tmp_path, steps=2))
    other = _cfg(tmp_path, steps=4, seed=1)
    with pytest.raises(ValueError, match="other settings:\n  seed: 0 in the checkpoint"):
        _run(other, resume=True)


def test_pretraining_on_synthetic_graphs_reduces_the_loss(tmp_path):
    _, lines = _run(_cfg(tmp_path, steps=30, log_every=1))
    first = np.mean([r["loss"] for r in lines[:5]])
    last = np.mean([r["loss"] for r in lines[-5:]])
    assert last < 0.9 * first


def test_dataset_lr_scales_favour_rare_datasets():
    s = dataset_lr_scales([1000, 100, 10], max_scale=8.0)
    assert s[0] == 1.0 and s[0] < s[1] < s[2] <= 8.0
    np.testing.assert_allclose(dataset_lr_scales([5, 5], 8.0), [1.0, 1.0])


def test_nft_unfreezes_decoder_layers_bottom_up_and_refuses_a_schedule_that_never_does():
    cfg = FinetuneConfig(checkpoint="m", dataset="d", mode="nft", epochs=9, unfreeze_start=4,
                         unfreeze_every=2)  # fmt: skip
    assert unfreeze_epochs(cfg, 3) == [4, 6, 8]
    assert unfreeze_epochs(dataclasses.replace(cfg, mode="mft"), 3) == []
    with pytest.raises(ValueError, match="never unfreezes"):
        FinetuneConfig(checkpoint="m", dataset="d", mode="nft", epochs=20, unfreeze_start=20)


@pytest.mark.slow
def test_readme_main_job_pretrains(tmp_path, capsys, monkeypatch):
    """The README first command, `jaxfm pretrain` with its defaults (300 steps, 24 SBMs)."""
    from jaxfm.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--no-progress"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    steps = [x for x in lines if "loss" in x]
    summary = lines[-1]["summary"]
    assert [x["step"] for x in steps] == list(range(1, 301))
    first = np.mean([x["loss"] for x in steps[:20]])
    last = np.mean([x["loss"] for x in steps[-20:]])
    assert last < 0.8 * first, (first, last)
    assert (tmp_path / "runs" / "pretrain" / "model" / "params.safetensors").exists()
    assert summary["datasets"] == 24


def test_held_out_accuracy_every_eval_every_steps(tmp_path):
    """Every eval_every steps (and at the end): accuracy on the graphs' validation nodes."""
    summary, _ = _run(_cfg(tmp_path, steps=4, eval_every=2))
    from jaxfm.train.trainer import read_metrics

    evals = [r for r in read_metrics(tmp_path) if "val_accuracy" in r]
    assert [r["step"] for r in evals] == [2, 4]
    per = summary["heldout_accuracy_per_dataset"]
    assert summary["heldout_accuracy_step"] == 4 and len(per) >= 1
    assert all(0.0 <= v <= 1.0 for v in per.values())
    assert per == {k.removeprefix("val_accuracy/"): v for k, v in evals[-1].items()
                   if k.startswith("val_accuracy/")}  # fmt: skip


def test_held_out_corpus_targets_validation_nodes_only():
    from jaxfm.data.corpus import build_corpus
    from jaxfm.data.sbm import sbm_corpus
    from jaxfm.train.graphfm_pretrain import held_out_corpus

    corpus = build_corpus(sbm_corpus(2, seed=0, node_range=(30, 60)), feature_dim=8, pe_dim=4,
                          node_budget=256)  # fmt: skip
    held = held_out_corpus(corpus)
    for g, h in zip(corpus.graphs, held.graphs, strict=True):
        np.testing.assert_array_equal(h.split.train, g.split.val)
        assert not (h.split.train & g.split.train).any() and h.split.train.any()


def test_neighbors_sets_the_models_decoder_neighbours_and_a_conflict_is_refused(tmp_path):
    tiny = {k: v for k, v in TINY.items() if k != "num_neighbors"}
    cfg = dataclasses.replace(_cfg(tmp_path, steps=1), model_overrides=tiny, neighbors=5)
    _run(cfg)
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["graphfm"]["num_neighbors"] == 5
    with pytest.raises(ValueError, match="num_neighbors=5 disagrees with neighbors=3"):
        PretrainConfig(synthetic_graphs=2, neighbors=3, model_overrides={"num_neighbors": 5})
    with pytest.raises(ValueError, match="neighbors must be an int >= 0"):
        PretrainConfig(synthetic_graphs=2, neighbors=-1)
