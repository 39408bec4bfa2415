"""jaxfm.ops.attention against its dense einsum reference: values, gradients, masks, precisions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.ops import attention, attention_reference, build_mask


def _inputs(seed, b=2, tq=5, tk=7, h=2, dh=8, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    q = r.normal(size=(b, tq, h, dh))
    k = r.normal(size=(b, tk, h, dh))
    v = r.normal(size=(b, tk, h, dh))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _numpy_attention(q, k, v, allowed):
    """Loop-free numpy oracle: allowed [B, Tq, Tk] bool; rows with nothing allowed give zeros."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    a = np.broadcast_to(allowed[:, None], s.shape)
    s = np.where(a, s, -np.inf)
    m = np.max(s, -1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    p = np.where(a, np.exp(s - m), 0)
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-300)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _random_masking(seed, b=2, tq=5, tk=7):
    r = np.random.default_rng(seed)
    qseg = r.integers(0, 3, size=(b, tq)).astype(np.int32)
    kseg = r.integers(0, 3, size=(b, tk)).astype(np.int32)
    kv_mask = r.random((b, tk)) < 0.7
    allowed = (qseg[:, :, None] == kseg[:, None, :]) & (qseg[:, :, None] != 0)
    allowed &= kv_mask[:, None, :]
    return qseg, kseg, kv_mask, allowed


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_with_segments_and_mask(seed, use_jit):
    q, k, v = _inputs(seed)
    qseg, kseg, kv_mask, allowed = _random_masking(seed)
    fn = lambda *a: attention(*a, q_segment_ids=qseg, kv_segment_ids=kseg, kv_mask=kv_mask)
    fn = jax.jit(fn) if use_jit else fn
    out = fn(q, k, v)
    np.testing.assert_allclose(out, _numpy_attention(q, k, v, allowed), atol=1e-5)
    # Rows with no valid key are exactly zero (XLA alone would give mean(V)).
    empty = ~allowed.any(-1)
    assert empty.any(), "test data should contain an empty row"
    assert np.all(np.asarray(out)[empty] == 0)


def test_all_implementations_agree_without_mask():
    q, k, v = _inputs(3)
    ref = attention(q, k, v, implementation="reference")
    np.testing.assert_allclose(attention(q, k, v), ref, atol=1e-5)
    np.testing.assert_allclose(attention(q, k, v, implementation="xla"), ref, atol=1e-5)


def test_seq_lengths_equal_prefix_mask():
    q, k, v = _inputs(4)
    lengths = jnp.array([3, 0], jnp.int32)
    kv_mask = jnp.arange(7)[None, :] < lengths[:, None]
    a = attention(q, k, v, kv_seq_lengths=lengths)
    b = attention(q, k, v, kv_mask=kv_mask)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.all(np.asarray(a[1]) == 0)


def test_bias_is_added_to_logits():
    q, k, v = _inputs(5)
    bias = jnp.asarray(np.random.default_rng(5).normal(size=(2, 2, 5, 7)), jnp.float32)
    out = attention(q, k, v, bias=bias)
    np.testing.assert_allclose(out, attention_reference(q, k, v, bias=bias), atol=1e-5)
    assert not np.allclose(out, attention(q, k, v), atol=1e-3)


def test_gradients_match_reference():
    q, k, v = _inputs(6)
    qseg, kseg, kv_mask, _ = _random_masking(6)
    mask = build_mask(5, 7, batch=2, q_segment_ids=qseg, kv_segment_ids=kseg, kv_mask=kv_mask)
    w = jnp.asarray(np.random.default_rng(7).normal(size=(2, 5, 2, 8)), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

    fast = loss(
        lambda q, k, v: attention(q, k, v, q_segment_ids=qseg, kv_segment_ids=kseg, kv_mask=kv_mask)
    )
    slow = loss(lambda q, k, v: attention_reference(q, k, v, mask=mask))
    g_fast = jax.grad(fast, argnums=(0, 1, 2))(q, k, v)
    g_slow = jax.grad(slow, argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_fast, g_slow, strict=True):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bfloat16_close_to_float32():
    q, k, v = _inputs(8)
    qseg, kseg, kv_mask, allowed = _random_masking(8)
    kw = dict(q_segment_ids=qseg, kv_segment_ids=kseg, kv_mask=kv_mask)
    out16 = attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), **kw)
    assert out16.dtype == jnp.bfloat16
    # bf16 has 8 mantissa bits: inputs ~N(0,1), outputs bounded by max|v|; 3e-2 is ~4 ulps there.
    np.testing.assert_allclose(
        out16.astype(jnp.float32), _numpy_attention(q, k, v, allowed), atol=3e-2
    )


