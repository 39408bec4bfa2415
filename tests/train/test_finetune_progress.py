"""Finetuning progress on stderr: the long-run warning and the NFT unfreezes, with or without a
progress bar (issue 13)."""

import jax
import numpy as np
import pytest

import jaxfm.train.graphfm_finetune as ft
from tests.conftest import FIXTURES

TINY = dict(
    dim=16, num_latents=4, encoder_depth=1, decoder_depth=2, cross_heads=2, self_heads=2,
    decoder_heads=2, pe_dim=4, pe_width=4, signnet_hidden=8, feature_dim=8, num_neighbors=2,
)  # fmt: skip
DATA = str(FIXTURES / "graphs" / "heterophilous" / "tiny.npz")  # 5 nodes, 2 public splits


def _tiny_model_dir(path):
    """A random tiny GraphFM model directory (finetuning only needs its shapes)."""
    from jaxfm.data.packing import PackingBudget, PackUnit, pack_bucket
    from jaxfm.graphfm import GraphFM, GraphFMConfig
    from jaxfm.graphfm.config import DatasetSpec
    from jaxfm.model_dir import save_model_dir

    cfg = GraphFMConfig(**TINY, datasets=(DatasetSpec(name="pre", num_features=3, num_classes=2),))
    unit = PackUnit(
        dataset=0, graph=0, features=np.ones((3, 3), np.float32), pe=np.zeros((3, 4), np.float32),
        indptr=np.array([0, 1, 3, 4]), indices=np.array([1, 0, 2, 1]),
        labels=np.array([0, 1, 0]), train_mask=np.ones(3, bool),
    )  # fmt: skip
    batch = pack_bucket(
        [unit], PackingBudget(nodes=8, graphs=1, targets=2, neighbors=2), num_datasets=1,
        feature_dim=8, pe_dim=4,
    )  # fmt: skip
    shapes = jax.eval_shape(GraphFM(cfg).init, jax.random.key(1), batch)["params"]  # no compile
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(s.dtype), shapes)
    save_model_dir(path, params, {"family": "graphfm", "graphfm": cfg.to_dict()})
    return str(path)


class _Stop(Exception):
    pass


def test_nft_unfreezes_are_announced_when_they_happen_without_a_bar(tmp_path, capsys, monkeypatch):
    # the trainer is stubbed out (a real tiny run compiles for ~50 s on 2 shared cores): it
    # calls the per-step hook for every step, as fit does, then stops
    seen = {}

    def fake_fit(state, train_step, data, *, total_steps, steps_per_epoch, desc, **kw):
        hook = kw.get("step_record")
        records = [(s, hook(s, {}, 0.0)) for s in range(total_steps)] if hook else []
        seen.update(desc=desc, spe=steps_per_epoch, records=[r for r in records if r[1]])
        raise _Stop

    monkeypatch.setattr(ft, "fit", fake_fit)
    cfg = ft.FinetuneConfig(
        mode="nft", checkpoint=_tiny_model_dir(tmp_path / "m"), dataset=DATA, splits=[1],
        epochs=3, unfreeze_start=1, unfreeze_every=1, batch_targets=1, workdir=None,
    )  # fmt: skip
    with pytest.raises(_Stop):
        ft.finetune(cfg, progress=False)
    err = capsys.readouterr().err
    desc = "nft heterophilous/tiny split 1 (1 of 1, 3 epochs)"
    assert seen["desc"] == desc  # the bar's label: split k of N and the epochs
    assert f"{desc}: decoder layers 0..1 unfreeze at epochs [1, 2] (lr / 1.5 each)" in err
    lines = [x for x in err.splitlines() if "unfrozen" in x]
    assert lines == [
        f"{desc}: epoch 1: decoder layer 0 unfrozen, lr 0.002",
        f"{desc}: epoch 2: decoder layer 1 unfrozen, lr 0.00133",
    ]
    spe = seen["spe"]  # at the first step of the unfreeze epoch, also a field of its record
    assert spe > 1 and seen["records"] == [
        (spe, {"unfrozen": "decoder/layer_0"}),
        (2 * spe, {"unfrozen": "decoder/layer_1"}),
    ]


def test_long_run_warning_without_a_progress_bar(tmp_path, capsys, monkeypatch):
    # the warning comes before any training: the splits themselves are stubbed out
    monkeypatch.setattr(
        ft, "run_splits", lambda w, splits, f, **kw: [{"test_accuracy": 0.5} for _ in splits]
    )
    cfg = ft.FinetuneConfig(
        mode="mft", checkpoint=_tiny_model_dir(tmp_path / "m"), dataset=DATA, epochs=100
    )
    ft.finetune(cfg, progress=False)
    assert (
        "mft: 2 splits x 100 epochs on heterophilous/tiny (5 nodes): a long run"
        in capsys.readouterr().err
    )
