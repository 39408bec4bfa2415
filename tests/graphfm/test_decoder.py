"""Node decoder, graph decoder and per-dataset heads: padding is ignored, outputs are exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params

from jaxfm.graph.packed import PackedBatch
from jaxfm.graphfm.decoder import NodeDecoder
from jaxfm.graphfm.graph_decoder import GraphDecoder
from jaxfm.graphfm.heads import NEG_INF, DatasetHeads

T, D, G, K, Q, M = 20, 16, 3, 4, 6, 3


def _batch(**fields):
    """Targets 0..3 real (graphs 0, 0, 1, 1), 4..5 padding; rows 0..9 graph 0, 10..15 graph 1."""
    z = np.zeros
    base = dict(
        features=z((T, 1), np.float32), pe=z((T, 1), np.float32),
        segment_ids=np.array([1] * 10 + [2] * 6 + [0] * 4, np.int32),
        group_sizes=np.array([16], np.int32), graph_dataset=z(G, np.int32),
        graph_mask=np.array([True, True, False]), graph_label=np.full(G, -1, np.int32),
        target_index=np.array([0, 3, 10, 12, 0, 0], np.int32),
        target_mask=np.array([1, 1, 1, 1, 0, 0], bool),
        target_graph=np.array([0, 0, 1, 1, 0, 0], np.int32),
        target_dataset=z(Q, np.int32), target_label=z(Q, np.int32),
        target_value=z(Q, np.float32), target_loss_mask=np.array([1, 1, 1, 1, 0, 0], bool),
        neighbor_index=np.array(
            [[1, 2, 0], [4, 0, 0], [11, 13, 14], [10, 0, 0], [0, 0, 0], [0, 0, 0]], np.int32
        ),
        neighbor_mask=np.array(
            [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0], [0, 0, 0]], bool
        ),
    )  # fmt: skip
    base.update(fields)
    return PackedBatch(**base)


@pytest.fixture(scope="module")
def decoder():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(T, D)).astype(np.float32)
    tokens[16:] = 0
    latents = rng.normal(size=(G, K, D)).astype(np.float32)
    latents[2] = 0
    dec = NodeDecoder(depth=2, num_heads=2)
    params = init_params(dec, tokens, latents, _batch())
    fn = jax.jit(lambda t, lat, b: dec.apply({"params": params}, t, lat, b))
    return fn, tokens, latents


def test_padding_targets_rows_and_masked_neighbours_change_nothing(decoder):
    fn, tokens, latents = decoder
    ref = np.asarray(fn(tokens, latents, _batch()))
    assert not ref[4:].any() and np.abs(ref[:4]).min(axis=1).max() > 0
    b = _batch()
    rng = np.random.default_rng(1)
    nbr = b.neighbor_index.copy()
    nbr[~b.neighbor_mask] = rng.integers(0, T, size=(~b.neighbor_mask).sum())
    noisy_tokens = tokens.copy()
    noisy_tokens[16:] = 1e3 * rng.normal(size=(4, D))  # padding rows
    noisy = _batch(
        neighbor_index=nbr,
        target_index=np.array([0, 3, 10, 12, 17, 5], np.int32),
        target_graph=np.array([0, 0, 1, 1, 2, 1], np.int32),
    )
    out = np.asarray(fn(noisy_tokens, latents, noisy))
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_a_masked_neighbour_is_the_same_as_no_neighbour(decoder):
    fn, tokens, latents = decoder
    ref = np.asarray(fn(tokens, latents, _batch()))
    # Target 0 has neighbours [1, 2, (masked)]: reorder as [(masked), 2, 1] -> same output
    # (the sequence has no positions), and masking neighbour 2 changes only target 0.
    b = _batch()
    nbr, nm = b.neighbor_index.copy(), b.neighbor_mask.copy()
    nbr[0], nm[0] = [7, 2, 1], [False, True, True]
    out = np.asarray(fn(tokens, latents, _batch(neighbor_index=nbr, neighbor_mask=nm)))
    np.testing.assert_allclose(out, ref, atol=1e-5)
    nm[0, 1] = False
    out = np.asarray(fn(tokens, latents, _batch(neighbor_index=nbr, neighbor_mask=nm)))
    assert np.abs(out[0] - ref[0]).max() > 1e-3
    np.testing.assert_allclose(out[1:], ref[1:], atol=1e-6)


def test_a_target_reads_only_its_own_graphs_latents(decoder):
    fn, tokens, latents = decoder
    ref = np.asarray(fn(tokens, latents, _batch()))
    other = latents.copy()
    other[1] *= np.linspace(0.5, 2.0, D, dtype=np.float32)  # rescale graph 1's channels
    out = np.asarray(fn(tokens, other, _batch()))
    np.testing.assert_allclose(out[:2], ref[:2], atol=1e-6)  # graph-0 targets
    assert np.abs(out[2:4] - ref[2:4]).max() > 1e-3  # graph-1 targets


def test_graph_decoder_masks_unused_slots_and_keeps_graphs_apart():
    rng = np.random.default_rng(3)
    latents = rng.normal(size=(G, K, D)).astype(np.float32)
    mask = np.array([True, True, False])
    dec = GraphDecoder(num_heads=2)
    p = init_params(dec, latents, mask)
    fn = jax.jit(lambda lat: dec.apply({"params": p}, lat, mask))
    ref = np.asarray(fn(latents))
    assert not ref[2].any() and np.abs(ref[:2]).max() > 0.1
    moved = latents.copy()
    moved[1] *= -1
    out = np.asarray(fn(moved))
    np.testing.assert_array_equal(out[0], ref[0])
    assert np.abs(out[1] - ref[1]).max() > 1e-3


def test_heads_are_exact_per_dataset_linear_maps_with_masked_classes():
    rng = np.random.default_rng(4)
    h = rng.normal(size=(5, D)).astype(np.float32)
    ds = np.array([0, 1, 2, 1, 0], np.int32)
    heads = DatasetHeads(num_classes=(3, 1, 5))
    p = init_params(heads, h, ds)
    p["bias"] = rng.normal(size=p["bias"].shape).astype(np.float32)
    logits, pred = heads.apply({"params": p}, jnp.asarray(h, jnp.bfloat16), ds)
    assert logits.dtype == jnp.float32 and logits.shape == (5, 5)
    hb = np.asarray(jnp.asarray(h, jnp.bfloat16), np.float32)
    for q, s in enumerate(ds):
        c = (3, 1, 5)[s]
        expect = hb[q] @ p["kernel"][s] + p["bias"][s]
        np.testing.assert_allclose(logits[q, :c], expect[:c], rtol=1e-5, atol=1e-5)
        assert (np.asarray(logits[q, c:]) == NEG_INF).all()
        np.testing.assert_allclose(
            pred[q], hb[q] @ p["reg_kernel"][s] + p["reg_bias"][s], rtol=1e-5, atol=1e-5
        )
