import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from jaxfm.baselines.gcn import GCN, gcn_norm, gcn_propagate
from jaxfm.data.graph_dataset import NodeDataset, Split
from jaxfm.train.node_baselines import BaselineConfig, train_node_baseline


def test_one_gcn_propagation_on_a_path_matches_hand_computation():
    # Path 0 - 1 - 2 with self loops: degrees 2, 3, 2.
    s, r, w = gcn_norm(np.array([0, 1]), np.array([1, 2]), 3)
    h = jnp.array([[1.0], [2.0], [4.0]])
    out = gcn_propagate(h, jnp.asarray(s), jnp.asarray(r), jnp.asarray(w), 3)
    a = 1 / np.sqrt(6)
    expect = [[1 / 2 + 2 * a], [1 * a + 2 / 3 + 4 * a], [2 * a + 4 / 2]]
    np.testing.assert_allclose(out, expect, rtol=1e-6)


def test_duplicate_and_reverse_edges_are_counted_once():
    s1, r1, w1 = gcn_norm(np.array([0, 1, 0]), np.array([1, 0, 1]), 2)
    s2, r2, w2 = gcn_norm(np.array([0]), np.array([1]), 2)
    assert sorted(zip(s1, r1, w1, strict=True)) == sorted(zip(s2, r2, w2, strict=True))


def test_sparse_and_dense_features_give_the_same_gcn_output(monkeypatch):
    rng = np.random.default_rng(0)
    x = (rng.random((6, 5)) < 0.4).astype(np.float32)
    s, r, w = (jnp.asarray(a) for a in gcn_norm(np.arange(5), np.arange(1, 6), 6))
    from jaxfm.train import node_baselines
    from jaxfm.train.node_baselines import _features

    assert isinstance(_features(sp.csr_matrix(x)), jax.Array)  # small: densified
    monkeypatch.setattr(node_baselines, "DENSE_LIMIT", 0)  # large ones stay sparse (BCOO)

    model = GCN(hidden=4, num_classes=3)
    xs = _features(sp.csr_matrix(x))
    params = model.init(jax.random.key(0), xs, s, r, w)
    flat = {
        "params": {
            "layer_0": {
                "kernel": params["params"]["layer_0_kernel"],
                "bias": params["params"]["layer_0_bias"],
            },
            "layer_1": params["params"]["layer_1"],
        }
    }
    np.testing.assert_allclose(
        model.apply(params, xs, s, r, w), model.apply(flat, jnp.asarray(x), s, r, w), atol=1e-6
    )


def test_gcn_beats_mlp_when_only_neighbours_carry_the_label():
    # Two cliques; features are pure noise except on a few nodes -> the graph is needed.
    rng = np.random.default_rng(1)
    n = 60
    y = np.repeat([0, 1], n // 2)
    edges = [
        (i, j)
        for c in (0, 1)
        for i in range(c * 30, c * 30 + 30)
        for j in range(i + 1, c * 30 + 30)
        if rng.random() < 0.3
    ]
    s, r = np.array(edges).T
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[::5, 0] += np.where(y[::5] == 0, -4, 4)
    train = np.zeros(n, bool)
    train[::5] = True
    rest = ~train
    split = Split(
        train=train, val=rest & (np.arange(n) % 2 == 0), test=rest & (np.arange(n) % 2 == 1)
    )
    ds = NodeDataset(
        name="two_cliques",
        senders=s,
        receivers=r,
        num_nodes=n,
        x=x,
        y=y,
        num_classes=2,
        splits=(split,),
    )
    gcn = train_node_baseline(ds, BaselineConfig(model="gcn", epochs=60), progress=False)
    mlp = train_node_baseline(ds, BaselineConfig(model="mlp", epochs=60), progress=False)
    assert gcn["test_accuracy_mean"] > 0.9
    assert mlp["test_accuracy_mean"] < 0.75
