"""Graph classification with k-fold cross-validation: GNN baselines and GraphFM-MFT.

Both learners see the same folds (:func:`stratified_folds`: fold ``k`` tests on part ``k``,
selects the epoch on part ``k + 1`` and trains on the other ``k - 2`` parts) and the same node
features: columns that are not 0/1 indicators (PROTEINS' node attribute) are z-scored with the
statistics of the fold's training graphs, so one-hot node labels keep their meaning for sum
aggregation. Test accuracy is read at the epoch of best validation accuracy (ties: lower
validation loss, then the earlier epoch) and reported per fold and as mean ± std (population std,
as in the GIN paper's tables).

- **Baselines** (:func:`train_graph_baseline`): an embedding layer, ``depth`` message-passing
  layers from :mod:`jaxfm.baselines` (GIN, GCN, GraphSAGE), sum or mean pooling of every layer's
  node states (the GIN paper's readout, Xu et al. 2019 eq. 4.2, concatenated over layers) and a
  two-layer MLP head. Batches are disjoint unions (:mod:`jaxfm.graph.batching`: concatenated
  nodes, offset edges, one padding graph owning every padding node and edge) padded to a short
  ladder of static budgets, so ``jit`` compiles at most a few programs per run.
- **GraphFM-MFT** (:func:`finetune_graphfm_graph`, GraphFM appendix D.4): a pretrained GraphFM
  (``jaxfm pretrain``'s model directory) gets the graph decoder (a learned query cross-attending
  to each graph's latents) and a graph head; the new per-dataset feature MLP, the graph decoder
  and the graph head are trained while the SignNet, the Perceiver encoder and the node decoder
  stay frozen (parameter-path rules, :data:`GRAPH_MFT_RULES`). Graphs are packed whole, several
  per :class:`~jaxfm.graphfm.batch.PackedBatch`, by :func:`~jaxfm.data.packing.pack_bucket`, with
  features and Laplacian PEs prepared by :func:`~jaxfm.data.corpus.build_corpus` exactly as in
  pretraining.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxfm.data.graph_dataset import GraphClassificationDataset
from jaxfm.graph.batching import (
    Budget,
    choose_budget,
    edge_mask,
    graph_mask,
    make_budgets,
    node_mask,
    pad_to_budget,
)

__all__ = [
    "BASELINE_KINDS",
    "GRAPH_MFT_RULES",
    "Fold",
    "GraphClassifier",
    "finetune_graphfm_graph",
    "stratified_folds",
    "train_graph_baseline",
]

#: Message-passing layers the baseline can stack (``jaxfm.baselines`` layer classes).
BASELINE_KINDS = ("gin", "gcn", "sage")
#: Parameters trained by graph-level MFT: the new feature MLP and heads, plus the graph decoder.
GRAPH_MFT_RULES = ("^tokenizer/feature_mlp/", "^heads/", "^graph_heads/", "^graph_decoder/")


class Fold(NamedTuple):
    """Graph indices of one cross-validation fold (pairwise disjoint, together every graph)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def stratified_folds(labels, k: int = 10, seed: int = 0) -> list[Fold]:
    """``k`` seeded class-stratified folds: fold ``i`` tests on part ``i``, validates on part
    ``i + 1 (mod k)`` and trains on the remaining ``k - 2`` parts.

    The parts are those of :func:`jaxfm.data.graph_formats_text.stratified_folds` (the folds a TU
    dataset is loaded with), so ``stratified_folds(ds.y)`` equals ``ds.folds`` at seed 0.

    Args:
      labels: ``[num_graphs]`` int class of each graph.
      k: number of folds (>= 3: train, val and test parts must be distinct).
      seed: shuffles the members of each class before they are dealt round-robin into parts.

    Returns:
      ``k`` :class:`Fold` s of sorted ``int64`` graph indices; every graph is in exactly one test
      part, and each part holds ``floor`` or ``ceil`` of ``count / k`` graphs of every class.

    Raises:
      ValueError: ``k < 3`` or fewer graphs than folds.

    >>> [f.test.tolist() for f in stratified_folds([0, 0, 0, 1, 1, 1], k=3)]
    [[2, 5], [0, 4], [1, 3]]
    """
    from jaxfm.data.graph_formats_text import stratified_folds as _parts

    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"stratified_folds: labels must be 1-D, got shape {y.shape}")
    if k < 3 or y.size < k:
        raise ValueError(f"stratified_folds: need 3 <= k <= num_graphs={y.size}, got k={k}")
    return [_fold_of(s) for s in _parts(y, k, seed)]


