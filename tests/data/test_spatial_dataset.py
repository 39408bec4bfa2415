"""load_spatial, graphs, gene symbols: on fixtures and (when present) the real osmFISH loom."""

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from jaxfm.data import (
    MissingKeyError,
    SpatialDataset,
    load_spatial,
    map_gene_symbols,
    normalize_total_log1p,
    read_loom,
    to_graph_arrays,
)

SPATIAL = Path(__file__).resolve().parents[1] / "fixtures" / "spatial"
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
OSMFISH = (
    SHARED
    / "datasets/spatial-datasets/data/2018_osmFISH_SScortex/raw_data"
    / "osmFISH_SScortex_mouse_all_cells.loom"
)
VOCAB = SHARED / "fixtures/data/default_gene_vocab.json"


def _counts(path):
    with h5py.File(path, "r") as f:
        return f["layers/counts"][()]


def test_load_spatial_h5ad_filters_normalises_and_uses_file_graph():
    ds = load_spatial(SPATIAL / "tiny.h5ad")
    counts = _counts(SPATIAL / "tiny.h5ad")
    keep = np.array([0, 1, 2, 3, 5, 6, 7, 8, 10, 11])  # cells 4 and 9 are "Excluded"
    assert ds.name == "tiny" and ds.num_cells == 10 and ds.num_genes == 7
    assert ds.expression.dtype == np.float32 and ds.coords.shape == (10, 2)
    assert ds.label_names == ("Astro", "Neuron")  # file category order, Excluded dropped
    np.testing.assert_array_equal(ds.labels, [0, 1, 1, 0, 1, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(ds.cell_names, [f"cell{i:02d}" for i in keep])
    c = counts[keep].astype(np.float64)
    np.testing.assert_allclose(
        ds.expression, np.log1p(c / c.sum(1, keepdims=True) * 1e4), rtol=1e-6
    )
    with h5py.File(SPATIAL / "tiny.h5ad", "r") as f:
        conn = sp.csr_matrix(
            (
                f["obsp/spatial_connectivities/data"][()],
                f["obsp/spatial_connectivities/indices"][()],
                f["obsp/spatial_connectivities/indptr"][()],
            ),
            shape=(12, 12),
        ).toarray()
    np.testing.assert_array_equal(ds.adjacency.toarray(), conn[keep][:, keep])


def test_same_dataset_from_all_three_layouts():
    a = load_spatial(SPATIAL / "tiny.h5ad")
    for name in ("tiny_legacy.h5ad", "tiny.loom"):
        b = load_spatial(
            SPATIAL / name, graph_key="KNN" if name.endswith("loom") else "spatial_connectivities"
        )
        np.testing.assert_allclose(a.expression, b.expression, rtol=1e-6)
        np.testing.assert_allclose(a.coords, b.coords, rtol=1e-6)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.adjacency.toarray(), b.adjacency.toarray())


def test_knn_graph_and_graph_arrays():
    ds = load_spatial(SPATIAL / "tiny.h5ad", graph="knn", k=3)
    assert np.all(np.diff(ds.adjacency.indptr) == 3)  # every cell receives exactly k edges
    senders, receivers = to_graph_arrays(ds)
    assert senders.dtype == receivers.dtype == np.int32 and len(senders) == 30
    assert np.all(senders != receivers)
    assert np.all(np.diff(receivers) >= 0)
    # each cell's senders are its 3 nearest other cells
    d = np.linalg.norm(ds.coords[:, None] - ds.coords[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    for i in range(ds.num_cells):
        assert set(senders[receivers == i]) == set(np.argsort(d[i])[:3])
    s2, r2 = to_graph_arrays(ds, self_loops=True)
    assert len(s2) == 40 and np.sum(s2 == r2) == 10
    assert load_spatial(SPATIAL / "tiny.h5ad", graph="none").adjacency is None
    with pytest.raises(ValueError, match="no adjacency"):
        to_graph_arrays(load_spatial(SPATIAL / "tiny.h5ad", graph="none"))


def test_keys_given_but_missing():
    with pytest.raises(MissingKeyError, match=r"obs column 'celltype'.*'cell_type'"):
        load_spatial(SPATIAL / "tiny.h5ad", cell_type_key="celltype")
    with pytest.raises(MissingKeyError, match=r"obsm key 'xy'.*'spatial'"):
        load_spatial(SPATIAL / "tiny.h5ad", coords_key="xy")


def _write_variant(tmp_path, fn):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mf", SPATIAL.parent / "make_fixtures.py")
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    path = tmp_path / "variant.h5ad"
    mf.write_tiny_h5ad(path)
    with h5py.File(path, "a") as f:
        counts = f["layers/counts"][()]
        fn(counts)
        del f["X"]
        f.create_dataset("X", data=counts)
    return path


def test_nan_counts_are_refused_naming_the_cell(tmp_path):
    path = _write_variant(tmp_path, lambda c: c.__setitem__((2, 3), np.nan))
    with pytest.raises(ValueError, match=r"variant.h5ad: cell 'cell02'.*NaN/inf"):
        load_spatial(path)


def test_empty_cells_refused_or_dropped(tmp_path):
    path = _write_variant(tmp_path, lambda c: c.__setitem__(5, 0.0))
    with pytest.raises(ValueError, match=r"variant.h5ad: cell 'cell05' \(row 5\) has zero total"):
        load_spatial(path)
    with pytest.warns(UserWarning, match="dropped 1 cells with zero total counts"):
        ds = load_spatial(path, drop_empty_cells=True)
    assert ds.num_cells == 9 and "cell05" not in ds.cell_names


def test_non_integer_counts_warn(tmp_path):
    path = _write_variant(tmp_path, lambda c: np.log1p(c, out=c))
    with pytest.warns(UserWarning, match="look already normalised"):
        load_spatial(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_spatial(path, normalize=False)
    np.testing.assert_allclose(ds.expression[0], np.log1p(_counts(SPATIAL / "tiny.h5ad")[0]))


def test_normalize_total_log1p_dense_equals_sparse():
    counts = np.array([[1, 0, 3], [0, 2, 0]], np.float32)
    dense = normalize_total_log1p(counts)
    sparse = normalize_total_log1p(sp.csr_matrix(counts))
    np.testing.assert_allclose(sparse.toarray(), dense)
    np.testing.assert_allclose(dense[0], np.log1p(np.array([0.25, 0, 0.75]) * 1e4), rtol=1e-6)
    with pytest.raises(ValueError, match="cell 1 has zero total"):
        normalize_total_log1p(np.array([[1.0], [0.0]]))


def test_dataset_validation_and_subset():
    ds = load_spatial(SPATIAL / "tiny.h5ad")
    sub = ds.subset(np.array([0, 2, 4]))
    assert sub.num_cells == 3 and sub.adjacency.shape == (3, 3)
    np.testing.assert_array_equal(sub.labels, ds.labels[[0, 2, 4]])
    with pytest.raises(ValueError, match="labels must lie in"):
        SpatialDataset(
            expression=np.ones((2, 3)),
            gene_names=["a", "b", "c"],
            coords=np.zeros((2, 2)),
            labels=[0, 2],
            label_names=("x", "y"),
        )
    with pytest.raises(ValueError, match="coords must be"):
        SpatialDataset(
            expression=np.ones((2, 3)), gene_names=["a", "b", "c"], coords=np.zeros((3, 2))
        )


def test_map_gene_symbols_case_insensitive():
    vocab = {"GAD2": 5, "Gad2x": 1, "VIP": 7, "vip": 9, "Tbr1": 3}
    ids, unmapped = map_gene_symbols(["Gad2", "VIP", "Vip", "tbr1", "Nope"], vocab)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [5, 7, 7, 3, -1])
    assert unmapped == ["Nope"]


@pytest.mark.skipif(not OSMFISH.exists(), reason="osmFISH loom in ../shared/datasets is absent")
def test_osmfish_loom_real_numbers():
    ad = read_loom(OSMFISH)
    assert ad.shape == (6471, 33)
    assert len(set(ad.obs["ClusterName"])) == 32
    assert int(ad.obs["Valid"].sum()) == 4839
    ds = load_spatial(OSMFISH)  # drops Excluded / invalid cells; no file graph -> kNN k=6
    assert ds.num_cells == 4839 and ds.num_genes == 33 and ds.num_classes == 31
    assert "Excluded" not in ds.label_names and ds.gene_names[0] == "Gad2"
    assert ds.adjacency.nnz == 4839 * 6
    assert np.isfinite(ds.expression).all() and (ds.expression > 0).any(axis=1).all()
    np.testing.assert_allclose(np.expm1(ds.expression.astype(np.float64)).sum(1), 1e4, rtol=1e-4)
    if VOCAB.exists():
        vocab = json.loads(VOCAB.read_text())
        ids, unmapped = map_gene_symbols(ds.gene_names, vocab)
        assert sorted(unmapped) == ["Ctps", "Tmem2"] and (ids >= 0).sum() == 31


def test_warnings_are_not_raised_for_clean_counts():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_spatial(SPATIAL / "tiny_legacy.h5ad")
