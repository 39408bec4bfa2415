"""Graph dataset readers on tiny hand-made files (exact contents), structural features, the
restricted unpickler and every bad-input case (clear DatasetFormatError naming the file)."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from jaxfm.data.graph_dataset import NodeDataset, Split
from jaxfm.data.graph_formats import (
    encode_labels,
    read_facebook100_mat,
    read_heterophilous_npz,
    read_linkx_splits,
    read_npz_graph,
    read_planetoid,
    simple_edges,
)
from jaxfm.data.graph_formats_io import load_restricted_pickle, read_npz
from jaxfm.data.graph_formats_text import (
    read_airports,
    read_email_eu_core,
    read_geom_gcn,
    read_karateclub,
    read_musae,
    read_tu,
    stratified_folds,
)
from jaxfm.data.graph_validate import DatasetFormatError, validate_node_dataset
from jaxfm.data.splits import seeded_node_splits as random_splits
from jaxfm.data.structural import structural_feature_names, structural_features

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "graphs"))
import make_graph_fixtures as mk

G5_S = [0, 0, 1, 1, 2, 2, 3, 4]
G5_R = [1, 2, 0, 2, 0, 1, 4, 3]


@pytest.fixture(scope="module")
def fx(fixtures_dir) -> Path:
    return fixtures_dir / "graphs"


@pytest.fixture()
def fresh(tmp_path) -> Path:
    """A writable copy of every fixture dataset (for corruption tests)."""
    return mk.write_all(tmp_path / "g")


def _edges(ds):
    return np.asarray(ds.senders).tolist(), np.asarray(ds.receivers).tolist()


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _check_random_splits(ds, labelled):
    assert len(ds.splits) == 10
    for s in ds.splits:
        cover = s.train.astype(int) + s.val.astype(int) + s.test.astype(int)
        np.testing.assert_array_equal(cover, labelled.astype(int))  # disjoint, labelled only


# ---------------------------------------------------------------------------------------------
# Readers on the committed fixtures.


def test_graphdata_npz_pickled_csr(fx):
    ds = read_npz_graph(fx / "GraphData" / "tiny.npz")
    assert _edges(ds) == (G5_S, G5_R)  # duplicate 1->0 and self loop 4->4 dropped
    assert ds.senders.dtype == np.int32 and ds.num_nodes == 5 and ds.name == "tiny"
    np.testing.assert_array_equal(_dense(ds.x), mk.G5_X)
    np.testing.assert_array_equal(ds.y, mk.G5_LABELS)  # stored 1..3, renumbered
    assert ds.num_classes == 3 and ds.task == "classification" and not ds.structural_features
    _check_random_splits(ds, np.ones(5, bool))


def test_graphdata_without_features_gets_structural_features(fx):
    ds = read_npz_graph(fx / "GraphData" / "nofeat.npz")
    assert ds.structural_features and ds.num_features == len(structural_feature_names())
    np.testing.assert_array_equal(ds.x, structural_features(ds.senders, ds.receivers, 5))
    assert ds.num_classes == 3  # from metadata class_names


def test_gnn_benchmark_npz_csr_arrays(fx):
    ds = read_npz_graph(fx / "gnn-benchmark" / "tiny.npz")
    assert _edges(ds) == (G5_S, G5_R)
    np.testing.assert_array_equal(_dense(ds.x), mk.G5_X)
    np.testing.assert_array_equal(ds.y, mk.G5_LABELS)
    assert ds.num_classes == 3


def test_heterophilous_npz_public_masks_and_directed(fx):
    ds = read_heterophilous_npz(fx / "heterophilous" / "tiny.npz")
    assert _edges(ds) == (G5_S, G5_R)
    np.testing.assert_array_equal(ds.x, mk.G5_X * 0.5)
    assert len(ds.splits) == 2
    assert np.flatnonzero(ds.splits[1].train).tolist() == [2, 3]
    assert np.flatnonzero(ds.splits[1].val).tolist() == [0]
    assert np.flatnonzero(ds.splits[1].test).tolist() == [1, 4]
    d = read_heterophilous_npz(fx / "heterophilous" / "tiny_directed.npz")
    assert _edges(d) == ([0, 1, 1, 2, 3], [1, 0, 2, 0, 4])


def test_planetoid_public_split_and_test_reorder(fx):
    ds = read_planetoid(fx / "planetoid", "toy")
    assert ds.num_nodes == 6
    assert _edges(ds) == ([0, 0, 1, 2, 4, 5], [1, 2, 0, 0, 5, 4])
    want = [[0, 1], [2, 3], [4, 5], [6, 7], [40, 41], [50, 51]]  # tx rows in test.index order
    np.testing.assert_array_equal(_dense(ds.x), want)
    np.testing.assert_array_equal(ds.y, [0, 1, 2, 0, 1, 2])
    (s,) = ds.splits
    assert [np.flatnonzero(m).tolist() for m in (s.train, s.val, s.test)] == [
        [0, 1],
        [2, 3],
        [4, 5],
    ]


def test_geom_gcn_dense_with_split_files(fx):
    ds = read_geom_gcn(fx / "geom-gcn" / "new_data" / "tiny")
    assert _edges(ds) == (G5_S, G5_R)
    np.testing.assert_array_equal(ds.x, mk.G5_X)  # rows were stored out of order
    np.testing.assert_array_equal(ds.y, mk.G5_LABELS)
    assert len(ds.splits) == 2
    s = ds.splits[0]
    assert [np.flatnonzero(m).tolist() for m in (s.train, s.val, s.test)] == [[0, 1, 2], [3], [4]]


def test_geom_gcn_sparse_index_features(fx):
    ds = read_geom_gcn(fx / "geom-gcn" / "new_data" / "tinyfilm")
    assert sp.issparse(ds.x) and ds.x.shape == (3, 5)  # max(amount 4, max index 4 + 1)
    want = np.zeros((3, 5))
    want[0, [1, 4]] = want[1, 0] = want[2, 2] = 1  # repeated index -> still 1
    np.testing.assert_array_equal(ds.x.toarray(), want)
    np.testing.assert_array_equal(ds.y, [1, 0, 1])
    assert _edges(ds) == ([0, 1, 1, 2], [1, 0, 2, 1])
    assert len(ds.splits) == 10  # no split files -> seeded


def test_musae_twitch_new_id_first_row_wins(fx):
    ds = read_musae(fx / "MUSAE" / "input", "XX")
    assert _edges(ds) == (G5_S, G5_R)
    np.testing.assert_array_equal(ds.y, [0, 1, 1, 0, 1])  # by new_id; duplicate id 4 ignored
    want = np.zeros((5, 3))
    want[0, [0, 2]] = want[1, 1] = want[3, [0, 1]] = 1
    np.testing.assert_array_equal(ds.x.toarray(), want)


def test_musae_wikipedia_traffic_is_log_regression(fx):
    ds = read_musae(fx / "MUSAE" / "input", "wiki")
    assert ds.task == "regression" and ds.num_classes == 0 and ds.y.dtype == np.float32
    np.testing.assert_allclose(ds.y, np.log1p([0.5, 1000.25, 99.0]), rtol=1e-6)
    _check_random_splits(ds, np.ones(3, bool))


def test_musae_and_karateclub_missing_features(fx):
    with pytest.raises(DatasetFormatError, match=r"nofeat_edges\.csv: node features file"):
        read_musae(fx / "MUSAE" / "input", "nofeat")
    ds = read_musae(fx / "MUSAE" / "input", "nofeat", structural_if_missing=True)
    assert ds.structural_features and ds.y.tolist() == [1, 0]
    with pytest.raises(DatasetFormatError, match="features file is absent"):
        read_karateclub(fx / "karateclub" / "nofeat")


def test_karateclub_sparse_triples(fx):
    ds = read_karateclub(fx / "karateclub" / "tiny")
    assert _edges(ds) == (G5_S, G5_R)
    want = np.zeros((5, 4))
    want[0, 0], want[2, 3], want[4, 1] = 1.0, 2.5, 1.0
    np.testing.assert_array_equal(ds.x.toarray(), want)
    np.testing.assert_array_equal(ds.y, mk.G5_LABELS)


def test_facebook100_gender_and_onehot(fx):
    ds = read_facebook100_mat(fx / "facebook100" / "Tiny College1.mat")
    assert ds.name == "tiny_college1"
    np.testing.assert_array_equal(ds.y, [1, 0, -1, 1])  # gender 2, 1, missing, 2
    assert ds.num_classes == 2 and ds.x.shape == (4, 13)  # 2 + 3 + 1 + 2 + 2 + 3 values
    assert ds.x[0].indices.tolist() == [0, 3, 5, 7, 8, 10]
    assert ds.x[2].indices.tolist() == [1, 4, 5, 6, 8, 10]
    assert _edges(ds) == ([0, 0, 1, 1, 2, 3], [1, 3, 0, 2, 1, 0])
    _check_random_splits(ds, np.array([True, True, False, True]))


def test_airports_relabels_sorted_ids(fx):
    ds = read_airports(fx / "airports" / "toy-airports.edgelist")
    assert ds.name == "toy" and ds.structural_features
    np.testing.assert_array_equal(ds.y, [0, 1, 3, 2])
    assert _edges(ds) == ([0, 0, 1, 1, 2, 2, 2, 3], [1, 2, 0, 2, 0, 1, 3, 2])


def test_email_eu_core_crlf_and_label_renumbering(fx):
    ds = read_email_eu_core(fx / "email" / "email-Eu-core.txt")
    assert ds.num_nodes == 4 and _edges(ds) == ([0, 1, 1, 2], [1, 0, 2, 1])
    np.testing.assert_array_equal(ds.y, [1, 1, 2, 0])  # departments 4, 4, 9, 1
    assert ds.num_classes == 3


def test_tu_graphs_labels_features_folds(fx):
    ds = read_tu(fx / "TU" / "TOY" / "raw")
    assert ds.name == "TOY" and len(ds.graphs) == 3 and not ds.structural_features
    np.testing.assert_array_equal(ds.y, [0, 1, 1])  # -1, 1, 1
    g0, g1, g2 = ds.graphs
    assert (g0.num_nodes, g1.num_nodes, g2.num_nodes) == (3, 2, 1)
    assert _edges(g0) == ([0, 1, 1, 2], [1, 0, 2, 1]) and _edges(g1) == ([0, 1], [1, 0])
    assert g2.senders.size == 0
    np.testing.assert_array_equal(g0.x, [[1, 0, 0, 0.5], [0, 0, 1, 1.5], [1, 0, 0, 2.5]])
    np.testing.assert_array_equal(g2.x, [[0, 0, 1, 5.5]])
    assert len(ds.folds) == 10
    tested = sum(f.test.astype(int) for f in ds.folds)
    np.testing.assert_array_equal(tested, [1, 1, 1])  # every graph tested exactly once
    plain = read_tu(fx / "TU" / "PLAIN")
    assert plain.structural_features
    assert plain.graphs[1].x.shape == (3, len(structural_feature_names()))


def test_linkx_splits(fx):
    (s,) = read_linkx_splits(fx / "LINKX" / "tiny-splits.npy", 5)
    assert [np.flatnonzero(m).tolist() for m in (s.train, s.val, s.test)] == [[0, 1], [2], [3, 4]]
    with pytest.raises(DatasetFormatError, match="outside"):
        read_linkx_splits(fx / "LINKX" / "tiny-splits.npy", 4)


# ---------------------------------------------------------------------------------------------
# Helpers.


def test_simple_edges_and_labels():
    s, r = simple_edges([2, 0, 0, 1], [0, 2, 0, 2], 3)
    assert (s.tolist(), r.tolist()) == ([0, 1, 2, 2], [2, 2, 0, 1])
    s, r = simple_edges([2, 0, 0], [0, 2, 0], 3, directed=True)
    assert (s.tolist(), r.tolist()) == ([0, 2], [2, 0])
    assert encode_labels(np.array([2, 0, 1]), "f")[1] == 3
    y, c = encode_labels(np.array(["b", "a", "b"]), "f")
    assert y.tolist() == [1, 0, 1] and c == 2
    with pytest.raises(DatasetFormatError, match="f: labels out of range"):
        encode_labels(np.array([0, 3]), "f", num_classes=3)


def test_random_splits_are_seeded_stratified_60_20_20():
    y = np.repeat([0, 1], 50).astype(np.int32)
    a, b = random_splits(y, "classification", 2, seed=0), random_splits(y, "classification", 2)
    np.testing.assert_array_equal(a[1].test, b[1].test)
    assert not np.array_equal(a[0].train, a[1].train)
    assert [int(m[y == 0].sum()) for m in (a[0].train, a[0].val, a[0].test)] == [30, 10, 10]


def test_stratified_folds_partition_every_class():
    y = np.array([0] * 20 + [1] * 10)
    folds = stratified_folds(y, 10, seed=3)
    np.testing.assert_array_equal(sum(f.test.astype(int) for f in folds), np.ones(30))
    for f in folds:
        assert int(f.test[y == 0].sum()) == 2 and int(f.test[y == 1].sum()) == 1
        assert not (f.train & f.val).any() and not (f.val & f.test).any()


def test_structural_features_hand_computed():
    # Triangle 0-1-2 plus pendant 3 on node 2 (given one direction, with a duplicate).
    x = structural_features([0, 1, 2, 2, 1], [1, 2, 0, 3, 0], 4, max_degree=2)
    assert x.shape == (4, 7)
    np.testing.assert_array_equal(x[:, :3], [[0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 1, 0]])
    np.testing.assert_allclose(x[:, 3], np.log1p([2, 2, 3, 1]), rtol=1e-6)
    l2, l3, l1 = np.log1p([2, 3, 1])
    np.testing.assert_allclose(x[:, 4], [(l2 + l3) / 2, (l2 + l3) / 2, (2 * l2 + l1) / 3, l3], 1e-6)
    np.testing.assert_allclose(x[:, 5], [1, 1, 1 / 3, 0], rtol=1e-6)
    np.testing.assert_allclose(np.exp(x[:, 6]).sum() / 4, 1.0, rtol=1e-5)  # pagerank sums to 1
    assert x[2, 6] > x[0, 6] > x[3, 6]


def test_structural_features_triangles_match_dense_and_permute():
    rng = np.random.default_rng(0)
    n = 40
    s, r = rng.integers(0, n, 300), rng.integers(0, n, 300)
    x = structural_features(s, r, n)
    a = np.zeros((n, n))
    a[s, r] = a[r, s] = 1
    np.fill_diagonal(a, 0)
    deg = a.sum(1)
    tri = np.diag(a @ a @ a) / 2
    pairs = deg * (deg - 1) / 2
    want = np.divide(tri, pairs, out=np.zeros(n), where=pairs > 0)
    np.testing.assert_allclose(x[:, -2], want, rtol=1e-6)
    perm = rng.permutation(n)
    inv = np.argsort(perm)
    xp = structural_features(inv[s], inv[r], n)  # node i is renamed inv[i]
    np.testing.assert_allclose(xp[inv], x, rtol=1e-5, atol=1e-6)
    assert structural_features([], [], 1).shape == (1, 36)


# ---------------------------------------------------------------------------------------------
# Restricted unpickling.


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _object_npy(obj) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    return buf.getvalue() + pickle.dumps(obj, protocol=3)


def test_unsafe_pickle_in_npz_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("adj_matrix.npy", _object_npy(_Evil(str(marker))))
        zf.writestr("node_label.npy", _object_npy(np.zeros(2)))
    with pytest.raises(DatasetFormatError, match=r"evil\.npz.*refusing to load global (posix|os)"):
        read_npz_graph(path)
    assert not marker.exists()
    for forbidden in (np.load, eval, getattr):
        with pytest.raises(DatasetFormatError, match="refusing"):
            load_restricted_pickle(pickle.dumps(forbidden), "x.pkl")


def test_restricted_pickle_accepts_arrays_sparse_and_defaultdicts():
    import collections

    obj = {
        "a": np.arange(3),
        "m": sp.csr_matrix(np.eye(2)),
        "g": collections.defaultdict(list, {1: [2]}),
    }
    back = load_restricted_pickle(pickle.dumps(obj, protocol=2), "ok.pkl")
    np.testing.assert_array_equal(back["a"], [0, 1, 2])
    np.testing.assert_array_equal(back["m"].toarray(), np.eye(2))
    assert back["g"][1] == [2] and back["g"][5] == []


def test_unsafe_planetoid_pickle_is_refused(fresh):
    marker = fresh / "pwned"
    (fresh / "planetoid" / "ind.toy.graph").write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(DatasetFormatError, match=r"ind\.toy\.graph: unsafe or corrupt pickle"):
        read_planetoid(fresh / "planetoid", "toy")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Bad input.


def _rewrite_npz(path: Path, **changes) -> None:
    arrays = dict(np.load(path, allow_pickle=True))  # our own fixture: safe
    arrays.update(changes)
    np.savez(path, **arrays)


def test_nan_and_inf_features(fresh):
    p = fresh / "heterophilous" / "tiny.npz"
    x = mk.G5_X.copy()
    x[1, 2] = np.nan
    _rewrite_npz(p, node_features=x)
    with pytest.raises(DatasetFormatError, match=r"tiny\.npz: features contain 1 NaN/inf"):
        read_heterophilous_npz(p)
    g = fresh / "GraphData" / "tiny.npz"
    bad = sp.csr_matrix(np.where(mk.G5_X > 0, np.inf, 0).astype(np.float32))
    _rewrite_npz(g, node_attr=np.array(bad, dtype=object))
    with pytest.raises(DatasetFormatError, match=r"tiny\.npz: features contain .* NaN/inf"):
        read_npz_graph(g)


def test_labels_out_of_range(fresh):
    p = fresh / "gnn-benchmark" / "tiny.npz"
    _rewrite_npz(p, labels=np.array([0, 1, 3, 1, 2], np.int8))  # 3 classes declared
    with pytest.raises(DatasetFormatError, match=r"tiny\.npz: labels out of range"):
        read_npz_graph(p)
    ds = NodeDataset(
        name="t", senders=np.zeros(0, np.int32), receivers=np.zeros(0, np.int32), num_nodes=2,
        x=np.zeros((2, 1), np.float32), y=np.array([0, 2], np.int32), num_classes=2, source="t.x",
    )  # fmt: skip
    with pytest.raises(DatasetFormatError, match=r"t\.x: labels out of range"):
        validate_node_dataset(ds)


def test_overlapping_splits(fresh):
    p = fresh / "heterophilous" / "tiny.npz"
    val = np.array([[1, 0, 1, 0, 0], [1, 0, 0, 0, 0]], bool)  # node 0 also in train of split 0
    _rewrite_npz(p, val_masks=val)
    with pytest.raises(DatasetFormatError, match=r"tiny\.npz: split 0 overlaps: 1 item.*train"):
        read_heterophilous_npz(p)
    s = fresh / "geom-gcn" / "splits" / "tiny_split_0.6_0.2_1.npz"
    _rewrite_npz(s, test_mask=np.array([1, 1, 0, 0, 0], np.uint8))
    with pytest.raises(DatasetFormatError, match="split 1 overlaps"):
        read_geom_gcn(fresh / "geom-gcn" / "new_data" / "tiny")


def test_edge_index_out_of_range(fresh):
    p = fresh / "heterophilous" / "tiny.npz"
    _rewrite_npz(p, edges=np.array([[0, 1], [3, 5]]))
    with pytest.raises(DatasetFormatError, match=r"tiny\.npz: edge index 5 is out of range"):
        read_heterophilous_npz(p)
    (fresh / "TU" / "PLAIN" / "PLAIN_A.txt").write_text("1, 2\n2, 9\n")
    with pytest.raises(DatasetFormatError, match=r"PLAIN_A\.txt: edge index 8 is out of range"):
        read_tu(fresh / "TU" / "PLAIN")
    (fresh / "airports" / "toy-airports.edgelist").write_text("10 20\n20 99\n")
    with pytest.raises(DatasetFormatError, match=r"endpoint 99 .*out of range"):
        read_airports(fresh / "airports" / "toy-airports.edgelist")


def test_zero_nodes(fresh):
    p = fresh / "heterophilous" / "tiny.npz"
    e = np.zeros((0, 5), bool)
    _rewrite_npz(
        p, node_features=np.zeros((0, 3), np.float32), node_labels=np.zeros(0, np.int64),
        edges=np.zeros((0, 2), np.int64), train_masks=e, val_masks=e, test_masks=e,
    )  # fmt: skip
    with pytest.raises(DatasetFormatError, match=r"tiny\.npz: no labels|zero nodes"):
        read_heterophilous_npz(p)
    (fresh / "TU" / "PLAIN" / "PLAIN_graph_labels.txt").write_text("0\n1\n1\n")
    with pytest.raises(DatasetFormatError, match=r"graph_indicator\.txt: graph 3 has zero nodes"):
        read_tu(fresh / "TU" / "PLAIN")


def test_truncated_and_corrupt_files(fresh):
    p = fresh / "GraphData" / "tiny.npz"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match=r"GraphData/tiny\.npz"):
        read_npz_graph(p)
    h = fresh / "heterophilous" / "tiny.npz"
    raw = bytearray(h.read_bytes())
    with zipfile.ZipFile(h) as zf:
        info = zf.getinfo("node_features.npy")
    start = info.header_offset + 30 + len(info.filename) + 200  # inside the stored data
    raw[start] ^= 0xFF
    h.write_bytes(bytes(raw))
    with pytest.raises(DatasetFormatError, match=r"tiny\.npz \(member node_features\.npy\)"):
        read_npz(h)
    m = fresh / "facebook100" / "Tiny College1.mat"
    m.write_bytes(m.read_bytes()[:300])
    with pytest.raises(DatasetFormatError, match=r"Tiny College1\.mat"):
        read_facebook100_mat(m)
    g = fresh / "planetoid" / "ind.toy.allx"
    g.write_bytes(g.read_bytes()[:40])
    with pytest.raises(DatasetFormatError, match=r"ind\.toy\.allx: .*corrupt"):
        read_planetoid(fresh / "planetoid", "toy")
    (fresh / "email" / "email-Eu-core.txt").write_text("0 1\n1 x\n")
    with pytest.raises(DatasetFormatError, match=r"email-Eu-core\.txt: malformed"):
        read_email_eu_core(fresh / "email" / "email-Eu-core.txt")
    (fresh / "MUSAE" / "input" / "features" / "XX.json").write_text('{"0": [1,')
    with pytest.raises(DatasetFormatError, match=r"XX\.json: invalid JSON"):
        read_musae(fresh / "MUSAE" / "input", "XX")


def test_missing_files(fresh):
    with pytest.raises(DatasetFormatError, match=r"nope\.npz: file not found"):
        read_npz_graph(fresh / "nope.npz")
    (fresh / "geom-gcn" / "new_data" / "tiny" / "out1_graph_edges.txt").unlink()
    with pytest.raises(DatasetFormatError, match=r"out1_graph_edges\.txt: file not found"):
        read_geom_gcn(fresh / "geom-gcn" / "new_data" / "tiny")
    shutil.rmtree(fresh / "TU" / "TOY")
    (fresh / "planetoid" / "ind.toy.ty").unlink()
    with pytest.raises(DatasetFormatError, match=r"incomplete, missing \['ind\.toy\.ty'\]"):
        read_planetoid(fresh / "planetoid", "toy")


def test_error_is_a_value_error():
    assert issubclass(DatasetFormatError, ValueError)
    assert Split is not None
