"""jaxfm.ops.cross_node_attention (FIMP eqs. 6-7) against per-edge references.

Corner cases (padding edges, isolated nodes, senders without a valid key), symmetries
(relabelling, padding), chunk-size independence, gradients, bf16, memory bound and errors.
"""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfm.ops.cross_node as cross_node_module
from jaxfm.ops import (
    cross_node_attention,
    cross_node_attention_reference,
)

IMPLS = ["grouped", "per_edge"]


def _graph(seed, n=9, e=40, lq=5, lk=6, h=2, dh=4, masks=True):
    """Random graph with padding edges, an isolated node (0) and a sender (1) with no valid key."""
    r = np.random.default_rng(seed)
    q = r.normal(size=(n, lq, h, dh)).astype(np.float32)
    k = r.normal(size=(n, lk, h, dh)).astype(np.float32)
    v = r.normal(size=(n, lk, h, dh)).astype(np.float32)
    senders = r.integers(0, n, size=e).astype(np.int32)
    receivers = r.integers(1, n, size=e).astype(np.int32)  # node 0 receives nothing
    senders[:3] = 1  # node 1 sends, but has no valid key (when masks are on)
    kv_mask = edge_mask = None
    if masks:
        kv_mask = r.random((n, lk)) < 0.7
        kv_mask[1] = False
        kv_mask[2:, 0] = True  # every other node has a valid key
        edge_mask = r.random(e) < 0.8
        edge_mask[:3] = True
    return dict(
        q=q, k=k, v=v, senders=senders, receivers=receivers, kv_mask=kv_mask, edge_mask=edge_mask
    )


def _call(g, use_jit=False, **kw):
    fn = lambda q, k, v, s, r, km, em: cross_node_attention(
        q, k, v, s, r, kv_mask=km, edge_mask=em, **kw
    )
    fn = jax.jit(fn) if use_jit else fn
    return fn(g["q"], g["k"], g["v"], g["senders"], g["receivers"], g["kv_mask"], g["edge_mask"])


def _reference(g, aggregation="mean"):
    return cross_node_attention_reference(
        g["q"],
        g["k"],
        g["v"],
        g["senders"],
        g["receivers"],
        kv_mask=g["kv_mask"],
        edge_mask=g["edge_mask"],
        aggregation=aggregation,
    )


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("aggregation", ["mean", "sum"])
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_per_edge_loop(impl, aggregation, use_jit):
    g = _graph(0)
    out = _call(g, use_jit, implementation=impl, aggregation=aggregation, edge_chunk_size=8)
    ref = _reference(g, aggregation)
    assert out.shape == ref.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_array_equal(out[0], 0.0)  # isolated node


@pytest.mark.parametrize("impl", IMPLS)
def test_sender_without_valid_key_sends_zero_message_that_counts(impl):
    g = _graph(1, n=4, e=2, masks=False)
    g["kv_mask"] = np.array([[True] * 6, [False] * 6, [True] * 6, [True] * 6])
    g["senders"], g["receivers"] = np.array([1, 2], np.int32), np.array([3, 3], np.int32)
    out = np.asarray(_call(g, implementation=impl))
    alone = dict(g, senders=g["senders"][1:], receivers=g["receivers"][1:])
    single = np.asarray(_call(alone, implementation=impl, aggregation="sum"))
    np.testing.assert_allclose(out[3], single[3] / 2, atol=1e-6)  # mean over 2 edges, one zero


@pytest.mark.parametrize("row_width", [1, 2, 3, 8])
def test_grouped_row_widths_match_reference(row_width):
    g = _graph(2, e=60)
    out = _call(g, implementation="grouped", row_width=row_width, edge_chunk_size=16)
    np.testing.assert_allclose(out, _reference(g), atol=1e-5)


def test_grouped_is_bitwise_independent_of_chunk_size():
    g = _graph(3, n=30, e=200)
    outs = [np.asarray(_call(g, edge_chunk_size=c)) for c in (1, 4, 7, 32, 100, 10_000)]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


