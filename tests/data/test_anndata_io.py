"""h5ad / loom readers against the generated fixtures (tests/fixtures/make_fixtures.py)."""

import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from jaxfm.data import (
    FileFormatError,
    MissingKeyError,
    detect_format,
    read_anndata_like,
    read_h5ad,
    read_loom,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SPATIAL = FIXTURES / "spatial"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()
C = GEN.tiny_content()


def test_h5ad_round_trip_modern_layout():
    ad = read_h5ad(SPATIAL / "tiny.h5ad")
    assert ad.format == "h5ad" and ad.shape == (12, 7)
    assert sp.isspmatrix_csr(ad.X)
    np.testing.assert_array_equal(ad.X.toarray(), C["counts"])
    # layers: dense and CSC (returned as CSR)
    assert set(ad.layers) == {"counts", "counts_csc"}
    np.testing.assert_array_equal(ad.layers["counts"], C["counts"])
    assert sp.isspmatrix_csr(ad.layers["counts_csc"])
    np.testing.assert_array_equal(ad.layers["counts_csc"].toarray(), C["counts"])
    # obs / var dataframes
    np.testing.assert_array_equal(ad.obs_names, C["obs_names"])
    np.testing.assert_array_equal(ad.var_names, C["var_names"])
    assert list(ad.obs) == ["cell_type", "batch", "n_counts", "score", "quality"]
    np.testing.assert_array_equal(ad.obs["cell_type"], C["cell_types"])
    np.testing.assert_array_equal(ad.obs_categories["cell_type"], GEN.CELL_TYPES)
    np.testing.assert_array_equal(ad.obs["batch"], C["batch"])
    np.testing.assert_array_equal(ad.obs["n_counts"], C["n_counts"])
    np.testing.assert_allclose(ad.obs["score"], C["score"])
    quality = ad.obs["quality"]
    assert np.ma.isMaskedArray(quality)
    np.testing.assert_array_equal(np.ma.getmaskarray(quality), C["quality_mask"])
    np.testing.assert_array_equal(quality.compressed(), C["quality"][~C["quality_mask"]])
    np.testing.assert_array_equal(ad.var["highly_variable"], C["highly_variable"])
    # obsm / obsp
    np.testing.assert_allclose(ad.obsm["spatial"], C["coords"])
    np.testing.assert_allclose(ad.obsm["X_spatial"], C["coords"])
    conn = ad.obsp["spatial_connectivities"]
    assert sp.isspmatrix_csr(conn)
    np.testing.assert_array_equal(conn.toarray(), C["connectivities"])


def test_h5ad_layer_selects_x():
    ad = read_h5ad(SPATIAL / "tiny.h5ad", layer="counts")
    assert isinstance(ad.X, np.ndarray) and ad.layer == "counts"
    np.testing.assert_array_equal(ad.X, C["counts"])


def test_h5ad_legacy_layout():
    ad = read_h5ad(SPATIAL / "tiny_legacy.h5ad")
    assert isinstance(ad.X, np.ndarray)
    np.testing.assert_array_equal(ad.X, C["counts"])
    np.testing.assert_array_equal(ad.obs_names, C["obs_names"])
    np.testing.assert_array_equal(ad.var_names, C["var_names"])
    np.testing.assert_array_equal(ad.obs["cell_type"], C["cell_types"])  # __categories decoded
    np.testing.assert_array_equal(ad.obs["batch"], C["batch"])
    np.testing.assert_array_equal(ad.obsp["spatial_connectivities"].toarray(), C["connectivities"])


def test_loom_reader_transposes_and_reads_graphs():
    ad = read_loom(SPATIAL / "tiny.loom")
    assert ad.format == "loom" and isinstance(ad.X, np.ndarray)
    np.testing.assert_array_equal(ad.X, C["counts"])  # genes x cells on disk -> cells x genes
    np.testing.assert_array_equal(ad.obs_names, C["obs_names"])
    np.testing.assert_array_equal(ad.var_names, C["var_names"])
    np.testing.assert_array_equal(ad.obs["ClusterName"], C["cell_types"])
    np.testing.assert_allclose(ad.obs["X"], C["coords"][:, 0])
    np.testing.assert_array_equal(ad.obsp["KNN"].toarray(), C["connectivities"])


def test_detect_format_by_content(tmp_path):
    assert detect_format(SPATIAL / "tiny.h5ad") == "h5ad"
    assert detect_format(SPATIAL / "tiny.loom") == "loom"
    renamed = tmp_path / "cells.h5"  # the extension does not decide
    renamed.write_bytes((SPATIAL / "tiny.loom").read_bytes())
    assert read_anndata_like(renamed).format == "loom"
    with pytest.raises(FileFormatError, match="use read_loom"):
        read_h5ad(renamed)


def test_missing_layer_lists_available():
    with pytest.raises(MissingKeyError, match=r"layer 'nope'.*'counts', 'counts_csc'") as err:
        read_h5ad(SPATIAL / "tiny.h5ad", layer="nope")
    assert "tiny.h5ad" in str(err.value)


def test_missing_obs_column_lists_available():
    ad = read_h5ad(SPATIAL / "tiny.h5ad")
    with pytest.raises(KeyError, match=r"obs column 'celltype'.*'cell_type', 'batch'"):
        ad.obs_column("celltype")


def test_missing_file():
    with pytest.raises(FileNotFoundError, match=r"absent\.h5ad"):
        read_h5ad(SPATIAL / "absent.h5ad")


def test_not_hdf5(tmp_path):
    path = tmp_path / "counts.h5ad"
    path.write_text("gene,cell\nGad2,1\n")
    with pytest.raises(FileFormatError, match=r"counts.h5ad: not an HDF5 file"):
        read_h5ad(path)


def test_truncated_file(tmp_path):
    data = (SPATIAL / "tiny.h5ad").read_bytes()
    path = tmp_path / "truncated.h5ad"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match=r"truncated\.h5ad"):
        read_h5ad(path)


def test_neither_layout(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("weights", data=np.zeros(3))
    with pytest.raises(FileFormatError, match=r"neither AnnData.*weights"):
        read_anndata_like(path)


def test_wrong_shapes_are_reported(tmp_path):
    path = tmp_path / "bad.h5ad"
    GEN.write_tiny_h5ad(path)
    with h5py.File(path, "a") as f:
        del f["obsm/spatial"]
        f["obsm"].create_dataset("spatial", data=np.zeros((5, 2)))
    with pytest.raises(FileFormatError, match=r"bad.h5ad: obsm/spatial has shape \(5, 2\)"):
        read_h5ad(path)


def test_corrupt_sparse_is_reported(tmp_path):
    path = tmp_path / "bad_sparse.h5ad"
    GEN.write_tiny_h5ad(path)
    with h5py.File(path, "a") as f:
        indptr = f["X/indptr"][()]
        del f["X/indptr"]
        f["X"].create_dataset("indptr", data=indptr[:-2])
    with pytest.raises(FileFormatError, match=r"bad_sparse.h5ad: X .*indptr has 11 entries"):
        read_h5ad(path)
