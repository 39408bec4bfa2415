"""Graph classification: stratified folds, disjoint-union batching, baselines, GraphFM-MFT."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxfm.baselines import GraphClassifier
from jaxfm.data import graph_batches as gb
from jaxfm.data.graph_dataset import GraphClassificationDataset, SmallGraph
from jaxfm.graph.batching import Budget, graph_mask
from jaxfm.params import flatten
from jaxfm.train import graph_classification as gc
from jaxfm.train import trainer


def _tree_or_2tree(n: int, two_tree: bool, rng) -> SmallGraph:
    """A random tree (no triangle) or a random 2-tree (n - 2 triangles) on n nodes."""
    edges = [(0, 1)]
    for v in range(2, n):
        if two_tree:
            a, b = edges[rng.integers(len(edges))]
            edges += [(a, v), (b, v)]
        else:
            edges.append((int(rng.integers(v)), v))
    e = np.array(edges)
    s = np.concatenate([e[:, 0], e[:, 1]]).astype(np.int32)
    r = np.concatenate([e[:, 1], e[:, 0]]).astype(np.int32)
    return SmallGraph(senders=s, receivers=r, num_nodes=n, x=np.ones((n, 1), np.float32))


def _triangle_set(num: int = 40, seed: int = 0) -> GraphClassificationDataset:
    rng = np.random.default_rng(seed)
    y = np.arange(num) % 2
    graphs = tuple(_tree_or_2tree(int(rng.integers(6, 14)), bool(c), rng) for c in y)
    return GraphClassificationDataset(
        name="triangles", graphs=graphs, y=y.astype(np.int32), num_classes=2
    )


def test_folds_are_stratified_disjoint_and_cover_every_graph():
    y = np.array([0] * 23 + [1] * 11 + [2] * 7)
    folds = gb.stratified_folds(y, k=5, seed=3)
    assert len(folds) == 5
    tests = np.concatenate([f.test for f in folds])
    np.testing.assert_array_equal(np.sort(tests), np.arange(y.size))  # each graph tested once
    for i, f in enumerate(folds):
        parts = np.concatenate([f.train, f.val, f.test])
        np.testing.assert_array_equal(np.sort(parts), np.arange(y.size))  # disjoint, complete
        np.testing.assert_array_equal(f.val, folds[(i + 1) % 5].test)  # val = next test part
        for c, total in zip(range(3), (23, 11, 7), strict=True):
            count = int((y[f.test] == c).sum())
            assert total // 5 <= count <= -(-total // 5)
    again = gb.stratified_folds(y, k=5, seed=3)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(folds, again, strict=True))
    with pytest.raises(ValueError, match="k"):
        gb.stratified_folds(y, k=2)


@pytest.mark.parametrize("kind", ["gin", "gcn"])
def test_padding_graphs_and_batch_mates_do_not_change_logits(kind):
    ds = _triangle_set(6, seed=1)
    union = gb.GraphUnion(ds, np.zeros(1, np.float32), np.ones(1, np.float32))
    model = GraphClassifier(kind=kind, hidden=8, depth=2, dropout=0.0)
    small = union.batch(np.array([0, 1, 2]), Budget(n_node=64, n_edge=160, n_graph=4))
    big = union.batch(np.array([0, 1, 2]), Budget(n_node=200, n_edge=400, n_graph=9))
    params = model.init(jax.random.key(0), small)
    apply = jax.jit(model.apply)  # one compile per budget instead of op-by-op dispatch
    a = np.asarray(apply(params, small))[:3]
    b = np.asarray(apply(params, big))[:3]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for slot, gid in enumerate([0, 1, 2]):  # each graph alone = inside the batch
        alone = union.batch(np.array([gid]), Budget(n_node=32, n_edge=64, n_graph=2))
        np.testing.assert_allclose(
            np.asarray(apply(params, alone))[0], a[slot], rtol=1e-5, atol=1e-5
        )
    # Sanity: the logits depend on the graph (a 2-tree is not a tree).
    assert not np.allclose(a[0], a[1])


def test_gin_baseline_learns_triangles_above_chance():
    ds = _triangle_set(70)
    fold = gb.Fold(train=np.arange(40), val=np.arange(40, 50), test=np.arange(50, 70))
    out = gc.train_graph_baseline(
        ds, "gin", folds=[fold], epochs=15, hidden=16, depth=2, dropout=0.0, batch_size=8
    )
    assert out["test_accuracy_mean"] >= 0.85  # 20 balanced test graphs: chance is 0.5


def test_union_batches_have_batch_size_graphs_whatever_the_order():
    """The budget ladder holds the ``batch_size`` largest graphs together, so an epoch always has
    ``ceil(n / batch_size)`` batches (the spine's fixed steps per epoch)."""
    rng = np.random.default_rng(0)
    sizes = [4] * 30 + [60, 70, 80, 90]  # a heavy tail: the 1.5x-mean rung cannot hold it
    graphs = tuple(_tree_or_2tree(n, False, rng) for n in sizes)
    ds = GraphClassificationDataset(
        name="tail", graphs=graphs, y=np.zeros(len(sizes), np.int32), num_classes=2
    )
    union = gb.GraphUnion(ds, np.zeros(1, np.float32), np.ones(1, np.float32))
    budgets = gb.union_budgets(union, 8)
    assert len(budgets) == 4  # the three-rung ladder plus the rung for the worst batch
    orders = [np.argsort(sizes)[::-1], *(rng.permutation(len(sizes)) for _ in range(3))]
    for order in orders:
        batches = list(gb.union_batches(union, order, budgets, 8))
        real = [int(graph_mask(b).sum()) for b in batches]
        assert real == [8, 8, 8, 8, 2]
        labels = np.concatenate([b.globals[:r] for b, r in zip(batches, real, strict=True)])
        assert labels.size == len(sizes)


def _same_size_set(num: int, n: int = 8) -> GraphClassificationDataset:
    """Trees and 2-trees of ``n`` nodes: every 4-graph batch pads to one budget (one compile)."""
    rng = np.random.default_rng(0)
    y = np.arange(num) % 2
    graphs = tuple(_tree_or_2tree(n, bool(c), rng) for c in y)
    return GraphClassificationDataset(
        name="same", graphs=graphs, y=y.astype(np.int32), num_classes=2
    )


def test_interrupted_multi_fold_run_resumes_to_the_uninterrupted_results(tmp_path, monkeypatch):
    ds = _same_size_set(24)
    folds = gb.stratified_folds(ds.y, k=3)  # 8 graphs each: 2 steps per epoch, 6 per fold
    kw = dict(folds=folds, epochs=3, hidden=8, depth=1, dropout=0.2, batch_size=4)
    reference = gc.train_graph_baseline(ds, "gin", **kw)
    assert not reference["preempted"] and len(reference["per_fold"]) == 3

    calls = []
    fit = trainer.fit

    def recording_fit(*args, **kwargs):
        result = fit(*args, **kwargs)
        calls.append((Path(kwargs["workdir"]).name, result.start_step, result.preempted))
        return result

    monkeypatch.setattr(gc, "fit", recording_fit)
    checks = iter(range(10**6))  # a SIGTERM during fold 1's step 3 (the 9th step of the run)
    with monkeypatch.context() as m:
        m.setattr(trainer.Preemption, "agreed", lambda self: next(checks) == 8)
        cut = gc.train_graph_baseline(ds, "gin", workdir=tmp_path, **kw)
    assert cut["preempted"] and cut["per_fold"] == reference["per_fold"][:1]
    assert calls == [("split_0", 0, False), ("split_1", 0, True)]
    assert (tmp_path / "split_0" / "result.json").exists()
    assert not (tmp_path / "split_1" / "result.json").exists()

    calls.clear()
    resumed = gc.train_graph_baseline(ds, "gin", workdir=tmp_path, resume=True, **kw)
    assert calls == [("split_1", 3, False), ("split_2", 0, False)]  # fold 0 is not redone
    assert not resumed["preempted"]
    assert resumed["per_fold"] == reference["per_fold"]
    assert resumed["test_accuracy_mean"] == reference["test_accuracy_mean"]
    epochs = [r["epoch"] for r in trainer.read_metrics(tmp_path / "split_1")]
    assert epochs == [0, 1, 2]  # the resumed fold's history, each epoch once
    done = json.loads((tmp_path / "split_0" / "result.json").read_text())
    assert done["test_accuracy"] == reference["per_fold"][0]["test_accuracy"]


def _tiny_model_dir(path):
    from jaxfm.data.packing import PackingBudget, PackUnit, pack_bucket
    from jaxfm.graphfm import GraphFM, GraphFMConfig
    from jaxfm.graphfm.config import DatasetSpec
    from jaxfm.model_dir import save_model_dir

    cfg = GraphFMConfig(
        dim=16, num_latents=4, encoder_depth=1, decoder_depth=1, cross_heads=2, self_heads=2,
        decoder_heads=2, pe_dim=4, pe_width=4, signnet_hidden=8, feature_dim=8, num_neighbors=2,
        datasets=(DatasetSpec(name="pre", num_features=3, num_classes=2),),
    )  # fmt: skip
    unit = PackUnit(
        dataset=0, graph=0, features=np.ones((3, 3), np.float32), pe=np.zeros((3, 4), np.float32),
        indptr=np.array([0, 1, 3, 4]), indices=np.array([1, 0, 2, 1]),
        labels=np.array([0, 1, 0]), train_mask=np.ones(3, bool),
    )  # fmt: skip
    batch = pack_bucket(
        [unit], PackingBudget(nodes=8, graphs=1, targets=2, neighbors=2), num_datasets=1,
        feature_dim=8, pe_dim=4,
    )  # fmt: skip
    params = GraphFM(cfg).init(jax.random.key(1), batch)["params"]
    save_model_dir(path, params, {"graphfm": cfg.to_dict()})
    return flatten(jax.tree.map(np.asarray, params))


@pytest.mark.slow  # ~40 s CPU: compiles a (tiny) GraphFM train step
def test_graphfm_graph_mft_trains_only_the_new_parts(tmp_path):
    pretrained = _tiny_model_dir(tmp_path / "model")
    ds = _triangle_set(24)
    kw = dict(folds=[0], epochs=2, batch_graphs=4, learning_rate=1e-2, return_params=True)
    out = gc.finetune_graphfm_graph(tmp_path / "model", ds, workdir=tmp_path / "run", **kw)
    assert "graph_decoder/query" in out["fresh_params"]  # the checkpoint had no graph decoder
    assert 0.0 <= out["per_fold"][0]["test_accuracy"] <= 1.0
    tuned = flatten(jax.tree.map(np.asarray, out["params"]))
    frozen = [p for p in pretrained if p.startswith(("encoder/", "tokenizer/signnet/"))]
    assert frozen
    for p in frozen:
        np.testing.assert_array_equal(tuned[p], pretrained[p], err_msg=p)
    # Trained: LayerNorm scale starts at 1 and the head bias at 0.
    assert not np.allclose(tuned["graph_decoder/norm/scale"], 1.0)
    assert not np.allclose(tuned["graph_heads/bias"], 0.0)
    # Resumed when finished: the fold is read back and its selected parameters restored.
    again = gc.finetune_graphfm_graph(
        tmp_path / "model", ds, workdir=tmp_path / "run", resume=True, **kw
    )
    assert again["per_fold"] == out["per_fold"]
    assert again["fresh_params"] == out["fresh_params"]
    restored = flatten(jax.tree.map(np.asarray, again["params"]))
    for p, v in tuned.items():
        np.testing.assert_array_equal(restored[p], v, err_msg=p)
    with pytest.raises(ValueError, match="epochs"):
        gc.finetune_graphfm_graph(tmp_path / "model", ds, folds=[0], epochs=0)
