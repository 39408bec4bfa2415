"""The contract layers against plain-numpy references on tiny graphs, masking and equivariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.baselines import GATLayer, GCNLayer, GINLayer, GPSLayer, SAGELayer
from jaxfm.baselines.gcn import gcn_norm, gcn_propagate


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _set(params, path, value):
    node = params["params"]
    for p in path[:-1]:
        node = node[p]
    assert node[path[-1]].shape == np.shape(value), path
    node[path[-1]] = jnp.asarray(value, jnp.float32)


def _leaky(x, slope=0.2):
    return np.where(x > 0, x, slope * x)


def _layer_norm(x, p, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = (x**2).mean(-1, keepdims=True) - mu**2
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


# Path 0 - 1 - 2, both directions.
S3 = jnp.array([0, 1, 1, 2], jnp.int32)
R3 = jnp.array([1, 0, 2, 1], jnp.int32)
H3 = jnp.array([[1.0, 0.0], [2.0, 1.0], [4.0, -1.0]])


def test_gcn_layer_on_a_path_matches_hand_computation():
    layer = GCNLayer(1)
    params = layer.init(jax.random.key(0), H3, S3, R3)
    _set(params, ("linear", "kernel"), [[1.0], [0.5]])
    _set(params, ("bias",), [0.1])
    out = np.asarray(layer.apply(params, H3, S3, R3))
    z = np.array([1.0, 2.5, 3.5])  # h W
    a = 1 / np.sqrt(6)  # degrees (with self loop) 2, 3, 2
    expect = [z[0] / 2 + a * z[1], a * z[0] + z[1] / 3 + a * z[2], a * z[1] + z[2] / 2]
    np.testing.assert_allclose(out[:, 0], np.array(expect) + 0.1, rtol=1e-6)


def test_gcn_layer_equals_gcn_norm_propagation_and_ignores_input_self_loops():
    rng = np.random.default_rng(0)
    n = 7
    s, r = rng.integers(0, n, 12), rng.integers(0, n, 12)
    s2, r2, w2 = gcn_norm(s, r, n)  # symmetrised, deduplicated, with self loops
    h = jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)
    layer = GCNLayer(4, use_bias=False)
    params = layer.init(jax.random.key(1), h, jnp.asarray(s2), jnp.asarray(r2))
    out = layer.apply(params, h, jnp.asarray(s2), jnp.asarray(r2))  # loops present: ignored
    ref = gcn_propagate(h @ params["params"]["linear"]["kernel"], s2, r2, w2, n)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_sage_layer_matches_hand_computation():
    s = jnp.array([0, 1, 2], jnp.int32)  # 0->2, 1->2, 2->0; node 1 has no in-edge
    r = jnp.array([2, 2, 0], jnp.int32)
    layer = SAGELayer(1)
    params = layer.init(jax.random.key(0), H3, s, r)
    _set(params, ("self", "kernel"), [[1.0], [2.0]])
    _set(params, ("self", "bias"), [0.5])
    _set(params, ("neighbor", "kernel"), [[-1.0], [3.0]])
    out = np.asarray(layer.apply(params, H3, s, r))[:, 0]
    h = np.asarray(H3)
    ws, wn = np.array([1.0, 2.0]), np.array([-1.0, 3.0])
    expect = [
        h[0] @ ws + 0.5 + h[2] @ wn,
        h[1] @ ws + 0.5,
        h[2] @ ws + 0.5 + (h[0] + h[1]) / 2 @ wn,
    ]
    np.testing.assert_allclose(out, expect, rtol=1e-6)


def test_gin_layer_matches_hand_computation():
    layer = GINLayer(1, hidden_features=2)
    params = layer.init(jax.random.key(0), H3, S3, R3)
    _set(params, ("eps",), 0.5)
    w1, b1 = np.array([[1.0, -1.0], [2.0, 1.0]]), np.array([0.0, 1.0])
    w2, b2 = np.array([[1.0], [-2.0]]), np.array([0.25])
    _set(params, ("mlp_0", "kernel"), w1)
    _set(params, ("mlp_0_bias",), b1)
    _set(params, ("mlp_1", "kernel"), w2)
    _set(params, ("mlp_1", "bias"), b2)
    h = np.asarray(H3)
    agg = 1.5 * h + np.stack([h[1], h[0] + h[2], h[1]])
    expect = np.maximum(agg @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(layer.apply(params, H3, S3, R3), expect, rtol=1e-6)


def _gat_reference(p, h, s, r, heads, concat, valid=None):
    n = h.shape[0]
    z = h @ p["linear"]["kernel"]
    z = z.reshape(n, heads, -1)
    es, ed = (z * p["att_src"]).sum(-1), (z * p["att_dst"]).sum(-1)  # [N, H]
    valid = np.ones(len(s), bool) if valid is None else valid
    out, alphas = np.zeros_like(z), {}
    for v in range(n):
        srcs = [v] + [
            int(u) for u, w, ok in zip(s, r, valid, strict=True) if w == v and ok and u != v
        ]
        e = _leaky(es[srcs] + ed[v])  # [|S_v|, H]
        a = np.exp(e - e.max(0))
        a = a / a.sum(0)
        alphas[v] = a
        out[v] = (a[:, :, None] * z[srcs]).sum(0)
    out = out.reshape(n, -1) if concat else out.mean(1)
    return out + p["bias"], alphas


@pytest.mark.parametrize("heads,concat", [(1, True), (2, True), (2, False)])
def test_gat_layer_matches_numpy_reference(heads, concat):
    rng = np.random.default_rng(heads)
    n = 5
    s = np.array([0, 1, 2, 3, 4, 4, 2], np.int32)
    r = np.array([1, 2, 0, 0, 0, 1, 2], np.int32)  # includes a self-loop edge 2->2 (ignored)
    h = rng.normal(size=(n, 3)).astype(np.float32)
    layer = GATLayer(4, heads=heads, concat=concat)
    params = layer.init(jax.random.key(2), h, jnp.asarray(s), jnp.asarray(r))
    params = jax.tree_util.tree_map(
        lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params
    )
    out = layer.apply(params, jnp.asarray(h), jnp.asarray(s), jnp.asarray(r))
    expect, _ = _gat_reference(_np(params)["params"], h, s, r, heads, concat)
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)


def test_gat_coefficients_sum_to_one_over_incoming_edges_and_self():
    rng = np.random.default_rng(3)
    n, e = 9, 30
    s, r = rng.integers(0, n, e).astype(np.int32), rng.integers(0, n, e).astype(np.int32)
    emask = rng.random(e) < 0.8
    h = jnp.asarray(rng.normal(size=(n, 4)), jnp.float32)
    layer = GATLayer(6, heads=3)
    params = layer.init(jax.random.key(0), h, jnp.asarray(s), jnp.asarray(r))
    _, inter = layer.apply(
        params,
        h,
        jnp.asarray(s),
        jnp.asarray(r),
        edge_mask=jnp.asarray(emask),
        mutable=["intermediates"],
    )
    alpha = np.asarray(inter["intermediates"]["attention"][0])  # [E + N, H]
    recv = np.concatenate([r, np.arange(n)])
    valid = np.concatenate([emask & (s != r), np.ones(n, bool)])
    assert np.all(alpha[~valid] == 0)
    sums = np.zeros((n, 3))
    np.add.at(sums, recv, alpha)
    np.testing.assert_allclose(sums, 1.0, rtol=1e-5)
    # and the self loop is really in the softmax: with no in-edges a node attends only itself
    isolated = np.setdiff1d(np.arange(n), recv[:e][valid[:e]])
    for v in isolated:
        np.testing.assert_allclose(alpha[e + v], 1.0)


def _gps_reference(p, h, s, r, heads):
    n, d = h.shape[0], p["query"]["kernel"].shape[1]
    g = p["local"]
    z = h @ g["mlp_0"]["kernel"]
    agg = (1 + g["eps"]) * z
    np.add.at(agg, r, z[s])
    local = np.maximum(agg + g["mlp_0_bias"], 0) @ g["mlp_1"]["kernel"] + g["mlp_1"]["bias"]
    h_local = _layer_norm(h + local, p["norm_local"])

    def lin(name, x):
        return x @ p[name]["kernel"] + p[name]["bias"]

    q, k, v = (lin(nm, h).reshape(n, heads, d // heads) for nm in ("query", "key", "value"))
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d // heads)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    att = np.einsum("hqk,khd->qhd", w, v).reshape(n, d)
    h_attn = _layer_norm(h + lin("out", att), p["norm_attn"])
    y = h_local + h_attn
    ffn = lin("ffn_out", np.maximum(lin("ffn_in", y), 0))
    return _layer_norm(y + ffn, p["norm_ffn"])


def test_gps_layer_matches_numpy_reference():
    rng = np.random.default_rng(4)
    n, d = 5, 8
    s = np.array([0, 1, 2, 3, 4], np.int32)
    r = np.array([1, 2, 3, 4, 0], np.int32)
    h = rng.normal(size=(n, d)).astype(np.float32)
    layer = GPSLayer(d, heads=2)
    params = layer.init(jax.random.key(0), h, jnp.asarray(s), jnp.asarray(r))
    params = jax.tree_util.tree_map(
        lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.5, jnp.float32), params
    )
    out = layer.apply(params, jnp.asarray(h), jnp.asarray(s), jnp.asarray(r))
    expect = _gps_reference(_np(params)["params"], h, s, r, heads=2)
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-4)


def test_gps_segment_ids_keep_global_attention_inside_each_graph():
    """Two graphs batched with segment ids give exactly each graph's own outputs."""
    rng = np.random.default_rng(6)
    h1, s1, r1 = _random_graph(rng, n=5, e=8, f=6)
    h2, s2, r2 = _random_graph(rng, n=4, e=6, f=6)
    layer = GPSLayer(6, heads=2)
    params = layer.init(jax.random.key(1), jnp.asarray(h1), jnp.asarray(s1), jnp.asarray(r1))
    params = jax.tree_util.tree_map(
        lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.5, jnp.float32), params
    )
    alone = [layer.apply(params, jnp.asarray(h), jnp.asarray(s), jnp.asarray(r))
             for h, s, r in ((h1, s1, r1), (h2, s2, r2))]  # fmt: skip
    h = jnp.asarray(np.concatenate([h1, h2]))
    s, r = jnp.asarray(np.concatenate([s1, s2 + 5])), jnp.asarray(np.concatenate([r1, r2 + 5]))
    seg = jnp.asarray([0] * 5 + [1] * 4)
    out = layer.apply(params, h, s, r, segment_ids=seg)
    np.testing.assert_allclose(out, np.concatenate(alone), rtol=1e-5, atol=1e-5)
    mixed = layer.apply(params, h, s, r)  # without them the graphs attend to each other
    assert not np.allclose(mixed, np.concatenate(alone), atol=1e-3)


