"""implementation="splash" (TPU splash kernel, Pallas interpret mode on CPU) against the reference.

Random segment ids with empty segments (queries whose id has no key), key masks, sequence lengths,
the packing of short sequences (B not a multiple of the pack), values and gradients, float32 and
bfloat16. Also: the TPU auto-selection, through the GraphFM segment layout and FIMP's per-edge path.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.ops import attention, build_mask, cross_node_attention
from jaxfm.ops.attention import attention_reference, resolve_implementation

attention_mod = importlib.import_module(
    "jaxfm.ops.attention"
)  # (jaxfm.ops.attention: the function)

# (b, tq, tk): Perceiver cross attention (one packed row), FIMP edges (32x32, packed 4 per
# sequence, b not a multiple of 4), a long kv side over two 128-blocks, a latent block
SHAPES = [(1, 48, 200), (9, 32, 32), (2, 40, 300), (3, 16, 16)]


def _qkv(seed, b, tq, tk, h=2, dh=16, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    out = [r.normal(size=(b, t, h, dh)) for t in (tq, tk, tk)]
    return tuple(jnp.asarray(x, dtype) for x in out)


def _masking(seed, b, tq, tk):
    """Segment ids 0..3 on q (id 3 never appears on kv: empty segments), 0..2 on kv, a key mask."""
    r = np.random.default_rng(seed + 100)
    qseg = r.integers(0, 4, size=(b, tq)).astype(np.int32)
    kseg = r.integers(0, 3, size=(b, tk)).astype(np.int32)
    kv_mask = r.random((b, tk)) < 0.7
    kv_mask[0, :] = False if b > 1 else kv_mask[0, :]  # an element with no valid key at all
    return dict(
        q_segment_ids=jnp.asarray(qseg),
        kv_segment_ids=jnp.asarray(kseg),
        kv_mask=jnp.asarray(kv_mask),
    )


def _ref(q, k, v, kw):
    b, tq, tk = q.shape[0], q.shape[1], k.shape[1]
    mask = build_mask(tq, tk, batch=b, **kw)
    f32 = lambda x: x.astype(jnp.float32)
    return attention_reference(f32(q), f32(k), f32(v), mask=mask)


@pytest.mark.parametrize("shape", SHAPES)
def test_values_match_reference_fp32(shape):
    q, k, v = _qkv(0, *shape)
    kw = _masking(0, *shape)
    out = jax.jit(lambda q, k, v: attention(q, k, v, implementation="splash", **kw))(q, k, v)
    ref = _ref(q, k, v, kw)
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)
    empty = ~np.asarray(jnp.any(build_mask(shape[1], shape[2], batch=shape[0], **kw), -1))[:, 0]
    assert empty.any() and (~empty).any()
    assert np.all(np.asarray(out)[empty] == 0)  # rows with no visible key: exactly zero


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_gradients_match_reference_fp32(shape):
    q, k, v = _qkv(1, *shape)
    kw = _masking(1, *shape)
    w = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)
    loss = lambda impl: lambda q, k, v: jnp.sum(attention(q, k, v, implementation=impl, **kw) * w)
    g = jax.jit(jax.grad(loss("splash"), argnums=(0, 1, 2)))(q, k, v)
    g_ref = jax.grad(loss("reference"), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g, g_ref, strict=True):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    # masked keys and queries without keys get exactly zero gradient
    assert np.all(np.asarray(g[1])[~np.asarray(kw["kv_mask"])] == 0)


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1]])
def test_bfloat16_values_and_gradients(shape):
    q, k, v = _qkv(3, *shape)
    kw = _masking(3, *shape)
    q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
    out = jax.jit(lambda q, k, v: attention(q, k, v, implementation="splash", **kw))(q16, k16, v16)
    assert out.dtype == jnp.bfloat16
    # bf16 inputs (8 mantissa bits) against the f32 oracle on the f32 inputs: ~4 ulps at |v| ~ 2
    np.testing.assert_allclose(out.astype(jnp.float32), _ref(q, k, v, kw), atol=3e-2)
    w = jnp.asarray(np.random.default_rng(4).normal(size=q.shape), jnp.float32)
    loss = lambda impl: (
        lambda q, k, v: jnp.sum(
            attention(q, k, v, implementation=impl, **kw).astype(jnp.float32) * w
        )
    )
    g = jax.jit(jax.grad(loss("splash"), argnums=(0, 1, 2)))(q16, k16, v16)
    g_ref = jax.grad(loss("reference"), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g, g_ref, strict=True):
        a = np.asarray(a.astype(jnp.float32))
        scale = np.abs(np.asarray(b)).max()
        np.testing.assert_allclose(a, b, atol=3e-2 * scale)


def test_seq_lengths_and_unmasked():
    q, k, v = _qkv(5, 3, 20, 30)
    kw = dict(q_seq_lengths=jnp.array([20, 7, 0]), kv_seq_lengths=jnp.array([30, 0, 12]))
    out = attention(q, k, v, implementation="splash", **kw)
    np.testing.assert_allclose(out, _ref(q, k, v, kw), atol=2e-6)
    assert np.all(np.asarray(out[1]) == 0) and np.all(np.asarray(out[2]) == 0)
    np.testing.assert_allclose(
        attention(q, k, v, implementation="splash"), attention_reference(q, k, v), atol=2e-6
    )


def test_exact_small_case():
    """Two segments, one key each: every query copies its segment's value exactly."""
    q = jnp.ones((1, 4, 1, 8))
    k = jnp.zeros((1, 3, 1, 8))
    v = jnp.arange(24.0).reshape(1, 3, 1, 8)
    out = attention(
        q,
        k,
        v,
        q_segment_ids=jnp.array([[1, 2, 2, 0]]),
        kv_segment_ids=jnp.array([[2, 0, 1]]),
        implementation="splash",
    )
    np.testing.assert_array_equal(out[0, :, 0], np.stack([v[0, 2, 0], v[0, 0, 0], v[0, 0, 0],
                                                          np.zeros(8)]))  # fmt: skip


