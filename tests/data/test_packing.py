"""pack_bucket: row order, padding, target allocation and neighbour sampling."""

import numpy as np
import pytest

from jaxfm.data.packing import PackingBudget, PackUnit, allocate_targets, pack_bucket
from jaxfm.graph.packed import check_packed_batch
from jaxfm.graph.saint import csr_adjacency


def _unit(dataset, graph, n, f, *, seed, edges=None, labelled=None, regression=False, gl=-1):
    rng = np.random.default_rng(seed)
    if edges is None:  # a ring plus a few chords
        s = np.arange(n)
        edges = (
            np.concatenate([s, s[: n // 2]]),
            np.concatenate([(s + 1) % n, (s[: n // 2] + 3) % n]),
        )
    indptr, indices = csr_adjacency(*edges, n)
    labels = rng.normal(size=n).astype(np.float32) if regression else rng.integers(0, 3, n)
    train = np.zeros(n, bool)
    train[: (labelled if labelled is not None else n)] = True
    return PackUnit(
        dataset=dataset,
        graph=graph,
        features=rng.normal(size=(n, f)).astype(np.float32),
        pe=rng.normal(size=(n, 2)).astype(np.float32),
        indptr=indptr,
        indices=indices,
        labels=labels,
        train_mask=train,
        regression=regression,
        graph_label=gl,
    )


BUDGET = PackingBudget(nodes=64, graphs=5, targets=20, neighbors=3)


def _pack(units, seed=0, budget=BUDGET):
    return pack_bucket(units, budget, num_datasets=3, feature_dim=6, pe_dim=4, seed=seed)


def test_rows_sorted_by_dataset_then_graph_and_padded():
    units = [
        _unit(2, 7, 10, 6, seed=0),
        _unit(0, 3, 12, 4, seed=1, gl=1),
        _unit(2, 5, 8, 6, seed=2),
        _unit(0, 1, 9, 4, seed=3),
    ]
    b = _pack(units)
    check_packed_batch(b, num_datasets=3)
    order = [units[3], units[1], units[2], units[0]]  # (dataset, graph) order
    np.testing.assert_array_equal(b.group_sizes, [21, 0, 18])
    row = 0
    for slot, u in enumerate(order):
        n = u.num_nodes
        np.testing.assert_array_equal(b.features[row : row + n, : u.features.shape[1]], u.features)
        np.testing.assert_array_equal(b.features[row : row + n, u.features.shape[1] :], 0.0)
        np.testing.assert_array_equal(b.pe[row : row + n, :2], u.pe)
        np.testing.assert_array_equal(b.pe[row : row + n, 2:], 0.0)
        np.testing.assert_array_equal(b.segment_ids[row : row + n], slot + 1)
        row += n
    assert row == 39
    np.testing.assert_array_equal(b.segment_ids[row:], 0)
    np.testing.assert_array_equal(b.features[row:], 0.0)
    np.testing.assert_array_equal(b.graph_mask, [True] * 4 + [False])
    np.testing.assert_array_equal(b.graph_dataset, [0, 0, 2, 2, 0])
    np.testing.assert_array_equal(b.graph_label, [-1, 1, -1, -1, -1])


def test_targets_are_training_nodes_with_neighbours_from_their_graph():
    units = [_unit(0, 0, 30, 4, seed=5, labelled=10), _unit(1, 1, 20, 6, seed=6)]
    b = _pack(units)
    offsets = {0: 0, 1: 30}
    tm = b.target_mask
    # Proportional split 20 * (30, 20) / 50 = (12, 8), but unit 0 has 10 candidates -> (10, 10).
    np.testing.assert_array_equal(np.bincount(b.target_graph[tm], minlength=2), [10, 10])
    assert tm.sum() == 20 and b.target_loss_mask[tm].all()
    for q in np.flatnonzero(tm):
        slot = int(b.target_graph[q])
        u, off = units[slot], offsets[slot]
        local = int(b.target_index[q]) - off
        assert u.train_mask[local]
        assert b.target_label[q] == u.labels[local]
        assert b.target_dataset[q] == u.dataset
        nbrs = set(u.indices[u.indptr[local] : u.indptr[local + 1]].tolist())
        got = b.neighbor_index[q][b.neighbor_mask[q]] - off
        assert len(got) == min(len(nbrs), 3) and len(set(got.tolist())) == len(got)
        assert set(got.tolist()) <= nbrs
    # Targets are distinct nodes.
    assert np.unique(b.target_index[tm]).size == 20


def test_packing_is_deterministic_per_seed():
    units = [_unit(0, 0, 30, 4, seed=5), _unit(1, 1, 20, 6, seed=6)]
    a, b, c = _pack(units, 1), _pack(units, 1), _pack(units, 2)
    for name in vars(a):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.target_index, c.target_index)


def test_neighbour_sampling_is_uniform_without_replacement():
    # Star: centre 0 with 10 leaves; m = 3 -> each leaf chosen with probability 0.3.
    leaves = np.arange(1, 11)
    u = _unit(0, 0, 11, 4, seed=0, edges=(np.zeros(10, int), leaves))
    u = PackUnit(**{**vars(u), "train_mask": np.eye(11, dtype=bool)[0]})
    budget = PackingBudget(nodes=16, graphs=1, targets=1, neighbors=3)
    counts = np.zeros(11)
    for seed in range(2000):
        b = _pack([u], seed=seed, budget=budget)
        assert b.target_index[0] == 0 and b.neighbor_mask[0].all()
        counts[b.neighbor_index[0]] += 1
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:] / 2000, 0.3, atol=0.04)


def test_regression_targets_and_empty_bucket():
    u = _unit(1, 0, 12, 3, seed=9, regression=True)
    b = _pack([u])
    tm = b.target_mask
    assert tm.sum() == 12
    np.testing.assert_array_equal(b.target_label[tm], -1)
    np.testing.assert_allclose(b.target_value[tm], u.labels[b.target_index[tm]])
    empty = _pack([])
    assert not empty.graph_mask.any() and not empty.target_mask.any()
    check_packed_batch(empty, num_datasets=3)


def test_allocate_targets():
    np.testing.assert_array_equal(allocate_targets([100, 100, 200], [5, 100, 100], 40), [5, 12, 23])
    np.testing.assert_array_equal(allocate_targets([10, 10], [3, 4], 100), [3, 4])
    np.testing.assert_array_equal(allocate_targets([1, 1, 1], [9, 9, 9], 7), [3, 2, 2])
    assert allocate_targets([], [], 5).size == 0


def test_budget_violations_raise():
    units = [_unit(0, i, 20, 4, seed=i) for i in range(4)]
    with pytest.raises(ValueError, match="node budget"):
        _pack(units, budget=PackingBudget(nodes=50, graphs=8, targets=4, neighbors=2))
    with pytest.raises(ValueError, match="graph budget"):
        _pack(units[:3], budget=PackingBudget(nodes=64, graphs=2, targets=4, neighbors=2))
    with pytest.raises(ValueError, match="wider"):
        _pack([_unit(0, 0, 5, 9, seed=0)])
    with pytest.raises(ValueError, match=r"PackingBudget\.targets"):
        PackingBudget(nodes=8, graphs=1, targets=0, neighbors=1)