def _fold_of(split) -> Fold:
    return Fold(*(np.flatnonzero(np.asarray(m)) for m in (split.train, split.val, split.test)))


def _folds_for(ds: GraphClassificationDataset, folds) -> list[tuple[int, Fold]]:
    """``(index, fold)`` pairs: ``folds`` may be None (all of ``ds.folds``, else 10 seeded ones),
    a list of fold indices, or a list of :class:`Fold` s."""
    base = [_fold_of(s) for s in ds.folds] or stratified_folds(ds.y)
    if folds is None:
        return list(enumerate(base))
    out = []
    for i, f in enumerate(folds):
        if isinstance(f, Fold | tuple):
            out.append((i, Fold(*(np.asarray(a, np.int64) for a in f))))
        elif not 0 <= int(f) < len(base):
            raise ValueError(f"folds: {ds.name} has {len(base)} folds, index {f} is invalid")
        else:
            out.append((int(f), base[int(f)]))
    return out


def _scaler(ds: GraphClassificationDataset, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(shift, scale)`` per feature column: z-score (training graphs' nodes) for columns that
    are not 0/1 indicators, identity for indicator columns."""
    x = np.concatenate([np.asarray(ds.graphs[i].x, np.float64) for i in train], axis=0)
    binary = np.all((x == 0) | (x == 1), axis=0)
    shift = np.where(binary, 0.0, x.mean(0))
    scale = np.where(binary, 1.0, np.maximum(x.std(0), 1e-6))
    return shift.astype(np.float32), scale.astype(np.float32)


def _select(records: list[dict]) -> dict:
    """The epoch of best validation accuracy (ties: lower validation loss, then earlier)."""
    return max(records, key=lambda r: (r["val_accuracy"], -r["val_loss"], -r["epoch"]))


def _fold_result(fold: int, records: list[dict]) -> dict:
    """One fold's row: the validation/test metrics at the selected epoch (:func:`_select`)."""
    best = _select(records)
    return {
        "fold": fold,
        "val_accuracy": float(best["val_accuracy"]),
        "val_loss": float(best["val_loss"]),
        "test_accuracy": float(best["test_accuracy"]),
        "best_epoch": best["epoch"],
    }


def _summary(per_fold: list[dict], **meta) -> dict:
    tests = np.array([r["test_accuracy"] for r in per_fold])
    return {
        **meta,
        "per_fold": per_fold,
        "test_accuracy_mean": float(tests.mean()),
        "test_accuracy_std": float(tests.std()),
    }


def _chunks(ids: np.ndarray, sizes: np.ndarray, max_graphs: int, fits: Callable) -> Iterator:
    """Greedy consecutive chunks of ``ids``: at most ``max_graphs`` graphs that ``fits``."""
    start = 0
    while start < ids.size:
        stop = start + 1
        while stop < ids.size and stop - start < max_graphs and fits(ids[start : stop + 1]):
            stop += 1
        yield ids[start:stop]
        start = stop


# ---------------------------------------------------------------------------------------------
# Baselines: disjoint-union batches of message-passing GNNs.


def _layer_class(kind: str):
    if kind == "gin":
        from jaxfm.baselines.gin import GINLayer

        return GINLayer
    if kind == "gcn":
        from jaxfm.baselines.gcn import GCNLayer

        return GCNLayer
    if kind == "sage":
        from jaxfm.baselines.sage import SAGELayer

        return SAGELayer
    raise ValueError(f"kind must be one of {BASELINE_KINDS}, got {kind!r}")


class GraphClassifier(nn.Module):
    """Message-passing GNN + per-layer pooling readout + MLP head (graph logits).

    Attributes:
      kind: message-passing layer, one of :data:`BASELINE_KINDS`.
      num_classes: C.
      hidden: width of every layer.
      depth: message-passing layers.
      dropout: dropout rate before the head's hidden and output layers.
      readout: ``"sum"`` or ``"mean"`` pooling of the real nodes of each graph.

    Shapes:
      graph: a padded ``jraph.GraphsTuple`` (:func:`jaxfm.graph.batching.pad_to_budget`) with
      ``nodes [N, F]`` float, ``senders/receivers [E]``, ``n_node/n_edge [G]`` -> logits
      ``[G, C]`` float32 (rows of padding graphs are computed but meaningless; mask them).
    """

    kind: str = "gin"
    num_classes: int = 2
    hidden: int = 64
    depth: int = 4
    dropout: float = 0.5
    readout: str = "sum"

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, *, deterministic: bool = True) -> jax.Array:
        if self.readout not in ("sum", "mean"):
            raise ValueError(f"GraphClassifier.readout must be 'sum' or 'mean', not {self.readout}")
        layer = _layer_class(self.kind)
        x = jnp.asarray(graph.nodes, jnp.float32)
        n, g = x.shape[0], graph.n_node.shape[0]
        nmask, emask = node_mask(graph), edge_mask(graph)
        seg = jnp.repeat(jnp.arange(g), graph.n_node, total_repeat_length=n)  # [N] graph id
        count = jax.ops.segment_sum(nmask.astype(jnp.float32), seg, num_segments=g)  # [G]

        def pool(h):  # [N, H] -> [G, H]
            s = jax.ops.segment_sum(jnp.where(nmask[:, None], h, 0.0), seg, num_segments=g)
            return s / jnp.maximum(count, 1.0)[:, None] if self.readout == "mean" else s

        h = nn.relu(nn.Dense(self.hidden, name="embed")(x))
        pooled = [pool(h)]
        for i in range(self.depth):
            h = layer(features=self.hidden, name=f"layer_{i}")(
                h, graph.senders, graph.receivers, edge_mask=emask, node_mask=nmask,
                deterministic=deterministic,
            )  # fmt: skip
            h = nn.relu(h)
            pooled.append(pool(h))
        z = jnp.concatenate(pooled, axis=-1)  # [G, (depth + 1) H]
        z = nn.Dropout(self.dropout)(z, deterministic=deterministic)
        z = nn.relu(nn.Dense(self.hidden, name="head_0")(z))
        z = nn.Dropout(self.dropout)(z, deterministic=deterministic)
        return nn.Dense(self.num_classes, name="head_1")(z).astype(jnp.float32)


class _Union:
    """All graphs of a dataset, concatenated once; a batch is gathered by vectorised indexing.

    ``batch(ids, budget)`` returns the padded disjoint union of graphs ``ids`` (labels in
    ``globals``), exactly what :func:`~jaxfm.graph.batching.batch_graphs` +
    :func:`~jaxfm.graph.batching.pad_to_budget` make from per-graph ``GraphsTuple`` s.
    """

    def __init__(self, ds: GraphClassificationDataset, shift, scale):
        self.n_node = np.array([g.num_nodes for g in ds.graphs], np.int64)
        self.n_edge = np.array([g.senders.size for g in ds.graphs], np.int64)
        self.node_start = np.concatenate([[0], np.cumsum(self.n_node)])
        self.edge_start = np.concatenate([[0], np.cumsum(self.n_edge)])
        x = np.concatenate([np.asarray(g.x, np.float32) for g in ds.graphs], axis=0)
        self.x = (x - shift) / scale
        self.s = np.concatenate([np.asarray(g.senders, np.int64) for g in ds.graphs])  # local ids
        self.r = np.concatenate([np.asarray(g.receivers, np.int64) for g in ds.graphs])
        self.y = np.asarray(ds.y, np.int32)

    def sizes(self, ids) -> tuple[int, int, int]:
        return int(self.n_node[ids].sum()), int(self.n_edge[ids].sum()), len(ids)

    def batch(self, ids: np.ndarray, budget: Budget) -> jraph.GraphsTuple:
        nn_, ne = self.n_node[ids], self.n_edge[ids]
        new_node = np.concatenate([[0], np.cumsum(nn_)[:-1]])  # [g] offsets in the batch
        new_edge = np.concatenate([[0], np.cumsum(ne)[:-1]])
        rows = np.repeat(self.node_start[ids] - new_node, nn_) + np.arange(nn_.sum())
        erows = np.repeat(self.edge_start[ids] - new_edge, ne) + np.arange(ne.sum())
        shift = np.repeat(new_node, ne)  # local node id -> id in the batch
        graph = jraph.GraphsTuple(
            nodes=self.x[rows],
            edges=None,
            globals=self.y[ids],
            senders=(self.s[erows] + shift).astype(np.int32),
            receivers=(self.r[erows] + shift).astype(np.int32),
            n_node=nn_.astype(np.int32),
            n_edge=ne.astype(np.int32),
        )
        return pad_to_budget(graph, budget)


def _budgets(union: _Union, batch_size: int) -> tuple[Budget, ...]:
    """Three rungs; the largest holds ``batch_size`` graphs of 1.5x the mean size, or the
    largest graph alone."""
    n = max(int(1.5 * union.n_node.mean() * batch_size), int(union.n_node.max())) + 1
    e = max(int(1.5 * union.n_edge.mean() * batch_size), int(union.n_edge.max()))
    return make_budgets(n, max(e, 1), batch_size + 1, num=3)


def _batches(union: _Union, ids: np.ndarray, budgets, batch_size: int) -> Iterator:
    """Greedy consecutive batches of ``ids``, each padded to the smallest rung that fits."""
    top = budgets[-1]
    fits = lambda chunk: top.fits(*union.sizes(chunk))
    for chunk in _chunks(ids, union.n_node, batch_size, fits):
        sizes = jraph.GraphsTuple(
            nodes=None, edges=None, globals=None, senders=None, receivers=None,
            n_node=union.n_node[chunk], n_edge=union.n_edge[chunk],
        )  # fmt: skip
        yield union.batch(chunk, choose_budget(sizes, budgets))


def train_graph_baseline(
    ds: GraphClassificationDataset,
    kind: str = "gin",
    *,
    folds=None,
    epochs: int = 100,
    hidden: int = 64,
    depth: int = 4,
    dropout: float = 0.5,
    readout: str = "sum",
    batch_size: int = 32,
    learning_rate: float = 0.01,
    decay_every: int = 50,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Trains :class:`GraphClassifier` once per fold (Adam, lr halved every ``decay_every``
    epochs, as in the GIN paper) and reports test accuracy at the best validation epoch.

    Args:
      ds: the graph-classification set.
      kind: message-passing layer (:data:`BASELINE_KINDS`).
      folds: None (the dataset's folds), fold indices, or explicit :class:`Fold` s.
      epochs: passes over each fold's training graphs.
      hidden, depth, dropout, readout: the model (:class:`GraphClassifier`).
      batch_size: graphs per step (fewer when a batch would exceed the node/edge budget).
      learning_rate, decay_every, weight_decay: the optimiser.
      seed: parameter init, dropout and batch order (per fold ``[seed, fold]``).
      progress: a tqdm bar per fold.

    Returns:
      ``{"model", "dataset", "epochs", "per_fold": [{"fold", "val_accuracy", "val_loss",
      "test_accuracy", "best_epoch"}], "test_accuracy_mean", "test_accuracy_std"}``.
    """
    if epochs < 1 or batch_size < 1 or decay_every < 1:
        raise ValueError("train_graph_baseline: epochs, batch_size and decay_every must be >= 1")
    _layer_class(kind)
    model = GraphClassifier(
        kind=kind, num_classes=ds.num_classes, hidden=hidden, depth=depth, dropout=dropout,
        readout=readout,
    )  # fmt: skip

    def loss_fn(params, graph, key):
        logits = model.apply(params, graph, deterministic=False, rngs={"dropout": key})
        gm = graph_mask(graph)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, graph.globals)
        return jnp.sum(jnp.where(gm, ce, 0.0)) / jnp.maximum(gm.sum(), 1)

    @jax.jit
    def evaluate(params, graph):
        logits = model.apply(params, graph)
        gm = graph_mask(graph)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, graph.globals)
        hit = (logits.argmax(-1) == graph.globals) & gm
        return hit.sum(), jnp.sum(jnp.where(gm, ce, 0.0))

    init = jax.jit(model.init)
    per_fold, steps = [], {}
    for fi, fold in _folds_for(ds, folds):
        union = _Union(ds, *_scaler(ds, fold.train))
        budgets = _budgets(union, batch_size)
        steps_per_epoch = -(-fold.train.size // batch_size)
        if steps_per_epoch not in steps:  # one compiled step per schedule
            tx = optax.adamw(
                optax.exponential_decay(
                    learning_rate, decay_every * steps_per_epoch, 0.5, staircase=True
                ),
                weight_decay=weight_decay,
            )
            steps[steps_per_epoch] = (jax.jit(tx.init), _make_step(loss_fn, tx))
        tx_init, step = steps[steps_per_epoch]
        evals = {k: list(_batches(union, getattr(fold, k), budgets, batch_size))
                 for k in ("val", "test")}  # fmt: skip
        rng = np.random.default_rng([seed, fi])
        key = jax.random.key(int(rng.integers(2**31)))
        key, init_key = jax.random.split(key)
        params = init(init_key, evals["val"][0])
        opt_state = tx_init(params)
        records = []
        for epoch in tqdm(range(epochs), desc=f"{kind} {ds.name} fold {fi}", disable=not progress,
                          file=sys.stderr, leave=False):  # fmt: skip
            for graph in _batches(union, rng.permutation(fold.train), budgets, batch_size):
                key, k = jax.random.split(key)
                params, opt_state, _ = step(params, opt_state, graph, k)
            rec = {"epoch": epoch}
            for name, batches in evals.items():
                hits, ce = np.sum([np.asarray(evaluate(params, b)) for b in batches], axis=0)
                size = getattr(fold, name).size
                rec[f"{name}_accuracy"], rec[f"{name}_loss"] = hits / size, ce / size
            records.append(rec)
        per_fold.append(_fold_result(fi, records))
    return _summary(per_fold, model=kind, dataset=ds.name, epochs=epochs)


def _make_step(loss_fn, tx):
    @jax.jit
    def step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


# ---------------------------------------------------------------------------------------------
# GraphFM: graph-level MFT of a pretrained model.


class _PackedGraphs:
    """The dataset's graphs as :class:`~jaxfm.data.packing.PackUnit` s (corpus features and
    Laplacian PEs, as in pretraining), packed whole, several per bucket, by ``pack_bucket``.

    The adapter the library lacks for graph-level finetuning: ``build_corpus`` labels only the
    training graphs of fold 0, so per fold the units get their own ``graph_label`` and scaled
    features here. Graphs fall into size classes (``caps``: the 95th-percentile size and the
    largest size, rounded up to 32): each class has its own packing budget and its own
    ``bucket_nodes`` S for the encoder's ``bucketed`` cross attention (cost O(G K S) instead of
    the segment layout's O(G K T)), so a few big graphs do not make every batch pay for them.
    """

    def __init__(self, ds, base, batch_graphs: int, seed: int):
        from jaxfm.data.corpus import Unit, build_corpus
        from jaxfm.data.packing import PackingBudget

        sizes = np.array([g.num_nodes for g in ds.graphs])
        up = lambda v, m: int(-(-int(v) // m) * m)
        self.caps = sorted({up(np.percentile(sizes, 95), 32), up(sizes.max(), 32)})
        self.cls = np.searchsorted(self.caps, sizes)  # size class of every graph
        self.budgets = []
        for c, cap in enumerate(self.caps):
            g = max(1, batch_graphs * self.caps[0] // cap)
            mean = sizes[self.cls == c].mean()
            rows = up(max(1.5 * mean * g, cap), 128)
            self.budgets.append(
                PackingBudget(nodes=rows, graphs=g, targets=1, neighbors=base.num_neighbors)
            )
        corpus = build_corpus(
            [ds], feature_dim=base.feature_dim, pe_dim=base.pe_dim,
            node_budget=self.budgets[-1].nodes, max_unit_nodes=int(sizes.max()), seed=seed,
        )  # fmt: skip
        self.spec = corpus.dataset_specs[0]
        self.units = [corpus.materialize(Unit(i, None, int(n))) for i, n in enumerate(sizes)]
        self.sizes = sizes
        self.base = base

    def fold_units(self, y: np.ndarray, train: np.ndarray, shift, scale) -> list:
        """Units with scaled features; only ``train`` graphs carry their label."""
        labelled = np.zeros(len(self.units), bool)
        labelled[train] = True
        return [
            dataclasses.replace(
                u, features=(u.features - shift) / scale,
                graph_label=int(y[i]) if labelled[i] else -1,
            )
            for i, u in enumerate(self.units)
        ]  # fmt: skip

    def batches(self, units: list, ids: np.ndarray, seed, rng=None) -> list:
        """``(size class, batch, graph ids in slot order)`` for greedy buckets of ``ids`` (kept
        in order inside each class; the batch order is shuffled when ``rng`` is given)."""
        from jaxfm.data.packing import pack_bucket

        ids = np.asarray(ids)
        out = []
        for c, budget in enumerate(self.budgets):
            mine = ids[self.cls[ids] == c]
            fits = lambda chunk, t=budget.nodes: self.sizes[chunk].sum() <= t
            for chunk in _chunks(mine, self.sizes, budget.graphs, fits):
                out.append((c, np.sort(chunk)))  # pack_bucket orders units by graph index
        if rng is not None:
            out = [out[i] for i in rng.permutation(len(out))]
        return [
            (c, pack_bucket(
                [units[i] for i in chunk], self.budgets[c], num_datasets=1,
                feature_dim=self.base.feature_dim, pe_dim=self.base.pe_dim, seed=[*seed, b],
                check=False,
            ), chunk)
            for b, (c, chunk) in enumerate(out)
        ]  # fmt: skip


def finetune_graphfm_graph(
    model_dir,
    ds: GraphClassificationDataset,
    folds=None,
    epochs: int = 30,
    *,
    batch_graphs: int = 32,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
    progress: bool = False,
    return_params: bool = False,
) -> dict:
    """Graph-level MFT (GraphFM D.4) of a pretrained GraphFM on every chosen fold.

    Per fold: a fresh feature MLP, graph decoder (unless the checkpoint has one) and graph head;
    the pretrained SignNet, encoder and node decoder are copied in and frozen
    (:func:`~jaxfm.train.param_rules.masked_optimizer` over :data:`GRAPH_MFT_RULES`); AdamW at
    one fixed learning rate, graph cross-entropy (:func:`~jaxfm.graphfm.loss_and_metrics`).
    The encoder runs its ``bucketed`` cross-attention layout (one compiled step per size class).

    Args:
      model_dir: ``WORKDIR/model`` written by ``jaxfm pretrain``.
      ds: the graph-classification set (not in the pretraining corpus).
      folds: None (the dataset's folds), fold indices, or explicit :class:`Fold` s.
      epochs: passes over each fold's training graphs.
      batch_graphs: graph slots G per packed batch of the small-graph class (the big-graph
        class gets proportionally fewer).
      learning_rate, weight_decay: AdamW.
      seed: init of the new parameters, batch order.
      progress: a tqdm bar per fold.
      return_params: also return the last fold's final parameters under ``"params"``.

    Returns:
      ``{"model": "graphfm-mft", "dataset", "epochs", "checkpoint", "fresh_params",
      "per_fold": [...], "test_accuracy_mean", "test_accuracy_std"}`` (as
      :func:`train_graph_baseline`; ``fresh_params`` lists the parameter groups not taken from
      the checkpoint).

    Raises:
      ValueError: the checkpoint is not a GraphFM model directory or does not fit (shapes), or
        ``ds`` was in its pretraining corpus.
    """
    from jaxfm.graphfm import GraphFM, loss_and_metrics
    from jaxfm.train import param_rules
    from jaxfm.train.graphfm_finetune import load_pretrained_graphfm, transplant_pretrained

    if epochs < 1 or batch_graphs < 1:
        raise ValueError("finetune_graphfm_graph: epochs and batch_graphs must be >= 1")
    base, pretrained = load_pretrained_graphfm(model_dir)
    if any(s.name == ds.name for s in base.datasets):
        raise ValueError(f"{ds.name} was in the pretraining corpus of {model_dir}")
    packed = _PackedGraphs(ds, base, batch_graphs, seed)
    cfg = dataclasses.replace(base, graph_decoder=True, datasets=(packed.spec,))
    models = [
        GraphFM(dataclasses.replace(cfg, attention="bucketed", bucket_nodes=cap))
        for cap in packed.caps
    ]  # one parameter tree; only the static attention layout differs
    y = np.asarray(ds.y)

    def loss_fn(model):
        def fn(params, batch, key):
            out = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": key})
            return loss_and_metrics(out, batch, cfg)[0]

        return fn

    logits_fns = [
        jax.jit(lambda p, b, m=m: m.apply({"params": p}, b)["graph_logits"]) for m in models
    ]
    init = jax.jit(lambda k, b: models[-1].init(k, b)["params"])
    per_fold, fresh, steps = [], [], None
    for fi, fold in _folds_for(ds, folds):
        units = packed.fold_units(y, fold.train, *_scaler(ds, fold.train))
        evals = {k: packed.batches(units, getattr(fold, k), [seed, 1]) for k in ("val", "test")}
        rng = np.random.default_rng([seed, fi])
        key = jax.random.key(int(rng.integers(2**31)))
        key, init_key = jax.random.split(key)
        params, fresh = transplant_pretrained(
            init(init_key, evals["val"][0][1]),
            pretrained,
            str(model_dir),
            fresh_if_absent=("graph_decoder/",),
        )
        if steps is None:  # one optimiser and one compiled step per size class, for every fold
            tx = param_rules.masked_optimizer(
                optax.adamw(learning_rate, weight_decay=weight_decay), params, GRAPH_MFT_RULES
            )
            steps, tx_init = [_make_step(loss_fn(m), tx) for m in models], jax.jit(tx.init)
        opt_state = tx_init(params)
        records = []
        for epoch in tqdm(range(epochs), desc=f"graphfm {ds.name} fold {fi}",
                          disable=not progress, file=sys.stderr, leave=False):  # fmt: skip
            for c, batch, _ in packed.batches(units, fold.train, [seed, fi, epoch], rng):
                key, k = jax.random.split(key)
                params, opt_state, _ = steps[c](params, opt_state, batch, k)
            rec = {"epoch": epoch}
            for name, batches in evals.items():
                hits = ce = 0.0
                for c, batch, ids in batches:
                    logits = np.asarray(logits_fns[c](params, batch))[: ids.size]
                    hits += float((logits.argmax(-1) == y[ids]).sum())
                    ce += float(-_log_softmax(logits)[np.arange(ids.size), y[ids]].sum())
                size = getattr(fold, name).size
                rec[f"{name}_accuracy"], rec[f"{name}_loss"] = hits / size, ce / size
            records.append(rec)
        per_fold.append(_fold_result(fi, records))
    groups = sorted({"/".join(p.split("/")[:2]) for p in fresh})
    out = _summary(
        per_fold, model="graphfm-mft", dataset=ds.name, epochs=epochs,
        checkpoint=str(model_dir), fresh_params=groups,
    )  # fmt: skip
    if return_params:
        out["params"] = params
    return out


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
