"""MultiHeadAttention: einsum reference, flax layout parity, cross-node per-edge loop (eqs. 6-7)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.nn import MultiHeadAttention
from jaxfm.testing import random_params


def _np_params(p):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), p)


def _ref_mha(p, xq, xkv, kv_mask=None):
    """Dense einsum multi-head attention in float64 numpy."""
    q = np.einsum("btd,dhk->bthk", xq, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("btd,dhk->bthk", xkv, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("btd,dhk->bthk", xkv, p["value"]["kernel"]) + p["value"]["bias"]
    s = np.einsum("bqhk,bthk->bhqt", q, k) / np.sqrt(q.shape[-1])
    if kv_mask is not None:
        s = np.where(kv_mask[:, None, None, :], s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    y = np.einsum("bhqt,bthk->bqhk", w, v)
    return np.einsum("bqhk,hkf->bqf", y, p["out"]["kernel"]) + p["out"]["bias"], w


@pytest.mark.parametrize("cross", [False, True])
def test_matches_einsum_reference(cross):
    rng = np.random.default_rng(0)
    xq = rng.normal(size=(2, 5, 12)).astype(np.float32)
    xkv = rng.normal(size=(2, 7, 6)).astype(np.float32) if cross else None
    kv_mask = np.ones((2, 7 if cross else 5), bool)
    kv_mask[0, 3:] = False
    mha = MultiHeadAttention(num_heads=3, head_dim=4, out_features=10)

    @jax.jit
    def run(p):
        out, w = mha.apply({"params": p}, xq, xkv, kv_mask=kv_mask, return_weights=True)
        maps = mha.apply({"params": p}, xq, xkv, kv_mask=kv_mask, method="attention_map")
        return p, out, w, maps

    params, out, w, maps = run(random_params(mha, xq, xkv))
    ref, ref_w = _ref_mha(_np_params(params), xq, xq if xkv is None else xkv, kv_mask)
    assert out.shape == (2, 5, 10)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(w, ref_w, atol=1e-6)
    np.testing.assert_allclose(maps, ref_w, atol=1e-6)


def test_param_layout_and_numbers_match_flax_mha():
    x = np.random.default_rng(1).normal(size=(2, 4, 8)).astype(np.float32)
    mha = MultiHeadAttention(num_heads=2)  # head_dim inferred: 8 // 2
    ref = nn.MultiHeadDotProductAttention(num_heads=2)

    params = random_params(mha, x)
    ref_shapes = jax.eval_shape(lambda: ref.init(jax.random.key(0), x))["params"]
    out, ref_out = jax.jit(lambda p: (mha.apply({"params": p}, x), ref.apply({"params": p}, x)))(
        params
    )
    assert set(params) == {"query", "key", "value", "out"}
    assert params["query"]["kernel"].shape == (8, 2, 4)
    assert params["query"]["bias"].shape == (2, 4)
    assert params["out"]["kernel"].shape == (2, 4, 8)
    # Same tree as flax's MultiHeadDotProductAttention (DenseGeneral layout), same numbers.
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref_shapes)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)


def test_qkv_features_and_validation():
    x = jnp.ones((1, 3, 8))
    shapes = lambda m: jax.eval_shape(lambda: m.init(jax.random.key(0), x))["params"]
    assert shapes(MultiHeadAttention(num_heads=2, qkv_features=12))["key"]["kernel"].shape == (
        8,
        2,
        6,
    )
    out = jax.eval_shape(
        lambda: MultiHeadAttention(num_heads=2, out_features=5).init_with_output(
            jax.random.key(0), x
        )
    )[0]
    assert out.shape == (1, 3, 5)
    with pytest.raises(ValueError, match="divisible"):
        shapes(MultiHeadAttention(num_heads=3))
    with pytest.raises(ValueError, match="qkv_features"):
        shapes(MultiHeadAttention(num_heads=2, head_dim=4, qkv_features=12))
    with pytest.raises(ValueError, match="aggregation"):
        idx = jnp.zeros(1, int)
        jax.eval_shape(
            lambda: MultiHeadAttention(num_heads=2).init(
                jax.random.key(0), x, idx, idx, aggregation="max", method="cross_node"
            )
        )


def _per_edge_loop(p, x, src, senders, receivers, kv_mask, edge_mask, aggregation):
    """FIMP eqs. 6-7 edge by edge: m_{u->v} = Attn(Q=H_v, K=V=H_u) W_O, then aggregate."""
    n = x.shape[0]
    out = np.zeros((n, x.shape[1], p["out"]["bias"].shape[0]))
    count = np.zeros(n)
    for s, r, ok in zip(senders, receivers, edge_mask, strict=True):
        if not ok:
            continue
        m, _ = _ref_mha(p, x[r][None], src[s][None], kv_mask[s][None])
        out[r] += m[0]
        count[r] += 1
    if aggregation == "mean":
        out /= np.maximum(count, 1)[:, None, None]
    return out


@pytest.mark.parametrize("aggregation", ["mean", "sum"])
def test_cross_node_equals_per_edge_loop(aggregation):
    rng = np.random.default_rng(1)
    n, lq, lk = 5, 3, 4
    x = rng.normal(size=(n, lq, 8)).astype(np.float32)
    src = rng.normal(size=(n, lk, 6)).astype(np.float32)
    senders = np.array([0, 1, 2, 3, 1, 4, 2, 0])
    receivers = np.array([1, 1, 0, 2, 2, 2, 3, 0])
    edge_mask = np.array([1, 1, 1, 1, 0, 1, 1, 1], bool)
    kv_mask = rng.random((n, lk)) < 0.7
    kv_mask[:, 0] = True
    mha = MultiHeadAttention(num_heads=2)

    @jax.jit
    def run(p):
        out = mha.apply(
            {"params": p},
            x,
            senders,
            receivers,
            kv_mask=kv_mask,
            edge_mask=edge_mask,
            aggregation=aggregation,
            x_src=src,
            method="cross_node",
        )
        return p, out

    params, out = run(random_params(mha, x, senders, receivers, x_src=src, method="cross_node"))
    ref = _per_edge_loop(
        _np_params(params), x, src, senders, receivers, kv_mask, edge_mask, aggregation
    )
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    # Node 4 has no incoming edge: its aggregated message is exactly zero (bias not added).
    np.testing.assert_array_equal(np.asarray(out[4]), 0.0)


def test_gradients_finite_with_fully_masked_rows():
    x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype(np.float32)
    kv_mask = jnp.array([[True, True, False, False], [False] * 4])
    mha = MultiHeadAttention(num_heads=2)

    @jax.jit
    def grads(p):
        return jax.grad(lambda p: jnp.sum(mha.apply({"params": p}, x, kv_mask=kv_mask) ** 2))(p)

    assert all(
        bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads(random_params(mha, x)))
    )
