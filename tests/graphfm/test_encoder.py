"""Packed Perceiver encoder: packed == each graph alone, segment == bucketed, padding, bf16."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params

from jaxfm.graphfm.encoder import PerceiverEncoder, resolve_attention_path, scatter_graphs

T, D, G = 40, 16, 4
SIZES = (11, 17, 5)  # graph slots 0, 1, 2; slot 3 unused; rows 33..39 padding


def _packed(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(T, D)).astype(np.float32)
    seg = np.zeros(T, np.int32)
    seg[: sum(SIZES)] = np.repeat([1, 2, 3], SIZES)
    tokens[seg == 0] = 0.0
    return tokens, seg, np.array([True, True, True, False])


def _alone(tokens, seg, g):
    """Graph slot g of the packed batch, alone in slot 0 of its own batch (same T, G)."""
    rows = tokens[seg == g + 1]
    t1 = np.zeros_like(tokens)
    t1[: len(rows)] = rows
    s1 = np.zeros_like(seg)
    s1[: len(rows)] = 1
    return t1, s1, np.array([True, False, False, False])


@functools.cache
def _encoder(attention, dtype="float32", bucket_nodes=None):
    enc = PerceiverEncoder(
        num_latents=4, depth=2, cross_heads=2, self_heads=2, attention=attention,
        bucket_nodes=bucket_nodes, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
    )  # fmt: skip
    return jax.jit(lambda p, t, s, m: enc.apply({"params": p}, t, s, m))


@pytest.fixture(scope="module")
def params():
    tokens, seg, mask = _packed()
    enc = PerceiverEncoder(num_latents=4, depth=2, cross_heads=2, self_heads=2)
    return init_params(enc, tokens, seg, mask)


def test_resolve_attention_path_on_this_backend():
    expect = "bucketed" if jax.default_backend() == "gpu" else "segment"
    assert resolve_attention_path("auto") == expect
    assert resolve_attention_path("bucketed") == "bucketed"
    with pytest.raises(ValueError, match="attention path must be one of"):
        resolve_attention_path("flash")


def test_scatter_graphs_layout_is_exact():
    tokens, seg, _ = _packed()
    x, lengths = scatter_graphs(jnp.asarray(tokens), jnp.asarray(seg), G, 17)
    assert lengths.tolist() == [11, 17, 5, 0]
    starts = [0, 11, 28]
    for g, (n, s) in enumerate(zip(SIZES, starts, strict=True)):
        np.testing.assert_array_equal(x[g, :n], tokens[s : s + n])
        assert not np.asarray(x[g, n:]).any()
    assert not np.asarray(x[3]).any()


@pytest.mark.parametrize("attention", ["segment", "bucketed"])
def test_packed_latents_equal_each_graph_alone(params, attention):
    tokens, seg, mask = _packed()
    out = np.asarray(_encoder(attention)(params, tokens, seg, mask))
    assert not out[3].any()  # unused slot
    for g in range(3):
        alone = np.asarray(_encoder(attention)(params, *_alone(tokens, seg, g)))
        np.testing.assert_allclose(out[g], alone[0], atol=1e-5)
        assert not alone[1:].any()
    # Graphs really differ (the test is not vacuous).
    assert np.abs(out[0] - out[1]).max() > 1e-2


def test_segment_and_bucketed_paths_agree(params):
    tokens, seg, mask = _packed()
    ref = np.asarray(_encoder("segment")(params, tokens, seg, mask))
    for bucket in (None, max(SIZES)):
        out = np.asarray(_encoder("bucketed", bucket_nodes=bucket)(params, tokens, seg, mask))
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_padding_rows_never_reach_the_latents(params):
    tokens, seg, mask = _packed()
    ref = np.asarray(_encoder("segment")(params, tokens, seg, mask))
    noisy = tokens.copy()
    noisy[seg == 0] = 1e3 * np.random.default_rng(1).normal(size=noisy[seg == 0].shape)
    for attention in ("segment", "bucketed"):
        out = np.asarray(_encoder(attention)(params, noisy, seg, mask))
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_bfloat16_compute_agrees_with_float32(params):
    # Stated tolerance: bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4 %); through the
    # cross block and two latent blocks the LayerNormed latents (scale ~1) stay within 0.1
    # absolute and 3 % RMS of the float32 result.
    tokens, seg, mask = _packed()
    ref = np.asarray(_encoder("segment")(params, tokens, seg, mask))
    for attention in ("segment", "bucketed"):
        out = np.asarray(_encoder(attention, "bfloat16")(params, tokens, seg, mask), np.float32)
        err = out[:3] - ref[:3]
        assert np.abs(err).max() < 0.1
        assert np.sqrt((err**2).mean() / (ref[:3] ** 2).mean()) < 0.03
        assert not out[3].any()
