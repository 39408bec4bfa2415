"""implementation="cudnn_packed": the private-API guard and the offset conversion run everywhere;
the cross-attention comparisons against the XLA reference need a Hopper GPU (skipped elsewhere)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.ops import attention, build_mask
from jaxfm.ops.attention import attention_reference
from jaxfm.ops.cudnn_packed import PrivateApiError, load_private_api, segment_offsets


def test_guard_accepts_installed_jax():
    fn, mask_type = load_private_api()
    assert callable(fn) and hasattr(mask_type, "PADDING")


def test_guard_fails_clearly_when_absent_or_changed():
    with pytest.raises(PrivateApiError, match="absent in jax"):
        load_private_api(types.SimpleNamespace())

    class MaskType:
        PADDING = 1

    def changed(query, key, value, q_seqlen=None, kv_seqlen=None, *, scale=1.0, mask_type=None,
                qkv_layout="BTNH"):  # fmt: skip
        raise AssertionError("not called")

    with pytest.raises(PrivateApiError, match=r"changed its signature \(missing \['q_offsets'"):
        load_private_api(types.SimpleNamespace(dot_product_attention=changed, MaskType=MaskType))


def test_off_gpu_fails_before_compiling():
    if jax.default_backend() == "gpu":
        pytest.skip("checks the non-GPU error")
    q = jnp.ones((1, 4, 1, 8), jnp.bfloat16)
    ids = jnp.array([[1, 1, 2, 2]])
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        attention(q, q, q, q_segment_ids=ids, kv_segment_ids=ids, implementation="cudnn_packed")


def test_segment_offsets_exact():
    # row 0: q segments 1 (rows 0-1), 2 (rows 2-4), padding; kv: 2 (0-2), 1 (3-6), padding
    # row 1: q segment 1 only; kv has 1 and 3 (3 has no queries: inactive)
    q_ids = jnp.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 0, 0, 0]])
    kv_ids = jnp.array([[2, 2, 2, 1, 1, 1, 1, 0], [3, 3, 1, 1, 0, 0, 0, 0]])
    q_off, kv_off, q_len, kv_len, act_q, act_kv = segment_offsets(q_ids, kv_ids, 4)
    np.testing.assert_array_equal(q_off, [[0, 2, -1, -1, -1], [0, -1, -1, -1, -1]])
    np.testing.assert_array_equal(kv_off, [[3, 0, -1, -1, -1], [2, -1, -1, -1, -1]])
    np.testing.assert_array_equal(q_len, [[2, 3, -1, -1], [3, -1, -1, -1]])
    np.testing.assert_array_equal(kv_len, [[4, 3, -1, -1], [2, -1, -1, -1]])
    np.testing.assert_array_equal(act_q, q_ids > 0)
    np.testing.assert_array_equal(act_kv, [[1, 1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0, 0, 0]])


def _hopper() -> bool:
    if jax.default_backend() != "gpu":
        return False
    cc = str(getattr(jax.devices()[0], "compute_capability", "0.0"))
    return tuple(int(x) for x in cc.split(".")[:2]) >= (9, 0)


def _perceiver_case(seed, dtype=jnp.bfloat16, g=4, k=32, t=512, h=4, dh=64):
    """Latents (G*K queries, one slot empty of nodes) over a packed row of T node tokens."""
    r = np.random.default_rng(seed)
    sizes = np.array([100, 0, 250, 90])  # graph 2 has latents but no nodes
    kv_ids = np.concatenate([np.full(s, i + 1) for i, s in enumerate(sizes)] +
                            [np.zeros(t - sizes.sum())]).astype(np.int32)[None]  # fmt: skip
    q_ids = np.repeat(np.arange(1, g + 1), k).astype(np.int32)[None]
    q = jnp.asarray(r.normal(size=(1, g * k, h, dh)), dtype)
    kk, v = (jnp.asarray(r.normal(size=(1, t, h, dh)), dtype) for _ in range(2))
    return q, kk, v, jnp.asarray(q_ids), jnp.asarray(kv_ids)


needs_hopper = pytest.mark.skipif(not _hopper(), reason="needs a Hopper (sm90+) GPU")


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("seed", [0, 1])
def test_cross_attention_q_offsets_differ_from_kv_offsets(seed):
    q, k, v, qi, ki = _perceiver_case(seed)
    fn = jax.jit(lambda q, k, v: attention(q, k, v, q_segment_ids=qi, kv_segment_ids=ki,
                                           implementation="cudnn_packed"))  # fmt: skip
    assert "__cudnn$fmha" in fn.lower(q, k, v).compile().as_text()
    mask = build_mask(q.shape[1], k.shape[1], batch=1, q_segment_ids=qi, kv_segment_ids=ki)
    f32 = lambda x: x.astype(jnp.float32)
    ref = attention_reference(f32(q), f32(k), f32(v), mask=mask)
    out = f32(fn(q, k, v))
    np.testing.assert_allclose(out, ref, atol=3e-2)
    assert np.all(np.asarray(out[0, 32:64]) == 0)  # the slot without nodes


@pytest.mark.gpu
@needs_hopper
def test_cross_attention_gradients_match_reference():
    q, k, v, qi, ki = _perceiver_case(2)
    w = jnp.asarray(np.random.default_rng(3).normal(size=q.shape), jnp.float32)
    mask = build_mask(q.shape[1], k.shape[1], batch=1, q_segment_ids=qi, kv_segment_ids=ki)

    def loss_packed(q, k, v):
        out = attention(q, k, v, q_segment_ids=qi, kv_segment_ids=ki,
                        implementation="cudnn_packed")  # fmt: skip
        return jnp.sum(out.astype(jnp.float32) * w)

    def loss_ref(q, k, v):
        return jnp.sum(attention_reference(q, k, v, mask=mask) * w)

    g = jax.jit(jax.grad(loss_packed, argnums=(0, 1, 2)))(q, k, v)
    f32 = lambda x: x.astype(jnp.float32)
    g_ref = jax.grad(loss_ref, argnums=(0, 1, 2))(f32(q), f32(k), f32(v))
    for a, b in zip(g, g_ref, strict=True):
        a = np.asarray(f32(a))
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, atol=3e-2 * np.abs(np.asarray(b)).max())
    assert np.all(np.asarray(g[1])[0, np.asarray(ki[0]) == 0] == 0)  # padding keys
