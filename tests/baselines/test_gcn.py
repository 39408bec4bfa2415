import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

from jaxfm.baselines.gcn import gcn_norm, gcn_propagate
from jaxfm.data.graph_dataset import NodeDataset, Split
from jaxfm.train import node_baselines
from jaxfm.train.node_baselines import BaselineConfig, _features, train_node_baseline
from jaxfm.train.trainer import read_metrics


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


def _two_cliques(num_splits=1):
    """Two cliques; features are pure noise except on a few nodes -> the graph is needed."""
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
    splits = []
    for k in range(num_splits):
        train = np.roll(np.arange(n) % 5 == 0, k)
        rest = ~train
        parity = (np.arange(n) + k) % 2
        splits.append(Split(train=train, val=rest & (parity == 0), test=rest & (parity == 1)))
    return NodeDataset(
        name="two_cliques",
        senders=s,
        receivers=r,
        num_nodes=n,
        x=x,
        y=y,
        num_classes=2,
        splits=tuple(splits),
    )


def test_gcn_beats_mlp_when_only_neighbours_carry_the_label():
    ds = _two_cliques()
    gcn = train_node_baseline(ds, BaselineConfig(model="gcn", epochs=60), progress=False)
    mlp = train_node_baseline(ds, BaselineConfig(model="mlp", epochs=60), progress=False)
    assert gcn["test_accuracy_mean"] > 0.9
    assert mlp["test_accuracy_mean"] < 0.75


def test_sparse_features_train_exactly_like_dense_ones(monkeypatch, tmp_path):
    """BCOO features (kept sparse past DENSE_LIMIT) ride in the step's batch like dense ones."""
    ds = _two_cliques()
    x = (np.random.default_rng(0).random((ds.num_nodes, 6)) < 0.4).astype(np.float32)
    ds = dataclasses.replace(ds, x=sp.csr_matrix(x))
    assert isinstance(_features(ds.x), jax.Array)  # small: densified
    cfg = BaselineConfig(model="gcn", epochs=12, dropout=0.0)  # dropout skips sparse inputs
    runs, logs = {}, {}
    for name, limit in (("dense", node_baselines.DENSE_LIMIT), ("sparse", 0)):
        monkeypatch.setattr(node_baselines, "DENSE_LIMIT", limit)
        wd = tmp_path / name
        runs[name] = train_node_baseline(
            ds, dataclasses.replace(cfg, workdir=str(wd)), progress=False
        )
        logs[name] = read_metrics(wd / "split_0")
    assert isinstance(_features(ds.x), jsparse.BCOO)
    assert runs["sparse"]["per_split"] == runs["dense"]["per_split"]
    dlog, slog = logs["dense"], logs["sparse"]
    assert [r["step"] for r in slog] == list(range(1, 13))
    np.testing.assert_allclose(
        [r["train_loss"] for r in slog], [r["train_loss"] for r in dlog], rtol=1e-5
    )


def test_interrupted_multi_split_run_resumes_to_the_uninterrupted_results(monkeypatch, tmp_path):
    ds = _two_cliques(num_splits=2)
    cfg = BaselineConfig(model="gcn", epochs=20, hidden=16)
    full = train_node_baseline(
        ds, dataclasses.replace(cfg, workdir=str(tmp_path / "full")), progress=False
    )
    cfg = dataclasses.replace(cfg, workdir=str(tmp_path / "run"))

    # Crash at epoch 7 of split 1 (its last checkpoint: epoch 6; checkpoints every 2 epochs).
    make_step = node_baselines.make_train_step
    calls = {"n": 0}

    def crashing(*args, **kw):
        step = make_step(*args, **kw)

        def run(state, batch, rng):
            calls["n"] += 1
            if calls["n"] == cfg.epochs + 8:
                raise KeyboardInterrupt("killed")
            return step(state, batch, rng)

        return run

    monkeypatch.setattr(node_baselines, "make_train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_node_baseline(ds, cfg, progress=False)
    monkeypatch.setattr(node_baselines, "make_train_step", make_step)
    split0 = tmp_path / "run" / "split_0"
    assert (split0 / "result.json").exists() and not (
        split0.parent / "split_1/result.json"
    ).exists()
    log0 = (split0 / "metrics.jsonl").read_bytes()
    stamp0 = (split0 / "metrics.jsonl").stat().st_mtime_ns

    with pytest.raises(ValueError, match="resume"):  # no silent restart over a crashed run
        train_node_baseline(ds, cfg, progress=False)
    resumed = train_node_baseline(ds, cfg, resume=True, progress=False)
    assert resumed == full  # exactly, split by split
    assert (split0 / "metrics.jsonl").read_bytes() == log0  # split 0 was not retrained
    assert (split0 / "metrics.jsonl").stat().st_mtime_ns == stamp0
    assert read_metrics(split0.parent / "split_1") == read_metrics(tmp_path / "full" / "split_1")
