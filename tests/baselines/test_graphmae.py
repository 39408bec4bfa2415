"""GraphMAE: exact SCE loss, masking, loss decrease, and a linear probe above chance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.baselines.graphmae import GraphMAE, sample_node_mask, sce_loss
from jaxfm.data.graph_dataset import NodeDataset, Split
from jaxfm.train.graphmae import linear_probe, pretrain_graphmae
from jaxfm.train.node_baselines import BaselineConfig, train_node_baseline
from jaxfm.train.trainer import read_metrics


def test_sce_loss_exact_small_case():
    pred = jnp.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [5.0, 5.0]])
    target = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    mask = jnp.array([True, True, True, False])
    # cosines 1, 1/sqrt(2), 0 (the 4th node is not masked and does not count)
    expect = (0.0 + (1 - 1 / np.sqrt(2)) ** 2 + 1.0) / 3
    np.testing.assert_allclose(sce_loss(pred, target, mask, gamma=2.0), expect, rtol=1e-6)
    np.testing.assert_allclose(
        sce_loss(pred, target, mask, gamma=1.0), (1 - 1 / np.sqrt(2) + 1) / 3, rtol=1e-6
    )
    # a zero prediction row gives a finite gradient
    g = jax.grad(lambda p: sce_loss(p, target, mask))(jnp.zeros_like(pred))
    assert np.all(np.isfinite(g))


def test_sample_node_mask_picks_the_rate_among_valid_nodes_only():
    valid = jnp.arange(20) < 14
    m = sample_node_mask(jax.random.key(0), 20, 0.5, valid)
    assert int(m.sum()) == 7 and not bool(jnp.any(m & ~valid))
    m2 = sample_node_mask(jax.random.key(1), 20, 0.5, valid)
    assert not bool(jnp.all(m == m2))  # random


def _labelled_graph(n=90, classes=3, f=12, seed=0):
    """Features carry the label (class centroid + noise); a homophilous random graph."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centroids = rng.normal(size=(classes, f)) * 2
    x = (centroids[y] + rng.normal(size=(n, f))).astype(np.float32)
    s, r = [], []
    for i in range(n):
        for j in rng.choice(np.flatnonzero(y == y[i]), 3):
            s.append(i)
            r.append(j)
    return x, np.array(s, np.int32), np.array(r, np.int32), y


def test_pretraining_loss_decreases_on_a_tiny_graph():
    x, s, r, _ = _labelled_graph()
    model = GraphMAE(x.shape[1], hidden=16, heads=2)
    _, losses = pretrain_graphmae(
        model, jnp.asarray(x), jnp.asarray(s), jnp.asarray(r), epochs=80, learning_rate=5e-3
    )
    assert np.all(np.isfinite(losses))
    assert losses[-10:].mean() < 0.8 * losses[:10].mean()


def test_pretraining_in_a_workdir_is_the_same_run_and_a_finished_one_resumes_as_is(tmp_path):
    x, s, r, _ = _labelled_graph(n=30)
    model = GraphMAE(x.shape[1], hidden=8, heads=2)
    args = (model, jnp.asarray(x), jnp.asarray(s), jnp.asarray(r))
    plain, plain_losses = pretrain_graphmae(*args, epochs=6, seed=3)
    wd = tmp_path / "pretrain"
    params, losses = pretrain_graphmae(*args, epochs=6, seed=3, workdir=wd)
    again, again_losses = pretrain_graphmae(*args, epochs=6, seed=3, workdir=wd, resume=True)
    assert losses.shape == (6,) and np.array_equal(losses, plain_losses)
    assert np.array_equal(again_losses, losses)  # the whole run's losses, from metrics.jsonl
    for a, b, c in zip(*(jax.tree.leaves(p) for p in (plain, params, again)), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, c)


def test_linear_probe_separable_embeddings_selects_the_first_best_epoch(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    emb = np.eye(3)[y] * 3 + rng.normal(size=(60, 3)) * 0.1
    masks = np.stack(
        [np.arange(60) < 30, (np.arange(60) >= 30) & (np.arange(60) < 45), np.arange(60) >= 45]
    )
    res = linear_probe(emb, y, masks, 3, epochs=100, workdir=tmp_path)
    assert res["test_accuracy"] == 1.0 and res["val_accuracy"] == 1.0
    val = [rec["val_accuracy"] for rec in read_metrics(tmp_path)]
    assert len(val) == 100
    # Select's rule: the best validation accuracy, ties kept at the earlier epoch.
    assert res["best_epoch"] == int(np.argmax(val)) and res["val_accuracy"] == max(val)


def test_graphmae_probe_beats_chance_through_train_node_baseline():
    x, s, r, y = _labelled_graph()
    n = len(y)
    idx = np.arange(n)
    # Stratified: every split holds every class (y = idx % 3, so idx % 3 would put one class in
    # each split, and the probe could only pass by luck of the initialisation).
    part = (idx // 3) % 3
    split = Split(train=part == 0, val=part == 1, test=part == 2)
    ds = NodeDataset(
        name="tiny", senders=s, receivers=r, num_nodes=n, x=x, y=y, num_classes=3, splits=(split,)
    )
    cfg = BaselineConfig(
        model="graphmae", epochs=100, graphmae_epochs=40, graphmae_hidden=16, heads=2
    )
    res = train_node_baseline(ds, cfg, progress=False)
    assert res["model"] == "graphmae"
    assert res["test_accuracy_mean"] > 0.6  # chance is 1/3


def test_graphmae_rejects_bad_settings():
    with pytest.raises(ValueError, match="mask_rate"):
        GraphMAE(4, mask_rate=1.0)
    with pytest.raises(ValueError, match="gamma"):
        GraphMAE(4, gamma=0.5)
