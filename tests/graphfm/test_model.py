"""The whole GraphFM model on packed SBM batches: packed == per graph, padding, bf16, methods."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import model_apply

from jaxfm.graphfm import GraphFM
from jaxfm.graphfm.heads import NEG_INF


@pytest.fixture(scope="module")
def gd(tiny):
    """The tiny config with the graph decoder on (one jitted program shared by these tests)."""
    cfg = dataclasses.replace(tiny.cfg, graph_decoder=True)
    return cfg, model_apply(cfg)


def test_packed_batch_equals_each_graph_alone(tiny, gd):
    cfg, apply = gd
    packed = tiny.pack([0, 1, 2])
    out = apply({"params": tiny.params}, packed)
    seg = np.asarray(packed.segment_ids)
    assert seg.max() == 3 and len({u.num_nodes for u in tiny.units}) == 3
    for i in range(3):
        alone = tiny.pack([i])
        one = apply({"params": tiny.params}, alone)
        slot = int(np.flatnonzero(np.asarray(packed.graph_dataset) == i)[0])
        rows = np.flatnonzero(seg == slot + 1)
        r0 = int(rows[0])
        np.testing.assert_allclose(out["tokens"][rows], one["tokens"][: rows.size], atol=1e-5)
        np.testing.assert_allclose(out["latents"][slot], one["latents"][0], atol=1e-5)
        np.testing.assert_allclose(out["graph_logits"][slot], one["graph_logits"][0], atol=1e-5)
        # Node embeddings: graph i's targets of the packed batch, re-indexed into the lone batch
        # (same self / neighbour rows), decode to the same embeddings.
        mine = np.flatnonzero(np.asarray(packed.target_mask) & (packed.target_graph == slot))
        q, pad = alone.num_targets, alone.num_targets - mine.size
        assert 0 < mine.size <= q
        moved = alone.replace(
            target_index=np.pad(packed.target_index[mine] - r0, (0, pad)),
            target_mask=np.pad(np.ones(mine.size, bool), (0, pad)),
            target_graph=np.zeros(q, np.int32),
            target_dataset=np.full(q, i, np.int32),
            neighbor_index=np.pad(packed.neighbor_index[mine] - r0, ((0, pad), (0, 0))),
            neighbor_mask=np.pad(packed.neighbor_mask[mine], ((0, pad), (0, 0))),
        )
        emb = apply({"params": tiny.params}, moved)["node_embedding"][: mine.size]
        np.testing.assert_allclose(emb, out["node_embedding"][mine], atol=1e-5)
    # Logits beyond a dataset's classes are masked, the others are real numbers.
    classes = np.array([d.num_classes for d in cfg.datasets])
    logits = np.asarray(out["logits"])
    for q in np.flatnonzero(np.asarray(packed.target_mask)):
        c = classes[int(packed.target_dataset[q])]
        assert (logits[q, c:] == NEG_INF).all() and (np.abs(logits[q, :c]) < 1e3).all()


def test_padding_rows_targets_neighbours_and_slots_do_not_leak(tiny, gd):
    _, apply = gd
    batch = tiny.pack([0, 2])
    ref = apply({"params": tiny.params}, batch)
    rng = np.random.default_rng(0)
    seg = np.asarray(batch.segment_ids)
    pad = seg == 0
    features, pe = np.array(batch.features), np.array(batch.pe)
    features[pad] = 1e3 * rng.normal(size=features[pad].shape)
    pe[pad] = rng.normal(size=pe[pad].shape)
    nbr, nmask = np.array(batch.neighbor_index), np.asarray(batch.neighbor_mask)
    nbr[~nmask] = rng.integers(0, seg.size, size=(~nmask).sum())
    tmask = np.asarray(batch.target_mask)
    tindex, tgraph = np.array(batch.target_index), np.array(batch.target_graph)
    tindex[~tmask] = rng.integers(0, seg.size, size=(~tmask).sum())
    tgraph[~tmask] = rng.integers(0, batch.num_graph_slots, size=(~tmask).sum())
    gds = np.array(batch.graph_dataset)
    gds[~np.asarray(batch.graph_mask)] = 1
    noisy = batch.replace(
        features=features, pe=pe, neighbor_index=nbr, target_index=tindex, target_graph=tgraph,
        graph_dataset=gds,
    )  # fmt: skip
    out = apply({"params": tiny.params}, noisy)
    np.testing.assert_allclose(out["latents"], ref["latents"], atol=1e-6)
    np.testing.assert_allclose(
        out["node_embedding"][tmask], ref["node_embedding"][tmask], atol=1e-6
    )
    np.testing.assert_allclose(out["logits"][tmask], ref["logits"][tmask], atol=1e-5)
    gm = np.asarray(batch.graph_mask)
    np.testing.assert_allclose(out["graph_logits"][gm], ref["graph_logits"][gm], atol=1e-5)
    assert not np.asarray(out["node_embedding"][~tmask]).any()
    assert not np.asarray(out["latents"][~gm]).any()


def test_encode_and_embed_match_the_full_forward(tiny, gd):
    cfg, apply = gd
    batch = tiny.pack([1, 2])
    model = GraphFM(cfg)
    both = jax.jit(
        lambda p, b: (
            model.apply({"params": p}, b, method=GraphFM.encode),
            model.apply({"params": p}, b, method=GraphFM.embed),
        )
    )
    latents, emb = both(tiny.params, batch)
    out = apply({"params": tiny.params}, batch)
    np.testing.assert_allclose(latents, out["latents"], atol=1e-6)
    np.testing.assert_allclose(emb, out["node_embedding"], atol=1e-6)
    assert set(out) == {"tokens", "latents", "node_embedding", "logits", "prediction",
                        "graph_logits"}  # fmt: skip
    assert all(v.dtype == np.float32 for v in out.values())


def test_bfloat16_compute_agrees_with_float32(tiny, gd):
    cfg32, apply32 = gd
    cfg16 = dataclasses.replace(cfg32, dtype="bfloat16")
    batch = tiny.pack([0, 1, 2])
    o32 = apply32({"params": tiny.params}, batch)
    o16 = model_apply(cfg16)({"params": tiny.params}, batch)
    assert all(v.dtype == np.float32 for v in o16.values())
    # Stated tolerance: bf16 keeps 8 mantissa bits (relative step 0.4 %). Through tokens,
    # encoder, decoder and heads the LayerNormed latents / embeddings (scale ~1) agree to 3 % RMS
    # and 0.15 absolute, and the predicted class agrees for >= 90 % of targets.
    mask = np.asarray(batch.target_mask)
    for key, sel in (("latents", np.asarray(batch.graph_mask)), ("node_embedding", mask)):
        ref, err = o32[key][sel], o16[key][sel] - o32[key][sel]
        assert float(np.abs(err).max()) < 0.15, key
        assert float(np.sqrt((err**2).mean() / (ref**2).mean())) < 0.03, key
    agree = (np.argmax(o16["logits"], -1) == np.argmax(o32["logits"], -1))[mask].mean()
    assert agree >= 0.9