def test_return_weights_rows_sum_to_one_or_zero():
    q, k, v = _inputs(9)
    qseg, kseg, kv_mask, allowed = _random_masking(9)
    out, w = attention(
        q, k, v, q_segment_ids=qseg, kv_segment_ids=kseg, kv_mask=kv_mask, return_weights=True
    )
    assert w.shape == (2, 2, 5, 7)
    np.testing.assert_allclose(out, _numpy_attention(q, k, v, allowed), atol=1e-5)
    sums = np.asarray(w.sum(-1))
    expected = np.broadcast_to(allowed.any(-1)[:, None], sums.shape)
    np.testing.assert_allclose(sums, expected, atol=1e-6)
    assert np.all(np.asarray(w)[~np.broadcast_to(allowed[:, None], w.shape)] == 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=np.zeros((2, 7, 2, 4))), "k must be"),
        (dict(v=np.zeros((2, 6, 2, 8))), "v must be"),
        (dict(v=np.zeros((2, 7, 2, 4))), "v must be"),
        (dict(kv_mask=np.ones((2, 6), bool)), "kv_mask must have shape"),
        (dict(kv_mask=np.ones((2, 7), np.int32)), "kv_mask must be bool"),
        (dict(q_segment_ids=np.ones((2, 5), np.int32)), "both q_segment_ids and kv_segment_ids"),
        (
            dict(
                q_segment_ids=np.ones((2, 5), np.float32), kv_segment_ids=np.ones((2, 7), np.int32)
            ),
            "q_segment_ids must be an integer",
        ),
        (dict(kv_seq_lengths=np.ones((3,), np.int32)), "kv_seq_lengths must be"),
        (dict(implementation="flash"), "implementation must be one of"),
        (dict(q=np.ones((2, 5, 2, 8), np.int32)), "q must be a floating array"),
        (dict(k=np.ones((2, 7, 2, 8), bool)), "k must be a floating array"),
        (dict(v=np.ones((2, 7, 2, 8), np.int8)), "v must be a floating array"),
        (dict(kv_seq_lengths=np.array([3, -1], np.int32)), r"kv_seq_lengths must lie in \[0, 7\]"),
        (dict(kv_seq_lengths=np.array([8, 1], np.int32)), r"kv_seq_lengths must lie in \[0, 7\]"),
        (dict(q_seq_lengths=np.array([6, 1], np.int32)), r"q_seq_lengths must lie in \[0, 5\]"),
        (dict(implementation="cudnn_packed"), "cudnn_packed' needs q_segment_ids"),
        (
            dict(
                q_segment_ids=np.ones((2, 5), np.int32),
                kv_segment_ids=np.ones((2, 7), np.int32),
                kv_mask=np.ones((2, 7), bool),
                implementation="cudnn_packed",
            ),
            "takes segment ids only",
        ),
    ],
)
def test_bad_input_names_argument(kwargs, match):
    q, k, v = _inputs(0)
    args = dict(q=q, k=k, v=v)
    for name in ("q", "k", "v"):
        if name in kwargs:
            x = kwargs.pop(name)
            args[name] = jnp.asarray(x, jnp.float32 if x.dtype == np.float64 else x.dtype)
    with pytest.raises(ValueError, match=match):
        attention(args["q"], args["k"], args["v"], **kwargs)


def test_traced_seq_lengths_are_not_checked_but_shape_is():
    q, k, v = _inputs(10)
    fn = jax.jit(lambda n: attention(q, k, v, kv_seq_lengths=n))
    np.testing.assert_allclose(fn(jnp.array([7, 7])), attention(q, k, v), atol=1e-6)
