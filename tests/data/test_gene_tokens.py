"""Gene-token sampling, value masking (FIMP's 80 % rule) and node splits."""

import numpy as np
import pytest
import scipy.sparse as sp

from jaxfm.data import mask_values, sample_expressed_genes, split_nodes


def _expression(n=50, g=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, g)) * (rng.random((n, g)) < 0.3)
    x[0] = 0.0
    x[0, [4, 9]] = [1.5, 2.5]  # few expressed genes: all kept, rest padding
    x[1] = rng.random(g) + 0.1  # every gene expressed: a subsample
    return x.astype(np.float32)


@pytest.mark.parametrize("as_sparse", [False, True])
def test_sample_expressed_genes_invariants(as_sparse):
    x = _expression()
    gene_ids, values, mask = sample_expressed_genes(
        sp.csr_matrix(x) if as_sparse else x, 8, rng=np.random.default_rng(1), chunk_size=16
    )
    assert gene_ids.shape == values.shape == mask.shape == (50, 8)
    assert gene_ids.dtype == np.int32 and values.dtype == np.float32 and mask.dtype == bool
    nnz = (x != 0).sum(axis=1)
    np.testing.assert_array_equal(mask.sum(axis=1), np.minimum(nnz, 8))
    for i in range(len(x)):
        ids = gene_ids[i][mask[i]]
        assert len(set(ids)) == len(ids) and np.all(np.diff(ids) > 0)  # distinct, ascending
        assert np.all(x[i, ids] != 0)
        np.testing.assert_array_equal(values[i][mask[i]], x[i, ids])
        assert not mask[i][mask[i].sum() :].any()  # valid tokens first, then padding
        if nnz[i] <= 8:
            np.testing.assert_array_equal(ids, np.flatnonzero(x[i]))
    assert np.all(gene_ids[~mask] == 0) and np.all(values[~mask] == 0)
    np.testing.assert_array_equal(gene_ids[0, :3], [4, 9, 0])
    np.testing.assert_array_equal(mask[0, :3], [True, True, False])


def test_sampling_is_deterministic_sparse_equals_dense_and_uniform():
    x = _expression()
    a = sample_expressed_genes(x, 8, rng=3)
    b = sample_expressed_genes(sp.csr_matrix(x), 8, rng=3)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    # cell 1 expresses all 30 genes: over many draws every gene is picked ~8/30 of the time
    row = np.repeat(x[1:2], 3000, axis=0)
    ids, _, _ = sample_expressed_genes(row, 8, rng=0)
    freq = np.bincount(ids.ravel(), minlength=30) / 3000
    np.testing.assert_allclose(freq, 8 / 30, atol=0.04)


def test_budget_wider_than_genes_pads():
    x = np.array([[0, 1, 2], [3, 0, 0]], np.float32)
    ids, vals, _ = sample_expressed_genes(x, 5, rng=0, pad_id=-1)
    np.testing.assert_array_equal(ids, [[1, 2, -1, -1, -1], [0, -1, -1, -1, -1]])
    np.testing.assert_array_equal(vals, [[1, 2, 0, 0, 0], [3, 0, 0, 0, 0]])


def test_empty_cell_is_named():
    x = _expression()
    x[17] = 0.0
    with pytest.raises(ValueError, match=r"cell 17 has no expressed gene"):
        sample_expressed_genes(x, 8, rng=0, chunk_size=8)


def test_mask_values_eighty_percent_rule():
    valid_counts = np.array([0, 1, 2, 3, 4, 5, 7, 10, 16])
    token_mask = np.arange(16)[None, :] < valid_counts[:, None]
    masked = mask_values(token_mask, 0.8, rng=np.random.default_rng(0))
    assert masked.dtype == bool and masked.shape == token_mask.shape
    assert not (masked & ~token_mask).any()  # padding is never masked
    expected = np.array([0, 1, 2, 2, 3, 4, 6, 8, 13])  # floor(0.8 n + 0.5), >= 1 when n >= 1
    np.testing.assert_array_equal(masked.sum(axis=1), expected)
    again = mask_values(token_mask, 0.8, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(masked, again)
    with pytest.raises(ValueError, match="rate"):
        mask_values(token_mask, 0.0, rng=0)


def test_mask_values_positions_are_uniform():
    token_mask = np.ones((4000, 5), bool)
    masked = mask_values(token_mask, 0.4, rng=0)  # 2 of 5 per row
    assert np.all(masked.sum(axis=1) == 2)
    np.testing.assert_allclose(masked.mean(axis=0), 0.4, atol=0.03)


@pytest.mark.parametrize("stratify", [False, True])
def test_split_nodes_disjoint_covering_deterministic(stratify):
    n = 503
    labels = np.random.default_rng(0).integers(0, 4, n) if stratify else None
    train, val, test = split_nodes(n, (0.7, 0.1, 0.2), seed=5, stratify=labels)
    all_idx = np.concatenate([train, val, test])
    assert len(all_idx) == n and len(np.unique(all_idx)) == n  # disjoint + covering
    assert all(np.all(np.diff(p) > 0) for p in (train, val, test))
    assert abs(len(train) - 0.7 * n) <= 4 and abs(len(test) - 0.2 * n) <= 4
    again = split_nodes(n, (0.7, 0.1, 0.2), seed=5, stratify=labels)
    for a, b in zip((train, val, test), again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = split_nodes(n, (0.7, 0.1, 0.2), seed=6, stratify=labels)[0]
    assert not np.array_equal(train, other)
    if stratify:
        for c in range(4):
            frac = np.isin(np.flatnonzero(labels == c), train).mean()
            assert abs(frac - 0.7) < 0.02


def test_split_nodes_validates():
    with pytest.raises(ValueError, match="fractions"):
        split_nodes(10, (0.5, 0.6, 0.1))
    with pytest.raises(ValueError, match="stratify"):
        split_nodes(10, stratify=np.zeros(9))
    train, val, test = split_nodes(10)
    assert (len(train), len(val), len(test)) == (7, 1, 2)
