"""The FIMP-task baselines: masked-value fillings, shared featurisation, NodeGNN masking and
equivariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.baselines.node_gnn import GNN_KINDS, NodeGNN
from jaxfm.baselines.node_mlp import NodeMLP, fill_masked, node_features
from jaxfm.fimp.config import FMRITokenizerConfig, GeneTokenizerConfig

# ------------------------------------------------------------------------------------------------
# Fillings (FIMP paper appendix B.3)
# ------------------------------------------------------------------------------------------------

X = jnp.array(
    [
        [1.0, 9.0, 9.0, 4.0, 9.0],  # gap inside, trailing hidden
        [9.0, 9.0, 2.0, 9.0, 6.0],  # leading hidden, gap of one
        [9.0, 9.0, 9.0, 9.0, 9.0],  # nothing visible
    ]
)
VIS = jnp.array(
    [
        [True, False, False, True, False],
        [False, False, True, False, True],
        [False, False, False, False, False],
    ]
)


def test_fill_interp_hand_computed():
    got = np.asarray(fill_masked(X, VIS, "interp"))
    want = [[1, 2, 3, 4, 4], [2, 2, 2, 4, 6], [0, 0, 0, 0, 0]]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_fill_mean_and_zero_hand_computed():
    got = np.asarray(fill_masked(X, VIS, "mean"))
    np.testing.assert_allclose(got, [[1, 2.5, 2.5, 4, 2.5], [4, 4, 2, 4, 6], [0] * 5], atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(fill_masked(X, VIS, "zero")), [[1, 0, 0, 4, 0], [0, 0, 2, 0, 6], [0] * 5]
    )


def test_fill_noise_keeps_visible_and_never_reads_hidden():
    a = np.asarray(fill_masked(X, VIS, "noise", jax.random.key(3)))
    b = np.asarray(fill_masked(jnp.where(VIS, X, -50.0), VIS, "noise", jax.random.key(3)))
    np.testing.assert_array_equal(a, b)  # the hidden values (9 vs -50) are never read
    np.testing.assert_array_equal(a[np.asarray(VIS)], np.asarray(X)[np.asarray(VIS)])
    assert np.all(np.abs(a[~np.asarray(VIS)]) < 6) and np.std(a[~np.asarray(VIS)]) > 0.1
    c = np.asarray(fill_masked(X, VIS, "noise", jax.random.key(4)))
    assert not np.allclose(a, c)


@pytest.mark.parametrize("fill", ["mean", "interp"])
def test_fills_never_read_hidden_values(fill):
    a = fill_masked(X, VIS, fill)
    b = fill_masked(jnp.where(VIS, X, 1e3), VIS, fill)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fill_under_jit_and_errors():
    got = jax.jit(lambda x, v: fill_masked(x, v, "interp"))(X, VIS)
    np.testing.assert_allclose(np.asarray(got), np.asarray(fill_masked(X, VIS, "interp")))
    with pytest.raises(ValueError, match="fill must be one of"):
        fill_masked(X, VIS, "median")


def test_fmri_features_fill_masked_patches_by_timepoint():
    tok = FMRITokenizerConfig(patch_size=2, num_patches=3)
    signal = jnp.array([[0.0, 1.0, 7.0, 7.0, 4.0, 5.0]])
    nodes = {"signal": signal, "patch_mask": jnp.array([[False, True, False]])}
    x, onehot = node_features(nodes, tok, "fmri", fill="interp")
    assert onehot is None
    # timepoints 2, 3 hidden: interpolated between t=1 (1.0) and t=4 (4.0); then the patch mask
    np.testing.assert_allclose(np.asarray(x), [[0, 1, 2, 3, 4, 5, 0, 1, 0]], atol=1e-6)
    x0, _ = node_features(nodes, tok, "fmri")
    np.testing.assert_allclose(np.asarray(x0), [[0, 1, 0, 0, 4, 5, 0, 1, 0]])


def test_fill_only_for_fmri():
    tok = GeneTokenizerConfig(num_genes=4)
    nodes = {
        "gene_ids": jnp.zeros((1, 2), jnp.int32),
        "values": jnp.ones((1, 2)),
        "token_mask": jnp.ones((1, 2), bool),
    }
    with pytest.raises(ValueError, match="fmri task only"):
        node_features(nodes, tok, "celltype", fill="mean")


# ------------------------------------------------------------------------------------------------
# NodeGNN
# ------------------------------------------------------------------------------------------------

TOK = GeneTokenizerConfig(num_genes=5)
# 4 valid nodes on a path 0-1-2-3 (both directions) + self loops, as FIMP batches carry them.
S = np.array([0, 1, 1, 2, 2, 3, 0, 1, 2, 3], np.int32)
R = np.array([1, 0, 2, 1, 3, 2, 0, 1, 2, 3], np.int32)


def _nodes(n, seed=0, l_tokens=3):
    rng = np.random.default_rng(seed)
    return {
        "gene_ids": jnp.asarray(rng.integers(0, 5, (n, l_tokens)), jnp.int32),
        "values": jnp.asarray(rng.normal(size=(n, l_tokens)), jnp.float32),
        "token_mask": jnp.ones((n, l_tokens), bool),
    }


def _model(kind, **kw):
    return NodeGNN(kind=kind, task="celltype", tokenizer=TOK, num_classes=3, hidden=8, **kw)


def _run(model, params, nodes, s, r, nmask=None, emask=None):
    return model.apply(
        params, nodes, jnp.asarray(s), jnp.asarray(r), node_mask=nmask, edge_mask=emask
    )


@pytest.mark.parametrize("kind", GNN_KINDS)
def test_node_gnn_masks_padding_is_equivariant_and_uses_the_graph(kind):
    model = _model(kind, heads=2)
    nodes = _nodes(4)
    params = model.init(jax.random.key(0), nodes, jnp.asarray(S), jnp.asarray(R))
    ref = _run(model, params, nodes, S, R)
    pred = np.asarray(ref["predictions"])

    # Padding: 3 extra nodes with large random features, edges padded->valid, valid->padded and
    # a valid->valid edge that is masked out leave the valid nodes' outputs unchanged.
    pad = _nodes(3, seed=1)
    pad["values"] = pad["values"] * 100
    big = {k: jnp.concatenate([nodes[k], pad[k]]) for k in nodes}
    s2 = np.concatenate([S, [4, 5, 0, 6, 0]]).astype(np.int32)
    r2 = np.concatenate([R, [0, 2, 5, 6, 3]]).astype(np.int32)
    nmask = jnp.asarray([True] * 4 + [False] * 3)
    emask = jnp.asarray([True] * len(S) + [True, True, True, True, False])
    out = _run(model, params, big, s2, r2, nmask, emask)
    for key in ("predictions", "node_embedding"):
        np.testing.assert_allclose(
            np.asarray(out[key][:4]), np.asarray(ref[key]), rtol=1e-5, atol=1e-5
        )
    np.testing.assert_array_equal(np.asarray(out["node_embedding"][4:]), 0.0)

    # Relabelling the nodes permutes the outputs.
    perm = np.array([2, 0, 3, 1])  # new node i is old node perm[i]
    inv = np.argsort(perm)
    pnodes = {k: v[perm] for k, v in nodes.items()}
    out = np.asarray(_run(model, params, pnodes, inv[S], inv[R])["predictions"])
    np.testing.assert_allclose(out, pred[perm], rtol=1e-5, atol=1e-5)

    # Node 3's features reach its neighbour 2, but not node 0 (3 hops away) through 2 layers,
    # except with GPS, whose global attention reaches every node.
    changed = dict(nodes)
    changed["values"] = nodes["values"].at[3].set(5.0)
    new = np.asarray(_run(model, params, changed, S, R)["predictions"])
    assert not np.allclose(new[2], pred[2], atol=1e-6)
    if kind != "gps":
        np.testing.assert_allclose(new[0], pred[0], rtol=1e-6, atol=1e-6)
    else:
        assert not np.allclose(new[0], pred[0], atol=1e-6)


@pytest.mark.parametrize("kind", ["gat"])
def test_node_gnn_masks_self_loop_edges(kind):
    """FIMP's explicit self loops are dropped: GCN/GAT add the node itself exactly once."""
    model = _model(kind, heads=2)
    nodes = _nodes(4)
    params = model.init(jax.random.key(2), nodes, jnp.asarray(S), jnp.asarray(R))
    with_loops = _run(model, params, nodes, S, R)["predictions"]
    without = _run(model, params, nodes, S[:6], R[:6])["predictions"]
    np.testing.assert_allclose(np.asarray(with_loops), np.asarray(without), rtol=1e-6, atol=1e-6)


