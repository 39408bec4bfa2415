"""MessageCreator: FIMP-base message = per-edge numpy loop (eqs. 6-7); transformer stack on
self-loops = the stack run as an ordinary encoder per node."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.fimp import MessageCreator, MessageCreatorConfig
from jaxfm.nn import TransformerLayer
from jaxfm.testing import random_params


def _edge_message(p, h_v, h_u, valid_u):
    """m_{u->v} for one edge, float64 numpy: eq. 6 projections, eq. 7 attention, out proj."""
    q = np.einsum("ld,dhk->lhk", h_v, p["query"]["kernel"]) + p["query"]["bias"]  # eq. 6
    k = np.einsum("ld,dhk->lhk", h_u, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("ld,dhk->lhk", h_u, p["value"]["kernel"]) + p["value"]["bias"]
    s = np.einsum("qhk,thk->hqt", q, k) / np.sqrt(q.shape[-1])
    s = np.where(valid_u[None, None], s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)  # eq. 7 softmax
    y = np.einsum("hqt,thk->qhk", a, v)
    return np.einsum("qhk,hkf->qf", y, p["out"]["kernel"]) + p["out"]["bias"]


@pytest.mark.parametrize("aggregation", ["mean", "sum"])
def test_fimp_base_message_equals_per_edge_loop(aggregation):
    rng = np.random.default_rng(0)
    n, length, dim = 4, 5, 8
    h = rng.normal(size=(n, length, dim)).astype(np.float32)
    kv_mask = np.ones((n, length), bool)
    kv_mask[2, 2:] = False
    senders = np.array([0, 1, 2, 3, 0, 2, 1])
    receivers = np.array([0, 0, 1, 1, 2, 2, 2])
    edge_mask = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    creator = MessageCreator(
        MessageCreatorConfig(kind="attention", num_heads=2), dim=dim, aggregation=aggregation
    )
    params = random_params(creator, h, senders, receivers, kv_mask=kv_mask)
    assert set(params) == {"attention"}
    out = jax.jit(
        lambda p: creator.apply(
            {"params": p}, h, senders, receivers, kv_mask=kv_mask, edge_mask=edge_mask
        )
    )(params)
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["attention"])
    ref = np.zeros((n, length, dim))
    count = np.zeros(n)
    for s, r, ok in zip(senders, receivers, edge_mask, strict=True):
        if ok:
            ref[r] += _edge_message(p, h[r], h[s], kv_mask[s])
            count[r] += 1
    if aggregation == "mean":
        ref /= np.maximum(count, 1)[:, None, None]
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out[3]), 0.0)  # no incoming edge -> no message


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_transformer_stack_on_self_loops_equals_encoder(norm):
    n, length, dim = 3, 4, 8
    h = np.random.default_rng(2).normal(size=(n, length, dim)).astype(np.float32)
    kv_mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], bool)
    cfg = MessageCreatorConfig(kind="transformer", num_layers=2, num_heads=2, norm=norm)
    creator = MessageCreator(cfg, dim=dim)
    loops = np.arange(n)
    params = random_params(creator, h, loops, loops, kv_mask=kv_mask)
    assert set(params) == {"layers_0", "layers_1"}
    layer = TransformerLayer(num_heads=2, mlp_dim=4 * dim, norm=norm)

    @jax.jit
    def both(p):
        msg, maps = creator.apply(
            {"params": p}, h, loops, loops, kv_mask=kv_mask, attention_edges=jnp.array([2])
        )
        x = h
        for name in ("layers_0", "layers_1"):
            x = layer.apply({"params": p[name]}, x, kv_mask=kv_mask)
        return msg, maps, x

    msg, maps, ref = both(params)
    np.testing.assert_allclose(msg, ref, atol=1e-5, rtol=1e-5)
    assert maps.shape == (2, 1, 2, length, length)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(maps[:, 0, :, :, 1:]), 0.0)  # node 2's padding
