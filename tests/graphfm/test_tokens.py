"""Node tokens: ragged_dot per-dataset MLPs == per-row reference, SignNet sign invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params

from jaxfm.graphfm.signnet import SignNet, pe_column_mask
from jaxfm.graphfm.tokens import FeatureMLPs, NodeTokenizer, row_datasets


def _gelu(x):
    return np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=False))


def test_row_datasets_with_empty_groups_and_padding():
    ds, ok = row_datasets(jnp.array([0, 2, 0, 1]), 5)
    assert ds.tolist() == [1, 1, 3, 3, 3] and ok.tolist() == [True, True, True, False, False]


def test_raw_ragged_dot_rows_past_the_groups_on_this_jax():
    # jax 0.10.2 (CPU) returns zeros for rows past sum(group_sizes), even for NaN inputs. This is
    # not documented for every backend, which is why FeatureMLPs masks those rows itself.
    x = jnp.full((5, 3), jnp.nan).at[:3].set(1.0)
    y = jax.lax.ragged_dot(x, jnp.ones((2, 3, 2)), jnp.array([2, 1], jnp.int32))
    np.testing.assert_array_equal(np.asarray(y), [[3, 3]] * 3 + [[0, 0]] * 2)


def test_ragged_and_gather_mlps_equal_the_per_row_reference_in_values_and_grads():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 5)).astype(np.float32)
    x[7:] = np.nan  # padding rows may hold garbage
    sizes = jnp.array([3, 0, 4], jnp.int32)
    ragged = FeatureMLPs(num_datasets=3, hidden=6, out=4)
    gather = FeatureMLPs(num_datasets=3, hidden=6, out=4, implementation="gather")
    p = init_params(ragged, x, sizes)
    ds = [0, 0, 0, 2, 2, 2, 2]
    ref = np.zeros((9, 4), np.float32)
    for r, d in enumerate(ds):
        h = _gelu(x[r] @ p["kernel_0"][d] + p["bias_0"][d])
        ref[r] = h @ p["kernel_1"][d] + p["bias_1"][d]

    def loss(params, mlp):
        y = mlp.apply({"params": params}, x, sizes)
        return jnp.sum(y * jnp.arange(4.0)), y

    (lr, yr), gr = jax.jit(jax.value_and_grad(lambda q: loss(q, ragged), has_aux=True))(p)
    (lg, yg), gg = jax.jit(jax.value_and_grad(lambda q: loss(q, gather), has_aux=True))(p)
    np.testing.assert_allclose(yr, ref, atol=1e-5)
    np.testing.assert_allclose(yg, ref, atol=1e-5)
    np.testing.assert_allclose(lr, lg, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(gr), jax.tree.leaves(gg), strict=True):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Dataset 1 has no rows: its weights get no gradient.
    assert not np.asarray(gr["kernel_0"][1]).any() and not np.asarray(gr["bias_1"][1]).any()


def _packed_rows():
    """Three graphs (slots 1..3) of datasets 0, 1, 2 with 3, 4, 2 rows, then 3 padding rows."""
    rng = np.random.default_rng(5)
    seg = np.array([1, 1, 1, 2, 2, 2, 2, 3, 3, 0, 0, 0], np.int32)
    feats = rng.normal(size=(12, 6)).astype(np.float32)
    pe = rng.normal(size=(12, 3)).astype(np.float32)
    pe[7:9, 2] = 0.0  # graph 3 has 2 nodes: only 2 eigenvectors, the third column is padding
    feats[9:] = pe[9:] = 0.0
    return feats, pe, jnp.array([3, 4, 2], jnp.int32), seg


@pytest.fixture(scope="module")
def tokenizer():
    feats, pe, sizes, seg = _packed_rows()
    tok = NodeTokenizer(num_datasets=3, dim=10, pe_width=4, feature_hidden=7, signnet_hidden=5)
    params = init_params(tok, feats, pe, sizes, seg, num_graphs=4)
    fn = jax.jit(lambda p, f, e: tok.apply({"params": p}, f, e, sizes, seg, num_graphs=4))
    return fn, params


def test_a_rows_token_depends_only_on_its_own_datasets_mlp(tokenizer):
    fn, params = tokenizer
    feats, pe, _, seg = _packed_rows()
    ref = np.asarray(fn(params, feats, pe))
    mlp = dict(params["feature_mlp"])
    mlp["kernel_0"] = mlp["kernel_0"].copy()
    mlp["kernel_0"][1] += 1.0  # perturb dataset 1 only
    out = np.asarray(fn({**params, "feature_mlp": mlp}, feats, pe))
    ds1 = seg == 2
    np.testing.assert_array_equal(out[~ds1], ref[~ds1])
    assert np.abs(out[ds1, :6] - ref[ds1, :6]).min() > 1e-4  # the feature part moved
    np.testing.assert_array_equal(out[ds1, 6:], ref[ds1, 6:])  # the SignNet part did not
    assert not ref[seg == 0].any()


def test_tokens_are_invariant_to_eigenvector_sign_flips_per_graph(tokenizer):
    fn, params = tokenizer
    feats, pe, _, seg = _packed_rows()
    ref = np.asarray(fn(params, feats, pe))
    flips = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], np.float32)  # per slot
    out = np.asarray(fn(params, feats, pe * flips[seg]))
    np.testing.assert_allclose(out, ref, atol=1e-6)
    # Not trivially invariant: swapping two eigenvectors changes the tokens.
    swapped = np.asarray(fn(params, feats, pe[:, [1, 0, 2]]))
    assert np.abs(swapped[:9, 6:] - ref[:9, 6:]).max() > 1e-3


def test_pe_column_mask_marks_zero_padded_eigenvectors_per_graph():
    _, pe, _, seg = _packed_rows()
    mask = np.asarray(pe_column_mask(jnp.asarray(pe), jnp.asarray(seg), 4))
    expect = np.ones((12, 3), bool)
    expect[7:9, 2] = False  # graph 3's missing eigenvector
    expect[9:] = False  # padding rows
    np.testing.assert_array_equal(mask, expect)


def test_signnet_masked_columns_contribute_nothing():
    _, pe, _, seg = _packed_rows()
    mask = pe_column_mask(jnp.asarray(pe), jnp.asarray(seg), 4)
    net = SignNet(hidden=5, out=4)
    p = init_params(net, pe, mask)
    fn = jax.jit(lambda q, m: net.apply({"params": q}, pe, m))
    ref = np.asarray(fn(p, mask))
    p2 = {**p, "eig_index": p["eig_index"].copy()}
    p2["eig_index"][2] += 3.0  # only eigenvector 2's embedding changes
    out = np.asarray(fn(p2, mask))
    np.testing.assert_allclose(out[7:9], ref[7:9], atol=1e-6)  # graph 3 has no eigenvector 2
    assert np.abs(out[:7] - ref[:7]).min() > 1e-5
    # Without the mask a zero column would add 2 phi(0) to graph 3's rows.
    unmasked = np.asarray(fn(p, jnp.ones_like(mask)))
    assert np.abs(unmasked[7:9] - ref[7:9]).max() > 1e-3