def test_node_gnn_matches_node_mlp_featurisation_for_expression():
    """Expression predictions are read back at the tokens' genes, as in NodeMLP."""
    nodes = {**_nodes(4), "value_mask": jnp.asarray(np.eye(4, 3, dtype=bool))}
    gnn = NodeGNN(kind="sage", task="expression", tokenizer=TOK, hidden=8)
    params = gnn.init(jax.random.key(0), nodes, jnp.asarray(S), jnp.asarray(R))
    out = gnn.apply(params, nodes, jnp.asarray(S), jnp.asarray(R))
    h = out["node_embedding"]
    dense = h @ params["params"]["out"]["kernel"] + params["params"]["out"]["bias"]  # [N, G]
    want = np.take_along_axis(np.asarray(dense), np.asarray(nodes["gene_ids"]), axis=1)
    np.testing.assert_allclose(np.asarray(out["predictions"]), want, rtol=1e-5, atol=1e-5)
    mlp = NodeMLP(task="expression", tokenizer=TOK, hidden=8)
    assert mlp.init(jax.random.key(0), nodes)["params"]["out"]["kernel"].shape == (8, 5)


def test_node_gnn_rejects_unknown_kind():
    model = _model("gxn")
    with pytest.raises(ValueError, match="kind must be one of"):
        model.init(jax.random.key(0), _nodes(4), jnp.asarray(S), jnp.asarray(R))
