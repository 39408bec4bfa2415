"""GPU-only: the cuDNN flash path of jaxfm.ops.attention (skipped without a CUDA device)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.ops import attention, attention_reference, cross_node_attention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU"),
]


def _qkv(b=2, t=128, h=4, dh=64, dtype=jnp.bfloat16):
    r = np.random.default_rng(0)
    return tuple(jnp.asarray(r.normal(size=(b, t, h, dh)), dtype) for _ in range(3))


def test_auto_takes_cudnn_and_matches_reference():
    q, k, v = _qkv()
    lengths = jnp.array([128, 77], jnp.int32)
    fn = jax.jit(lambda q, k, v: attention(q, k, v, kv_seq_lengths=lengths))
    assert "cudnn" in fn.lower(q, k, v).compile().as_text()
    kv_mask = jnp.arange(128)[None] < lengths[:, None]
    ref = attention_reference(q, k, v, mask=kv_mask[:, None, None, :])
    np.testing.assert_allclose(fn(q, k, v).astype(jnp.float32), ref.astype(jnp.float32), atol=3e-2)


def test_cross_node_per_edge_cudnn_matches_grouped():
    r = np.random.default_rng(1)
    n, e, lt, h, dh = 64, 256, 32, 4, 64
    q, k, v = (jnp.asarray(r.normal(size=(n, lt, h, dh)), jnp.bfloat16) for _ in range(3))
    s, t = (jnp.asarray(r.integers(0, n, e), jnp.int32) for _ in range(2))
    a = cross_node_attention(q, k, v, s, t, implementation="per_edge")
    b = cross_node_attention(q, k, v, s, t, implementation="grouped")
    np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), atol=3e-2)
