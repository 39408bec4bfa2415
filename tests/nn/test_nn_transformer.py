"""TransformerLayer: self-loop cross_node == self-attention, norm wiring, dropout; Mlp."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.nn import Mlp, MultiHeadAttention, TransformerLayer
from jaxfm.testing import random_params


def _inputs(n=4, length=6, dim=8, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, length, dim)).astype(np.float32)
    mask = np.ones((n, length), bool)
    mask[0, 4:] = False
    mask[1, 1:] = False
    mask[n - 1, :] = False  # a node with no valid token at all
    return x, mask


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_self_loop_cross_node_equals_self_attention(norm):
    layer = TransformerLayer(num_heads=2, mlp_dim=16, norm=norm, layer_norm_eps=1e-5)
    x, mask = _inputs()
    n = x.shape[0]
    # Self-loops, plus real-looking edges that are masked out (must change nothing).
    senders = np.concatenate([np.arange(n), [0, 1, 2]])
    receivers = np.concatenate([np.arange(n), [1, 2, 0]])
    edge_mask = np.concatenate([np.ones(n, bool), np.zeros(3, bool)])

    @jax.jit
    def both(p):
        ref = layer.apply({"params": p}, x, kv_mask=mask)
        out = layer.apply(
            {"params": p},
            x,
            senders,
            receivers,
            kv_mask=mask,
            edge_mask=edge_mask,
            method="cross_node",
        )
        return ref, out

    ref, out = both(random_params(layer, x, kv_mask=mask))
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_norm_wiring(norm):
    layer = TransformerLayer(num_heads=2, mlp_dim=16, norm=norm, activation="relu")
    x, mask = _inputs(n=2)

    def ln(h, q):
        mu = h.mean(-1, keepdims=True)
        var = ((h - mu) ** 2).mean(-1, keepdims=True)
        return (h - mu) / jnp.sqrt(var + 1e-6) * q["scale"] + q["bias"]

    @jax.jit
    def run(p):
        attn = lambda h: MultiHeadAttention(num_heads=2).apply(
            {"params": p["attention"]}, h, kv_mask=mask
        )
        mlp = lambda h: Mlp(hidden=16, activation="relu").apply({"params": p["mlp"]}, h)
        if norm == "pre":
            h = x + attn(ln(x, p["norm1"]))
            ref = h + mlp(ln(h, p["norm2"]))
        else:
            h = ln(x + attn(x), p["norm1"])
            ref = ln(h + mlp(h), p["norm2"])
        return p, layer.apply({"params": p}, x, kv_mask=mask), ref

    params, out, ref = run(random_params(layer, x))
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert set(params) == {"attention", "norm1", "norm2", "mlp"}


def test_dropout_needs_rng_and_is_off_when_deterministic():
    layer = TransformerLayer(num_heads=2, mlp_dim=16, dropout=0.5)
    x, mask = _inputs(n=2)
    idx = np.arange(2)

    @jax.jit
    def run(p):
        v = {"params": p}
        cross = lambda **kw: layer.apply(v, x, idx, idx, kv_mask=mask, method="cross_node", **kw)
        rngs = {"dropout": jax.random.key(3)}
        return cross(), cross(), cross(deterministic=False, rngs=rngs)

    det, det2, rand = run(random_params(layer, x))
    np.testing.assert_array_equal(det, det2)
    assert not np.allclose(rand, det)


def test_mlp_names_and_activations():
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    acts = ("gelu", "gelu_tanh", "relu")

    mlps = [Mlp(hidden=16, out=4, activation=a) for a in acts]
    p = random_params(mlps[0], x)  # the same parameters for all three
    outs = jax.jit(lambda p: [m.apply({"params": p}, x) for m in mlps])(p)
    assert jax.tree.map(jnp.shape, p) == {
        "fc1": {"kernel": (8, 16), "bias": (16,)},
        "fc2": {"kernel": (16, 4), "bias": (4,)},
    }
    h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    relu_ref = np.maximum(h, 0) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    np.testing.assert_allclose(outs[2], relu_ref, atol=1e-5)
    assert not np.allclose(outs[0], outs[1], atol=1e-7)  # exact vs tanh GELU
    with pytest.raises(ValueError, match="unknown activation"):
        jax.eval_shape(lambda: Mlp(hidden=4, activation="swish2").init(jax.random.key(0), x))


def test_bad_norm_position():
    layer = TransformerLayer(num_heads=2, mlp_dim=4, norm="middle")
    with pytest.raises(ValueError, match="norm must be"):
        jax.eval_shape(lambda: layer.init(jax.random.key(0), jnp.ones((1, 2, 4))))
