"""Synthetic FIMP datasets: shapes, determinism, and that the graph carries signal."""

import numpy as np
import pytest

from jaxfm.data import (
    SpatialDataset,
    fmri_patches,
    sample_expressed_genes,
    split_nodes,
    synthetic_fmri,
    synthetic_images,
    synthetic_spatial,
)


def _same(a, b):
    for field in ("expression", "coords", "labels"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert (a.adjacency != b.adjacency).nnz == 0


def test_synthetic_spatial_shapes_and_determinism():
    ds = synthetic_spatial(num_cells=300, num_genes=24, num_types=4, seed=3)
    assert isinstance(ds, SpatialDataset)
    assert ds.expression.shape == (300, 24) and ds.expression.dtype == np.float32
    assert ds.coords.shape == (300, 2) and ds.labels.shape == (300,)
    assert ds.num_classes == 4 and set(np.unique(ds.labels)) == set(range(4))
    assert ds.adjacency.nnz == 300 * 6
    assert (ds.expression > 0).any(axis=1).all()  # gene sampling never meets an empty cell
    sample_expressed_genes(ds.expression, 8, rng=0)
    _same(ds, synthetic_spatial(num_cells=300, num_genes=24, num_types=4, seed=3))
    assert not np.array_equal(ds.expression, synthetic_spatial(300, 24, 4, seed=4).expression)


def _ridge_accuracy(x, y, train, test, num_classes):
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    z = np.c_[(x - mu) / sd, np.ones(len(x))]
    targets = np.eye(num_classes)[y[train]]
    w = np.linalg.solve(z[train].T @ z[train] + np.eye(z.shape[1]), z[train].T @ targets)
    return float(((z[test] @ w).argmax(1) == y[test]).mean())


def test_synthetic_spatial_graph_beats_own_expression():
    """A rough proxy of "GNN beats MLP": neighbourhood features classify cell types better."""
    ds = synthetic_spatial(seed=0)  # the README default: 1200 cells, 40 genes, 5 types
    y, adj, t = ds.labels, ds.adjacency, ds.num_classes
    train, _, test = split_nodes(ds.num_cells, seed=0)
    own = _ridge_accuracy(ds.expression, y, train, test, t)
    neighbour_mean = (adj @ ds.expression) / np.asarray(adj.sum(1))
    with_graph = _ridge_accuracy(np.c_[ds.expression, neighbour_mean], y, train, test, t)
    majority = np.array([np.bincount(y[adj[i].indices], minlength=t).argmax() for i in test])
    knn_majority = float((majority == y[test]).mean())
    assert 1.0 / t + 0.2 < own < 0.75  # informative, but ambiguous on its own
    assert knn_majority > own + 0.05
    assert with_graph > own + 0.08


def test_synthetic_images_shapes_determinism_and_clustering():
    data = synthetic_images(num_nodes=400, image_size=8, channels=3, num_classes=4, seed=1)
    assert data.images.shape == (400, 8, 8, 3) and data.images.dtype == np.float32
    assert data.coords.shape == (400, 2) and data.labels.dtype == np.int32
    lat, lon = data.coords[:, 0], data.coords[:, 1]
    assert np.all(np.abs(lat) <= 90) and np.all(np.abs(lon) <= 180)
    again = synthetic_images(num_nodes=400, image_size=8, channels=3, num_classes=4, seed=1)
    np.testing.assert_array_equal(data.images, again.images)
    np.testing.assert_array_equal(data.labels, again.labels)
    adj = data.adjacency
    same_class = (data.labels[adj.nonzero()[0]] == data.labels[adj.nonzero()[1]]).mean()
    assert same_class > 0.6  # spatially clustered classes (chance is ~0.25-0.35)
    # images are noisy copies of class prototypes: class means differ
    means = np.stack([data.images[data.labels == c].mean(0) for c in range(4)])
    assert np.abs(means[0] - means[1]).mean() > 0.01


def test_synthetic_fmri_smooth_and_spatially_correlated():
    rng = np.random.default_rng(0)
    coords = rng.uniform(-60, 60, (64, 3))
    x = synthetic_fmri(coords, num_recordings=3, num_timepoints=100, seed=2)
    assert x.shape == (3, 64, 100) and x.dtype == np.float32
    np.testing.assert_allclose(x.mean(-1), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(-1), 1, atol=1e-3)
    np.testing.assert_array_equal(x, synthetic_fmri(coords, 3, 100, seed=2))
    lag1 = (x[..., 1:] * x[..., :-1]).mean()
    assert lag1 > 0.6  # smooth in time
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(1)
    corr_near = (x * x[:, nearest]).mean()
    farthest = np.where(np.isinf(d), -1.0, d).argmax(1)
    corr_far = (x * x[:, farthest]).mean()
    assert corr_near > corr_far + 0.3  # spatially correlated
    assert fmri_patches(x[..., :100], 20).shape == (3, 64, 5, 20)
    with pytest.raises(ValueError, match="multiple of 20"):
        synthetic_fmri(coords, 1, num_timepoints=110)