def test_per_edge_is_independent_of_chunk_size_to_rounding():
    # per_edge uses jaxfm.ops.attention, whose softmax sums are XLA reductions: their association
    # order follows the array shape, so chunks may round differently in the last bit.
    g = _graph(3, n=30, e=200)
    outs = [np.asarray(_call(g, implementation="per_edge", edge_chunk_size=c)) for c in (1, 7, 64)]
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_relabelling_nodes_permutes_outputs(impl):
    g = _graph(4)
    perm = np.random.default_rng(4).permutation(g["q"].shape[0])
    inv = np.argsort(perm)  # old node i is new node inv[i]
    h = dict(
        g,
        q=g["q"][perm],
        k=g["k"][perm],
        v=g["v"][perm],
        kv_mask=g["kv_mask"][perm],
        senders=inv[g["senders"]].astype(np.int32),
        receivers=inv[g["receivers"]].astype(np.int32),
    )
    np.testing.assert_allclose(
        _call(h, implementation=impl)[inv], _call(g, implementation=impl), atol=1e-6
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_padding_nodes_and_edges_change_nothing(impl):
    g = _graph(5)
    n, e, extra_n, extra_e = g["q"].shape[0], g["senders"].shape[0], 3, 11
    r = np.random.default_rng(5)
    pad = lambda x, m: np.concatenate([x, r.normal(size=(m, *x.shape[1:])).astype(x.dtype)])
    h = dict(
        g,
        q=pad(g["q"], extra_n),
        k=pad(g["k"], extra_n),
        v=pad(g["v"], extra_n),
        kv_mask=np.concatenate([g["kv_mask"], np.zeros((extra_n, g["k"].shape[1]), bool)]),
        senders=np.concatenate([g["senders"], np.full(extra_e, n, np.int32)]),
        receivers=np.concatenate([g["receivers"], r.integers(0, n + extra_n, extra_e)]),
        edge_mask=np.concatenate([g["edge_mask"], np.zeros(extra_e, bool)]),
    )
    h["receivers"] = h["receivers"].astype(np.int32)
    assert h["senders"].shape[0] == e + extra_e
    out, padded = _call(g, implementation=impl), _call(h, implementation=impl)
    if impl == "grouped":
        np.testing.assert_array_equal(padded[:n], out)
    else:
        np.testing.assert_allclose(padded[:n], out, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(padded[n:], 0.0)


def _dense_jnp_reference(q, k, v, senders, receivers, kv_mask, edge_mask, aggregation="mean"):
    """Gather-per-edge jnp version (all edges at once), differentiated by plain autodiff."""
    n, _, _, dh = q.shape
    scores = jnp.einsum("eqhd,ekhd->ehqk", q[receivers], k[senders]) / jnp.sqrt(dh)
    valid = kv_mask[senders][:, None, None, :]
    scores = jnp.where(valid, scores, -jnp.inf)
    mx = jax.lax.stop_gradient(jnp.max(scores, -1, keepdims=True))
    p = jnp.where(valid, jnp.exp(scores - jnp.where(jnp.isfinite(mx), mx, 0.0)), 0.0)
    den = p.sum(-1, keepdims=True)
    p = p / jnp.where(den > 0, den, 1.0)
    msg = jnp.einsum("ehqk,ekhd->eqhd", p, v[senders]) * edge_mask[:, None, None, None]
    out = jax.ops.segment_sum(msg, receivers, num_segments=n)
    if aggregation == "mean":
        deg = jax.ops.segment_sum(edge_mask.astype(jnp.float32), receivers, num_segments=n)
        out = out / jnp.maximum(deg, 1.0)[:, None, None, None]
    return out


@pytest.mark.parametrize("aggregation", ["mean", "sum"])
@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_dense_reference(impl, aggregation):
    g = _graph(6)
    cot = np.random.default_rng(6).normal(size=g["q"].shape).astype(np.float32)
    args = (g["senders"], g["receivers"], g["kv_mask"], g["edge_mask"])

    def loss_op(q, k, v):
        out = cross_node_attention(
            q,
            k,
            v,
            g["senders"],
            g["receivers"],
            kv_mask=g["kv_mask"],
            edge_mask=g["edge_mask"],
            aggregation=aggregation,
            implementation=impl,
            edge_chunk_size=8,
        )
        return jnp.sum(out * cot)

    def loss_ref(q, k, v):
        return jnp.sum(_dense_jnp_reference(q, k, v, *args, aggregation=aggregation) * cot)

    grads = jax.jit(jax.grad(loss_op, argnums=(0, 1, 2)))(g["q"], g["k"], g["v"])
    expected = jax.grad(loss_ref, argnums=(0, 1, 2))(g["q"], g["k"], g["v"])
    for name, got, want in zip("qkv", grads, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_inputs_agree_with_fp32(impl):
    g = _graph(7)
    g16 = dict(g, **{x: jnp.asarray(g[x], jnp.bfloat16) for x in "qkv"})
    out16 = _call(g16, implementation=impl)
    assert out16.dtype == jnp.bfloat16
    # inputs rounded to bf16 (8 bits of mantissa) and the output rounded once: 3e-2 on O(1) values
    ref = _reference(
        {x: np.asarray(jnp.asarray(y, jnp.float32)) if x in "qkv" else y for x, y in g16.items()}
    )
    np.testing.assert_allclose(np.asarray(out16, np.float32), ref, atol=3e-2)
    np.testing.assert_allclose(np.asarray(out16, np.float32), _reference(g), atol=6e-2)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_edges_and_no_masks(impl):
    g = _graph(8, masks=False)
    np.testing.assert_allclose(_call(g, implementation=impl), _reference(g), atol=1e-5)
    empty = dict(g, senders=np.zeros((0,), np.int32), receivers=np.zeros((0,), np.int32))
    np.testing.assert_array_equal(_call(empty, implementation=impl), 0.0)
    all_padding = dict(g, edge_mask=np.zeros(g["senders"].shape, bool))
    np.testing.assert_array_equal(_call(all_padding, implementation=impl), 0.0)


def test_traced_indices_skip_the_range_check():
    g = _graph(9)
    out = jax.jit(lambda s, r: cross_node_attention(g["q"], g["k"], g["v"], s, r))(
        g["senders"], g["receivers"]
    )
    assert out.shape == g["q"].shape


def test_memory_does_not_grow_with_edges_like_scores():
    n, lq, h, dh = 50, 16, 2, 8
    q = jnp.zeros((n, lq, h, dh))

    def temp_bytes(e):
        s = jnp.zeros((e,), jnp.int32)
        f = lambda q, s: cross_node_attention(q, q, q, s, s, edge_chunk_size=64).sum()
        return jax.jit(jax.grad(f)).lower(q, s).compile().memory_analysis().temp_size_in_bytes

    growth = temp_bytes(4000) - temp_bytes(1000)
    scores = 3000 * h * lq * lq * 4  # what materializing the extra edges' scores would take
    assert growth < 0.2 * scores, (growth, scores)


_BAD = [
    ("q", lambda g: dict(g, q=g["q"][0]), r"q must be \[N, Lq, H, Dh\]"),
    ("k heads", lambda g: dict(g, k=g["k"][:, :, :1]), r"k must be \[N=9, Lk, H=2, Dh=4\]"),
    ("k Dh", lambda g: dict(g, k=g["k"][..., :3]), r"k must be \[N=9, Lk, H=2, Dh=4\]"),
    ("k nodes", lambda g: dict(g, k=g["k"][:5]), r"k must be \[N=9"),
    ("v tokens", lambda g: dict(g, v=g["v"][:, :2]), r"v must be \[N=9, Lk=6, H=2, Dh=4\]"),
    ("q dtype", lambda g: dict(g, q=g["q"].astype(np.int32)), r"q must be a floating array"),
    ("kv_mask shape", lambda g: dict(g, kv_mask=g["kv_mask"][:, :3]), r"kv_mask must have shape"),
    (
        "kv_mask dtype",
        lambda g: dict(g, kv_mask=g["kv_mask"].astype(np.float32)),
        r"kv_mask must be bool",
    ),
    (
        "edge_mask shape",
        lambda g: dict(g, edge_mask=g["edge_mask"][:5]),
        r"edge_mask must have shape \[E\]=\(40,\)",
    ),
    (
        "edge_mask dtype",
        lambda g: dict(g, edge_mask=g["edge_mask"].astype(np.int32)),
        r"edge_mask must be bool",
    ),
    (
        "senders dtype",
        lambda g: dict(g, senders=g["senders"].astype(np.float32)),
        r"senders must be an integer array",
    ),
    ("senders 2-D", lambda g: dict(g, senders=g["senders"][:, None]), r"senders must have shape"),
    (
        "receivers shape",
        lambda g: dict(g, receivers=g["receivers"][:7]),
        r"receivers must have shape \[E\]=\(40,\)",
    ),
    (
        "senders range",
        lambda g: dict(g, senders=g["senders"] + 9),
        r"senders must lie in \[0, N=9\)",
    ),
    (
        "receivers negative",
        lambda g: dict(g, receivers=g["receivers"] - 5),
        r"receivers must lie in \[0, N=9\)",
    ),
]


@pytest.mark.parametrize("case", _BAD, ids=[c[0] for c in _BAD])
def test_bad_inputs_raise_naming_the_argument(case):
    _, mutate, match = case
    with pytest.raises(ValueError, match=match):
        _call(mutate(_graph(10)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_nodes=4), r"num_nodes must equal N=9"),
        (dict(aggregation="max"), r"aggregation must be one of"),
        (dict(implementation="cudnn"), r"implementation must be one of"),
        (dict(edge_chunk_size=0), r"edge_chunk_size must be a positive int"),
        (dict(row_width=0), r"row_width must be a positive int"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _call(_graph(11), **kwargs)
    assert _call(_graph(11), num_nodes=9).shape == (9, 5, 2, 4)


def test_docstring_examples_run():
    assert doctest.testmod(cross_node_module).failed == 0