def test_splash_refuses_bias_and_ints():
    q, k, v = _qkv(6, 1, 8, 8)
    with pytest.raises(ValueError, match=r"splash.*no bias"):
        attention(q, k, v, bias=jnp.zeros((1, 2, 8, 8)), implementation="splash")
    with pytest.raises(ValueError, match="q must be a floating"):
        attention(q.astype(jnp.int32), k, v, implementation="splash")


def test_auto_picks_splash_on_tpu(monkeypatch):
    q, k, v = _qkv(7, 1, 8, 8)
    monkeypatch.setattr(attention_mod, "_backend", lambda: "tpu")
    assert resolve_implementation(q, k, v) == "splash"
    assert resolve_implementation(q, k, v, bias=jnp.zeros((1, 1, 8, 8))) == "xla"
    assert resolve_implementation(q.astype(jnp.float16), k, v) == "xla"
    monkeypatch.setattr(attention_mod, "_backend", lambda: "cpu")
    assert resolve_implementation(q, k, v) == "xla"


def test_graphfm_segment_layout_takes_splash_on_tpu(monkeypatch):
    """Posing as a TPU host: the packed Perceiver cross attention and the latent block go through
    splash (recorded per call) and equal the XLA result."""
    from jaxfm.graphfm.encoder import PerceiverEncoder

    r = np.random.default_rng(8)
    t, d = 40, 16
    tokens = jnp.asarray(r.normal(size=(t, d)), jnp.float32)
    seg = jnp.asarray(np.r_[[1] * 15, [2] * 20, [0] * 5], jnp.int32)  # slot 3 has no rows
    graph_mask = jnp.array([True, True, True])
    enc = PerceiverEncoder(num_latents=8, depth=1, cross_heads=2, self_heads=2,
                           attention="segment")  # fmt: skip
    params = jax.jit(enc.init)(jax.random.key(0), tokens, seg, graph_mask)
    want = jax.jit(enc.apply)(params, tokens, seg, graph_mask)
    monkeypatch.setattr(attention_mod, "_backend", lambda: "tpu")
    with attention_mod.record_attention_calls() as calls:
        got = jax.jit(enc.apply)(params, tokens, seg, graph_mask)  # a fresh jit: traced again
    assert [(c["implementation"], c["q"]) for c in calls] == [
        ("splash", (1, 24, 2, 8)),  # G*K latent queries over the packed rows
        ("splash", (3, 8, 2, 8)),  # latent self-attention block
    ]
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_fimp_per_edge_takes_splash_on_tpu(monkeypatch):
    r = np.random.default_rng(9)
    n, e, lt, h, dh = 12, 30, 8, 2, 8
    q, k, v = (jnp.asarray(r.normal(size=(n, lt, h, dh)), jnp.float32) for _ in range(3))
    snd, rcv = (jnp.asarray(r.integers(0, n, e), jnp.int32) for _ in range(2))
    kv_mask = jnp.asarray(r.random((n, lt)) < 0.8)
    # (grouped: a jit cache entry of its own, so per_edge is traced anew below)
    want = cross_node_attention(q, k, v, snd, rcv, kv_mask=kv_mask, implementation="grouped")
    monkeypatch.setattr(attention_mod, "_backend", lambda: "tpu")
    with attention_mod.record_attention_calls() as calls:
        got = cross_node_attention(q, k, v, snd, rcv, kv_mask=kv_mask, implementation="per_edge")
    assert [c["implementation"] for c in calls] == ["splash"]
    np.testing.assert_allclose(got, want, atol=2e-5)