LAYERS = {
    "gcn": lambda: GCNLayer(6),
    "sage": lambda: SAGELayer(6),
    "gat": lambda: GATLayer(6, heads=2),
    "gin": lambda: GINLayer(6),
    "gps": lambda: GPSLayer(6, heads=2),
}


def _random_graph(rng, n=8, e=20, f=5):
    s, r = rng.integers(0, n, e).astype(np.int32), rng.integers(0, n, e).astype(np.int32)
    return rng.normal(size=(n, f)).astype(np.float32), s, r


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_padding_nodes_and_masked_edges_do_not_change_valid_outputs(kind):
    rng = np.random.default_rng(5)
    h, s, r = _random_graph(rng)
    n, e = h.shape[0], len(s)
    layer = LAYERS[kind]()
    params = layer.init(jax.random.key(0), jnp.asarray(h), jnp.asarray(s), jnp.asarray(r))
    ref = layer.apply(params, jnp.asarray(h), jnp.asarray(s), jnp.asarray(r))
    # 3 padding nodes with large junk features; padding edges touching them (and a masked edge
    # between valid nodes) in both directions.
    hp = np.concatenate([h, rng.normal(size=(3, h.shape[1])).astype(np.float32) * 100])
    extra_s = np.array([n, 0, n + 1, 3, 2], np.int32)
    extra_r = np.array([1, n + 2, 4, n, 5], np.int32)
    sp, rp = np.concatenate([s, extra_s]), np.concatenate([r, extra_r])
    emask = np.concatenate([np.ones(e, bool), [True, True, True, True, False]])
    nmask = np.arange(n + 3) < n
    out = layer.apply(
        params,
        jnp.asarray(hp),
        jnp.asarray(sp),
        jnp.asarray(rp),
        edge_mask=jnp.asarray(emask),
        node_mask=jnp.asarray(nmask),
    )
    np.testing.assert_allclose(out[:n], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[n:], 0.0)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_one_layer_is_permutation_equivariant(kind):
    rng = np.random.default_rng(6)
    h, s, r = _random_graph(rng)
    perm = rng.permutation(h.shape[0])  # new node i is old node perm[i]
    inv = np.argsort(perm)
    layer = LAYERS[kind]()
    params = layer.init(jax.random.key(0), jnp.asarray(h), jnp.asarray(s), jnp.asarray(r))
    out = layer.apply(params, jnp.asarray(h), jnp.asarray(s), jnp.asarray(r))
    eperm = rng.permutation(len(s))  # edge order must not matter either
    out_p = layer.apply(
        params, jnp.asarray(h[perm]), jnp.asarray(inv[s][eperm]), jnp.asarray(inv[r][eperm])
    )
    np.testing.assert_allclose(out_p, np.asarray(out)[perm], rtol=1e-5, atol=1e-5)
