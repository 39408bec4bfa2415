"""FIMP model: permutation equivariance, padding invariance, gradients, bfloat16, maps."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.fimp import FIMP, GeneTokenizerConfig, MessageCreatorConfig, fimp_config
from jaxfm.testing import random_params

CFG = fimp_config(
    "tiny",
    tokenizer=GeneTokenizerConfig(num_genes=13),
    dim=16,
    num_layers=2,
    message=MessageCreatorConfig(kind="transformer", num_layers=1, num_heads=2, norm="post"),
)


def _graph(n=5, length=4, seed=0):
    rng = np.random.default_rng(seed)
    token_mask = np.ones((n, length), bool)
    token_mask[1, 2:] = False
    token_mask[3, 1:] = False
    nodes = {
        "gene_ids": rng.integers(0, 13, (n, length)),
        "values": rng.normal(size=(n, length)).astype(np.float32),
        "token_mask": token_mask,
        "value_mask": rng.random((n, length)) < 0.4,
    }
    senders = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 2])
    receivers = np.array([0, 1, 2, 3, 4, 1, 2, 0, 0, 2, 4])
    return nodes, senders, receivers


def _params(model, nodes, senders, receivers):
    return {"params": random_params(model, nodes, senders, receivers)}


def test_outputs_and_permutation_equivariance():
    model = FIMP(CFG)
    nodes, senders, receivers = _graph()
    variables = _params(model, nodes, senders, receivers)
    assert set(variables["params"]) == {"tokenizer", "layers_0", "layers_1", "final_norm"}
    assert set(variables["params"]["layers_0"]) == {
        "message",
        "self_message",
        "norm",
        "mlp",
        "mlp_norm",
    }
    rng = np.random.default_rng(1)
    perm = rng.permutation(5)  # new node i is old node perm[i]
    inv = np.argsort(perm)
    eperm = rng.permutation(len(senders))
    nodes_p = {k: v[perm] for k, v in nodes.items()}
    apply = jax.jit(lambda nd, s, r: model.apply(variables, nd, s, r))
    out = apply(nodes, senders, receivers)
    out_p = apply(nodes_p, inv[senders][eperm], inv[receivers][eperm])
    assert out["tokens"].shape == (5, 4, 16) and out["node_embedding"].shape == (5, 16)
    np.testing.assert_array_equal(out["token_mask"], nodes["token_mask"])
    for key in ("tokens", "node_embedding"):
        np.testing.assert_allclose(out_p[key], out[key][perm], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out["tokens"][1, 2:]), 0.0)
    # The pooled embedding is the mean of the valid tokens.
    np.testing.assert_allclose(out["node_embedding"][1], out["tokens"][1, :2].mean(0), atol=1e-6)


def test_padding_nodes_and_edges_change_nothing():
    model = FIMP(CFG)
    nodes, senders, receivers = _graph()
    rng = np.random.default_rng(2)
    # Two padding nodes with garbage features; edges into/out of them are marked *valid*
    # (they must still be ignored), plus masked edges between real nodes.
    pad = {
        k: np.concatenate([v, v[:2][..., ::-1] if v.ndim > 1 else v[:2]]) for k, v in nodes.items()
    }
    pad["values"][5:] = rng.normal(size=(2, 4)) * 100
    node_mask = np.array([1, 1, 1, 1, 1, 0, 0], bool)
    senders_p = np.concatenate([senders, [5, 0, 6, 1, 3]])
    receivers_p = np.concatenate([receivers, [0, 5, 6, 4, 2]])
    edge_mask = np.concatenate([np.ones(len(senders), bool), [True, True, True, False, False]])
    variables = _params(model, nodes, senders, receivers)

    @jax.jit
    def both(v):
        ref = model.apply(v, nodes, senders, receivers)
        out = model.apply(v, pad, senders_p, receivers_p, node_mask=node_mask, edge_mask=edge_mask)
        return ref, out

    ref, out = both(variables)
    for key in ("tokens", "node_embedding"):
        np.testing.assert_allclose(out[key][:5], ref[key], atol=1e-5)
        np.testing.assert_array_equal(np.asarray(out[key][5:]), 0.0)
    assert not np.asarray(out["token_mask"][5:]).any()


def test_gradients_finite_with_padding_and_dropout():
    cfg = dataclasses.replace(CFG, dropout=0.2)
    model = FIMP(cfg)
    nodes, senders, receivers = _graph()
    node_mask = np.array([1, 1, 1, 0, 1], bool)
    variables = _params(model, nodes, senders, receivers)

    def loss(params):
        out = model.apply(
            {"params": params},
            nodes,
            senders,
            receivers,
            node_mask=node_mask,
            deterministic=False,
            rngs={"dropout": jax.random.key(1)},
        )
        return jnp.sum(out["node_embedding"] ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.abs(g).sum()) > 0 for g in leaves)


@pytest.mark.parametrize("kind", ["attention", "transformer"])
def test_bfloat16_forward_and_attention_maps(kind):
    message = MessageCreatorConfig(kind=kind, num_layers=1, num_heads=2)
    cfg = dataclasses.replace(CFG, dtype="bfloat16", message=message, num_layers=1)
    model = FIMP(cfg)
    nodes, senders, receivers = _graph()
    variables = _params(model, nodes, senders, receivers)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    out = jax.jit(
        lambda v: model.apply(v, nodes, senders, receivers, attention_edges=jnp.array([5, 7]))
    )(variables)
    assert out["tokens"].dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(out["tokens"].astype(jnp.float32))))
    maps = out["attention_maps"]
    assert maps.shape == (1, 1, 2, 2, 4, 4)  # [hops, message layers, Es, H, Lq, Lk]
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-2)
    # Edge 5 is 0 -> 1 (source node 0 fully valid); edge 7 is 2 -> 0.
    assert bool(jnp.all(maps[:, :, 0] > 0))


def test_requires_tokenizer():
    cfg = dataclasses.replace(CFG, tokenizer=None)
    nodes, senders, receivers = _graph()
    with pytest.raises(ValueError, match="tokenizer must be set"):
        FIMP(cfg).init(jax.random.key(0), nodes, senders, receivers)


def test_no_edges_and_single_node():
    """Without edges every message is zero: the layer reduces to COMBINE(H, 0) per node."""
    model = FIMP(dataclasses.replace(CFG, num_layers=1))
    nodes, _, _ = _graph()
    none = np.zeros(0, np.int32)
    variables = _params(model, nodes, none, none)

    @jax.jit
    def run(v):
        out = model.apply(v, nodes, none, none)
        one = {k: x[:1] for k, x in nodes.items()}
        single = model.apply(v, one, none, none)
        return out, single

    out, single = run(variables)
    assert bool(jnp.all(jnp.isfinite(out["tokens"])))
    np.testing.assert_allclose(single["tokens"], out["tokens"][:1], atol=1e-5)


def test_separate_self_routes_self_loops_to_their_own_creator():
    """With separate_self, zeroing the neighbour creator's output projection leaves exactly the
    no-neighbour model; the neighbour path does change outputs when it is active."""
    cfg = dataclasses.replace(
        CFG, num_layers=1, separate_self=True, message=MessageCreatorConfig(num_heads=2)
    )
    model = FIMP(cfg)
    nodes, senders, receivers = _graph()
    variables = _params(model, nodes, senders, receivers)
    assert {"message", "self_message"} <= set(variables["params"]["layers_0"])
    loops = senders == receivers
    full = model.apply(variables, nodes, senders, receivers)["tokens"]
    alone = model.apply(variables, nodes, senders[loops], receivers[loops])["tokens"]
    assert not np.allclose(full, alone, atol=1e-3)
    zeroed = jax.tree.map(lambda x: x, variables)
    out = zeroed["params"]["layers_0"]["message"]["attention"]["out"]
    out["kernel"], out["bias"] = jnp.zeros_like(out["kernel"]), jnp.zeros_like(out["bias"])
    np.testing.assert_allclose(
        model.apply(zeroed, nodes, senders, receivers)["tokens"], alone, atol=1e-6
    )
