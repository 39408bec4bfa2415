"""The new graph's feature path in MFT/NFT: raw or SVD inputs, the feature MLP's width and init
gain, input dropout (experiments/README.md, "GraphFM fidelity", changes 1-3)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.data.graph_dataset import NodeDataset, Split
from jaxfm.graphfm import GraphFM, GraphFMConfig
from jaxfm.params import flatten
from jaxfm.train.graphfm_finetune import (
    FinetuneConfig,
    drop_input_features,
    finetune_inputs,
    scale_new_feature_mlp,
)

TINY = dict(
    dim=16, num_latents=4, encoder_depth=1, decoder_depth=2, cross_heads=2, self_heads=2,
    decoder_heads=2, pe_dim=4, pe_width=4, signnet_hidden=8, feature_dim=16, num_neighbors=3,
)  # fmt: skip


def _graph(n=40, f=48, seed=0) -> NodeDataset:
    rng = np.random.default_rng(seed)
    s = rng.integers(0, n, 120).astype(np.int32)
    r = rng.integers(0, n, 120).astype(np.int32)
    keep = s != r
    x = (rng.random((n, f)) < 0.2).astype(np.float32)  # bag-of-words-like binary rows
    y = rng.integers(0, 3, n).astype(np.int32)
    idx = rng.permutation(n)
    masks = [np.zeros(n, bool) for _ in range(3)]
    for m, part in zip(masks, np.split(idx, [24, 32]), strict=True):
        m[part] = True
    return NodeDataset(
        name="wide", senders=s[keep], receivers=r[keep], num_nodes=n, x=x, y=y, num_classes=3,
        splits=(Split(*masks),),
    )  # fmt: skip


def _cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig(checkpoint="m", dataset="d", batch_targets=8, **kw)


def test_defaults_feed_raw_features_through_a_wider_mlp():
    ds, base = _graph(), GraphFMConfig(**TINY)
    batcher, model_cfg = finetune_inputs(ds, base, _cfg())
    assert model_cfg.feature_dim == 48 and model_cfg.feature_hidden == 64
    assert model_cfg.datasets == (batcher.spec,)
    # the trunk's settings are the pretrained ones
    for name in ("dim", "num_latents", "encoder_depth", "decoder_depth", "pe_dim", "pe_width"):
        assert getattr(model_cfg, name) == getattr(base, name), name
    nodes = np.arange(5)
    batch, ids = batcher.batch(nodes, 0)
    rows = np.asarray(batch.features)[np.asarray(batch.target_index)[np.asarray(batch.target_mask)]]
    np.testing.assert_array_equal(rows, ds.x[ids])  # exactly the raw rows, no projection


def test_raw_width_below_a_pretraining_datasets_width():
    from jaxfm.graphfm import DatasetSpec

    wide = DatasetSpec(name="wide_pretraining_graph", num_features=16, num_classes=2)
    base = GraphFMConfig(**TINY, datasets=(wide,))
    ds = _graph(f=5)  # 5 raw columns, fewer than the pretraining graph's 16
    batcher, model_cfg = finetune_inputs(ds, base, _cfg())
    assert model_cfg.feature_dim == 5 and model_cfg.datasets == (batcher.spec,)


def test_int_feature_dim_reduces_like_pretraining():
    ds, base = _graph(), GraphFMConfig(**TINY)
    batcher, model_cfg = finetune_inputs(ds, base, _cfg(feature_dim=8, feature_hidden=None))
    assert model_cfg.feature_dim == 8 and model_cfg.feature_hidden is None
    batch, _ = batcher.batch(np.arange(5), 0)
    assert batch.features.shape[1] == 8
    assert not np.array_equal(np.asarray(batch.features)[:5, :8], ds.x[:5, :8])


def test_gain_scales_only_the_new_output_kernel():
    ds, base = _graph(), GraphFMConfig(**TINY)
    batcher, model_cfg = finetune_inputs(ds, base, _cfg())
    batch, _ = batcher.batch(np.arange(4), 0)
    params = GraphFM(model_cfg).init(jax.random.key(0), batch)["params"]
    scaled = scale_new_feature_mlp(params, 10.0)
    a, b = flatten(params), flatten(scaled)
    assert a.keys() == b.keys()
    for path in a:
        if path == "tokenizer/feature_mlp/kernel_1":
            np.testing.assert_allclose(b[path], 10.0 * np.asarray(a[path]), rtol=1e-6)
        else:
            np.testing.assert_array_equal(b[path], a[path])
    assert scale_new_feature_mlp(params, 1.0) is params


def test_gain_enlarges_the_feature_part_of_the_token():
    ds, base = _graph(), GraphFMConfig(**TINY)
    batcher, model_cfg = finetune_inputs(ds, base, _cfg(feature_hidden=None))
    batch, _ = batcher.batch(np.arange(4), 0)
    model = GraphFM(model_cfg)
    params = model.init(jax.random.key(1), batch)["params"]

    def feature_norm(p):
        tok = model.apply({"params": p}, batch, method=GraphFM._tokens)
        width = model_cfg.dim - model_cfg.pe_width
        return float(jnp.linalg.norm(tok[: ds.num_nodes, :width], axis=-1).mean())

    n1, n10 = feature_norm(params), feature_norm(scale_new_feature_mlp(params, 10.0))
    assert n10 > 5 * n1


def test_input_dropout_is_inverted_and_keyed():
    ds, base = _graph(), GraphFMConfig(**TINY)
    batcher, _ = finetune_inputs(ds, base, _cfg())
    batch, _ = batcher.batch(np.arange(8), 0)
    assert drop_input_features(batch, jax.random.key(0), 0.0) is batch
    out = drop_input_features(batch, jax.random.key(0), 0.5)
    x, d = np.asarray(batch.features), np.asarray(out.features)
    nz = x != 0
    assert set(np.unique(d[nz] / x[nz]).round(6)) <= {0.0, 2.0}
    kept = (d[nz] != 0).mean()
    assert 0.3 < kept < 0.7
    again = drop_input_features(batch, jax.random.key(0), 0.5)
    np.testing.assert_array_equal(np.asarray(again.features), d)
    other = drop_input_features(batch, jax.random.key(1), 0.5)
    assert not np.array_equal(np.asarray(other.features), d)
    # everything but the features is untouched
    for f in dataclasses.fields(batch):
        if f.name != "features":
            np.testing.assert_array_equal(
                np.asarray(getattr(out, f.name)), np.asarray(getattr(batch, f.name))
            )


@pytest.mark.parametrize(
    "kw, word",
    [
        (dict(feature_dim=0), "feature_dim"),
        (dict(feature_hidden=-1), "feature_hidden"),
        (dict(feature_hidden=True), "feature_hidden"),
        (dict(feature_init_gain=0.0), "feature_init_gain"),
        (dict(input_dropout=1.0), "input_dropout"),
        (dict(input_dropout=-0.1), "input_dropout"),
        (dict(context_nodes=0), "context_nodes must be None or an int >= 1"),
        (dict(context_nodes=4), "context_nodes=4 must be >= batch_targets=8"),
        (dict(test_on_whole_graph=True, context_nodes=None), "test_on_whole_graph needs"),
    ],
)
def test_bad_feature_settings_are_named(kw, word):
    with pytest.raises(ValueError, match=word):
        _cfg(**kw)


def test_subgraph_context_trains_every_target_once_per_epoch_in_small_batches(
    tmp_path, monkeypatch
):
    # fit is stubbed (a real run compiles for a minute on 2 shared cores): it reads one epoch of
    # the batches finetune would train on, then stops
    import jaxfm.data.registry as registry
    import jaxfm.train.graphfm_finetune as ft
    from tests.train.test_finetune_progress import _Stop, _tiny_model_dir

    ds = _graph(n=700, f=6)  # train = the first 24 of a permutation: make it bigger
    train = np.zeros(700, bool)
    train[:420] = True
    ds = dataclasses.replace(ds, splits=(Split(train, ~train, ~train),))
    monkeypatch.setattr(registry, "load_dataset", lambda *a, **k: ds)
    seen = {}

    def fake_fit(state, train_step, data, **kw):
        seen["batches"] = list(data.make_epoch(0))
        seen["spe"] = data.steps_per_epoch
        raise _Stop

    monkeypatch.setattr(ft, "fit", fake_fit)
    cfg = ft.FinetuneConfig(
        checkpoint=_tiny_model_dir(tmp_path / "m"), dataset="d", splits=[0], epochs=2,
        batch_targets=64, context_nodes=200, workdir=None,
    )  # fmt: skip
    with pytest.raises(_Stop):
        ft.finetune(cfg, progress=False)
    batches = seen["batches"]
    assert seen["spe"] == len(batches) == 420 // 64 + 1
    decoded = []
    for b in batches:
        assert b.features.shape == (256, 6)  # the context's rows, not the graph's 768
        real = np.asarray(b.segment_ids) > 0
        assert 64 <= real.sum() <= 200 or b is batches[-1]
        rows = np.asarray(b.target_index)[np.asarray(b.target_mask)]
        assert np.asarray(b.target_loss_mask)[np.asarray(b.target_mask)].all()
        decoded.append(np.asarray(b.features)[rows])
    # every training node is decoded exactly once per epoch, with its own feature row
    got = np.concatenate(decoded)
    want = ds.x[:420]
    assert got.shape == want.shape
    order = lambda a: a[np.lexsort(a.T[::-1])]
    np.testing.assert_array_equal(order(got), order(want))
