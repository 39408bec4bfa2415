"""GraphFM model invariants: packed == per graph, padding ignored, sign invariance, precision."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.graphfm import GraphFM, loss_and_metrics
from jaxfm.graphfm.heads import NEG_INF
from jaxfm.graphfm.tokens import FeatureMLPs, SignNet


def _init(cfg, batch):
    return GraphFM(cfg).init(jax.random.key(0), batch)["params"]


def test_packed_batch_equals_each_graph_alone(tiny):
    packed = tiny.pack([0, 1, 2], targets=200)
    params = _init(tiny.cfg, packed)
    model = GraphFM(tiny.cfg)
    out = model.apply({"params": params}, packed)
    seg = np.asarray(packed.segment_ids)
    for i in range(3):
        alone = tiny.pack([i], targets=200)
        out1 = model.apply({"params": params}, alone)
        # Latents: the packed slot holding dataset i equals the lone graph's slot 0.
        slot = int(np.flatnonzero(np.asarray(packed.graph_dataset) == i)[0])
        assert seg.max() == 3
        np.testing.assert_allclose(out["latents"][slot], out1["latents"][0], atol=1e-5)
        # Tokens of the graph's rows are the same too.
        rows = np.flatnonzero(seg == slot + 1)
        np.testing.assert_allclose(out["tokens"][rows], out1["tokens"][: rows.size], atol=1e-5)
    # Node embeddings: graph i's targets of the packed batch, re-indexed into graph i's lone
    # batch (same self/neighbour rows), decode to the same embeddings.
    for i in range(3):
        alone = tiny.pack([i], targets=200)
        slot = int(np.flatnonzero(np.asarray(packed.graph_dataset) == i)[0])
        r0 = int(np.flatnonzero(seg == slot + 1)[0])
        mine = np.asarray(packed.target_mask) & (np.asarray(packed.target_graph) == slot)
        assert mine.sum() > 0
        q = alone.num_targets
        take = np.flatnonzero(mine)[:q]
        pad = q - take.size
        moved = alone.replace(
            target_index=np.pad(np.asarray(packed.target_index)[take] - r0, (0, pad)),
            target_mask=np.pad(np.ones(take.size, bool), (0, pad)),
            target_graph=np.zeros(q, np.int32),
            target_dataset=np.full(q, i, np.int32),
            neighbor_index=np.pad(np.asarray(packed.neighbor_index)[take] - r0, ((0, pad), (0, 0))),
            neighbor_mask=np.pad(np.asarray(packed.neighbor_mask)[take], ((0, pad), (0, 0))),
        )
        emb = model.apply({"params": params}, moved)["node_embedding"][: take.size]
        np.testing.assert_allclose(emb, out["node_embedding"][take], atol=1e-5)


def test_padding_rows_targets_and_neighbours_do_not_leak(tiny):
    batch = tiny.pack([0, 2], targets=64)
    params = _init(tiny.cfg, batch)
    model = GraphFM(tiny.cfg)
    ref = model.apply({"params": params}, batch)
    rng = np.random.default_rng(0)
    seg = np.asarray(batch.segment_ids)
    features = np.array(batch.features)
    features[seg == 0] = rng.normal(size=features[seg == 0].shape)
    pe = np.array(batch.pe)
    pe[seg == 0] = rng.normal(size=pe[seg == 0].shape)
    nbr = np.array(batch.neighbor_index)
    nmask = np.asarray(batch.neighbor_mask)
    nbr[~nmask] = rng.integers(0, seg.size, size=(~nmask).sum())
    tmask = np.asarray(batch.target_mask)
    tindex = np.array(batch.target_index)
    tindex[~tmask] = rng.integers(0, seg.size, size=(~tmask).sum())
    noisy = batch.replace(features=features, pe=pe, neighbor_index=nbr, target_index=tindex)
    out = model.apply({"params": params}, noisy)
    np.testing.assert_allclose(out["latents"], ref["latents"], atol=1e-6)
    np.testing.assert_allclose(
        out["node_embedding"][tmask], ref["node_embedding"][tmask], atol=1e-6
    )
    assert not np.asarray(out["node_embedding"][~tmask]).any()


def test_masked_neighbour_changes_nothing_but_real_neighbour_does(tiny):
    batch = tiny.pack([1], targets=16)
    params = _init(tiny.cfg, batch)
    model = GraphFM(tiny.cfg)
    ref = np.asarray(model.apply({"params": params}, batch)["node_embedding"])
    nmask = np.array(batch.neighbor_mask)
    q = int(np.flatnonzero(nmask.any(1))[0])
    j = int(np.flatnonzero(nmask[q])[0])
    nmask[q, j] = False
    out = np.asarray(
        model.apply({"params": params}, batch.replace(neighbor_mask=nmask))["node_embedding"]
    )
    assert not np.allclose(out[q], ref[q], atol=1e-6)
    others = np.arange(len(out)) != q
    np.testing.assert_allclose(out[others], ref[others], atol=1e-6)


def test_signnet_is_invariant_to_eigenvector_signs():
    pe = np.random.default_rng(1).normal(size=(7, 4)).astype(np.float32)
    net = SignNet(hidden=8, out=5)
    params = net.init(jax.random.key(0), pe)
    flipped = pe * np.array([1, -1, -1, 1], np.float32)
    np.testing.assert_allclose(net.apply(params, flipped), net.apply(params, pe), atol=1e-6)
    assert not np.allclose(net.apply(params, pe[::-1]), net.apply(params, pe), atol=1e-3)


def test_ragged_feature_mlps_equal_per_row_dataset_mlp():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 5)).astype(np.float32)
    sizes = jnp.array([3, 0, 4], jnp.int32)  # rows 7, 8 are padding
    mlp = FeatureMLPs(num_datasets=3, hidden=6, out=4)
    p = mlp.init(jax.random.key(0), x, sizes)["params"]
    y = np.asarray(mlp.apply({"params": p}, x, sizes))
    ds = np.array([0, 0, 0, 2, 2, 2, 2])
    for r, d in enumerate(ds):
        h = jax.nn.gelu(x[r] @ p["kernel_0"][d] + p["bias_0"][d], approximate=False)
        np.testing.assert_allclose(y[r], h @ p["kernel_1"][d] + p["bias_1"][d], atol=1e-5)
    np.testing.assert_array_equal(y[7:], 0.0)


def test_heads_mask_classes_outside_a_datasets_label_space(tiny):
    batch = tiny.pack([0, 1, 2], targets=64)
    out = GraphFM(tiny.cfg).apply({"params": _init(tiny.cfg, batch)}, batch)
    classes = np.array([d.num_classes for d in tiny.cfg.datasets])
    logits = np.asarray(out["logits"])
    for q in np.flatnonzero(np.asarray(batch.target_mask)):
        c = classes[int(batch.target_dataset[q])]
        assert (logits[q, c:] == NEG_INF).all() and (logits[q, :c] > NEG_INF / 2).all()


def test_loss_is_masked_cross_entropy_and_metrics_sum(tiny):
    batch = tiny.pack([0, 1], targets=32)
    out = GraphFM(tiny.cfg).apply({"params": _init(tiny.cfg, batch)}, batch)
    loss, m = loss_and_metrics(out, batch, tiny.cfg)
    mask = np.asarray(batch.target_loss_mask) & (np.asarray(batch.target_label) >= 0)
    logits = np.asarray(out["logits"], np.float64)[mask]
    labels = np.asarray(batch.target_label)[mask]
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
        - logits.max(1, keepdims=True)
    )
    expect = -logp[np.arange(len(labels)), labels].mean()
    np.testing.assert_allclose(float(loss), expect, rtol=1e-5)
    assert float(m["count"]) == mask.sum() == float(np.asarray(m["dataset_count"]).sum())
    assert float(m["correct"]) == (logits.argmax(1) == labels).sum()


@pytest.mark.parametrize("graph_decoder", [False, True])
def test_bfloat16_compute_agrees_with_float32(tiny, graph_decoder):
    cfg32 = dataclasses.replace(tiny.cfg, graph_decoder=graph_decoder)
    cfg16 = dataclasses.replace(cfg32, dtype="bfloat16")
    batch = tiny.pack([0, 1, 2], targets=64)
    params = _init(cfg32, batch)
    o32 = GraphFM(cfg32).apply({"params": params}, batch)
    o16 = GraphFM(cfg16).apply({"params": params}, batch)
    # Stated tolerance: bf16 has an 8-bit mantissa; over this depth the latents agree to 5e-2
    # of their scale and the predicted classes almost everywhere.
    scale = float(np.abs(o32["latents"]).max())
    assert float(np.abs(o16["latents"] - o32["latents"]).max()) < 5e-2 * scale
    mask = np.asarray(batch.target_mask)
    agree = (np.argmax(o16["logits"], -1) == np.argmax(o32["logits"], -1))[mask].mean()
    assert agree > 0.9
