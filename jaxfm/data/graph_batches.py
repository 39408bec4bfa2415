"""Graph-classification data: cross-validation folds, feature scaling and the two batchers.

- **Folds** (:func:`stratified_folds`, :func:`select_folds`): fold ``k`` tests on part ``k``,
  validates on part ``k + 1`` and trains on the other ``k - 2`` parts.
- **Features** (:func:`feature_scaler`): columns that are not 0/1 indicators (PROTEINS' node
  attribute) are z-scored with the statistics of the fold's training graphs, so one-hot node labels
  keep their meaning for sum aggregation.
- **Disjoint unions** (:class:`GraphUnion`, :func:`union_budgets`, :func:`union_batches`), for the
  message-passing baselines: concatenated nodes, offset edges, one padding graph owning every
  padding node and edge, padded to a short ladder of static budgets so ``jit`` compiles a few
  programs per run.
- **Packed graphs** (:class:`PackedGraphs`), for GraphFM: every graph a
  :class:`~jaxfm.data.packing.PackUnit` (corpus features and Laplacian PEs, as in pretraining),
  packed whole, several per :class:`~jaxfm.graph.packed.PackedBatch`, by
  :func:`~jaxfm.data.packing.pack_bucket`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import jraph
import numpy as np

from jaxfm.data.graph_dataset import GraphClassificationDataset
from jaxfm.graph.batching import Budget, choose_budget, make_budgets, pad_to_budget

__all__ = [
    "Fold",
    "GraphUnion",
    "PackedGraphs",
    "feature_scaler",
    "select_folds",
    "stratified_folds",
    "union_batches",
    "union_budgets",
]


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


def select_folds(ds: GraphClassificationDataset, folds=None) -> list[tuple[int, Fold]]:
    """``(index, fold)`` pairs of the folds a run trains on.

    Args:
      ds: the dataset; its own folds (``ds.folds``) are the base, else 10 seeded
        :func:`stratified_folds`.
      folds: None (every base fold), a list of base-fold indices, or a list of :class:`Fold` s
        (or ``(train, val, test)`` tuples; their index is their position in the list).

    Raises:
      ValueError: a fold index outside the base folds.
    """
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


def feature_scaler(
    ds: GraphClassificationDataset, train: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(shift, scale)`` per feature column: z-score over the ``train`` graphs' nodes for columns
    that are not 0/1 indicators, identity for indicator columns.

    Shapes:
      train: ``[num_train]`` graph indices -> shift, scale ``[F]`` float32; features are
      ``(x - shift) / scale``.
    """
    x = np.concatenate([np.asarray(ds.graphs[i].x, np.float64) for i in train], axis=0)
    binary = np.all((x == 0) | (x == 1), axis=0)
    shift = np.where(binary, 0.0, x.mean(0))
    scale = np.where(binary, 1.0, np.maximum(x.std(0), 1e-6))
    return shift.astype(np.float32), scale.astype(np.float32)


def _chunks(ids: np.ndarray, max_graphs: int, fits: Callable) -> Iterator[np.ndarray]:
    """Greedy consecutive chunks of ``ids``: at most ``max_graphs`` graphs that ``fits``."""
    start = 0
    while start < ids.size:
        stop = start + 1
        while stop < ids.size and stop - start < max_graphs and fits(ids[start : stop + 1]):
            stop += 1
        yield ids[start:stop]
        start = stop


# ---------------------------------------------------------------------------------------------
# Disjoint unions (message-passing baselines).


class GraphUnion:
    """All graphs of a dataset, concatenated once; a batch is gathered by vectorised indexing.

    ``batch(ids, budget)`` returns the padded disjoint union of graphs ``ids`` (labels in
    ``globals``), exactly what :func:`~jaxfm.graph.batching.batch_graphs` +
    :func:`~jaxfm.graph.batching.pad_to_budget` make from per-graph ``GraphsTuple`` s.

    Args:
      ds: the dataset.
      shift, scale: ``[F]`` feature scaling (:func:`feature_scaler`); nodes are
        ``(x - shift) / scale``.

    Shapes:
      batch(ids ``[g]``, budget) -> ``nodes [n_node, F]`` float32, ``senders/receivers [n_edge]``
      int32, ``n_node/n_edge [n_graph]`` int32, ``globals [n_graph]`` int32 labels (the padding
      graph's label is 0); ``n_node, n_edge, n_graph`` are the budget's.
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
        """Real ``(nodes, edges, graphs)`` of the union of graphs ``ids``."""
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


def union_budgets(union: GraphUnion, batch_size: int) -> tuple[Budget, ...]:
    """The budget ladder of ``batch_size``-graph unions: any ``batch_size`` graphs fit.

    Three rungs whose largest holds ``batch_size`` graphs of 1.5x the mean size (or the largest
    graph alone), plus, where that is not enough for the ``batch_size`` largest graphs together,
    one rung that is; so every epoch has exactly ``ceil(num_graphs / batch_size)`` batches
    whatever the order (:func:`union_batches`), and the common batches keep the small rungs.
    """
    n = max(int(1.5 * union.n_node.mean() * batch_size), int(union.n_node.max())) + 1
    e = max(int(1.5 * union.n_edge.mean() * batch_size), int(union.n_edge.max()))
    ladder = make_budgets(n, max(e, 1), batch_size + 1, num=3)
    k = min(batch_size, union.n_node.size)
    worst = (int(np.sort(union.n_node)[-k:].sum()), int(np.sort(union.n_edge)[-k:].sum()), k)
    if ladder[-1].fits(*worst):
        return ladder
    up = lambda v: -(-v // 8) * 8
    top = ladder[-1]
    rung = Budget(
        n_node=max(top.n_node, up(worst[0] + 1)),
        n_edge=max(top.n_edge, up(worst[1])),
        n_graph=batch_size + 1,
    )
    return (*ladder, rung)


def union_batches(
    union: GraphUnion, ids: np.ndarray, budgets: Sequence[Budget], batch_size: int
) -> Iterator[jraph.GraphsTuple]:
    """Consecutive ``batch_size``-graph batches of ``ids`` (the last may be smaller), each padded
    to the smallest rung of ``budgets`` (:func:`union_budgets`) that fits.

    Raises:
      ValueError: a batch fits no budget (``budgets`` not made for ``batch_size``).
    """
    ids = np.asarray(ids)
    for start in range(0, ids.size, batch_size):
        chunk = ids[start : start + batch_size]
        sizes = jraph.GraphsTuple(
            nodes=None, edges=None, globals=None, senders=None, receivers=None,
            n_node=union.n_node[chunk], n_edge=union.n_edge[chunk],
        )  # fmt: skip
        yield union.batch(chunk, choose_budget(sizes, budgets))


# ---------------------------------------------------------------------------------------------
# Packed graphs (GraphFM).


class PackedGraphs:
    """The dataset's graphs as :class:`~jaxfm.data.packing.PackUnit` s, packed whole.

    ``build_corpus`` labels only the training graphs of fold 0, so per fold the units get their
    own ``graph_label`` and scaled features here (:meth:`fold_units`). Graphs fall into size
    classes (``caps``: the 95th-percentile size and the largest size, rounded up to 32): each
    class has its own packing budget and its own ``bucket_nodes`` S for the encoder's
    ``bucketed`` cross attention (cost O(G K S) instead of the segment layout's O(G K T)), so a
    few big graphs do not make every batch pay for them.

    Args:
      ds: the dataset.
      feature_dim, pe_dim, num_neighbors: the model's F, k and m (its config's).
      batch_graphs: graph slots G of the small-graph class (the big-graph class gets
        proportionally fewer).
      seed: the corpus' seed (feature reduction, PEs).

    Shapes:
      a batch of class ``c`` has ``features [T_c, F]``, ``pe [T_c, k]``, graph fields ``[G_c]``
      (``budgets[c]``); its first ``len(chunk)`` graph slots are the chunk's graphs in order.
    """

    def __init__(
        self,
        ds: GraphClassificationDataset,
        *,
        feature_dim: int,
        pe_dim: int,
        num_neighbors: int,
        batch_graphs: int,
        seed: int,
    ):
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
                PackingBudget(nodes=rows, graphs=g, targets=1, neighbors=num_neighbors)
            )
        corpus = build_corpus(
            [ds], feature_dim=feature_dim, pe_dim=pe_dim, node_budget=self.budgets[-1].nodes,
            max_unit_nodes=int(sizes.max()), seed=seed,
        )  # fmt: skip
        self.spec = corpus.dataset_specs[0]
        self.units = [corpus.materialize(Unit(i, None, int(n))) for i, n in enumerate(sizes)]
        self.sizes = sizes
        self.feature_dim, self.pe_dim = feature_dim, pe_dim

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

    def plan(self, ids: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``(size class, sorted graph ids)`` of greedy buckets of ``ids`` (kept in order inside
        each class), the same for every epoch: an epoch only reorders them."""
        ids = np.asarray(ids)
        out = []
        for c, budget in enumerate(self.budgets):
            mine = ids[self.cls[ids] == c]
            fits = lambda chunk, t=budget.nodes: self.sizes[chunk].sum() <= t
            for chunk in _chunks(mine, budget.graphs, fits):
                out.append((c, np.sort(chunk)))  # pack_bucket orders units by graph index
        return out

    def pack(self, units: list, c: int, chunk: np.ndarray, seed: Sequence[int]):
        """One :class:`~jaxfm.graph.packed.PackedBatch` (numpy) of class ``c``'s budget."""
        from jaxfm.data.packing import pack_bucket

        return pack_bucket(
            [units[i] for i in chunk], self.budgets[c], num_datasets=1,
            feature_dim=self.feature_dim, pe_dim=self.pe_dim, seed=list(seed), check=False,
        )  # fmt: skip

    def batches(self, units: list, ids: np.ndarray, seed: Sequence[int]) -> list:
        """``(size class, batch, graph ids in slot order)`` for every bucket of :meth:`plan`."""
        return [
            (c, self.pack(units, c, chunk, [*seed, b]), chunk)
            for b, (c, chunk) in enumerate(self.plan(ids))
        ]

    def size_class(self, batch) -> int:
        """The size class whose budget has ``batch``'s static shapes (the largest such class,
        whose ``bucket_nodes`` holds the graphs of every class of those shapes)."""
        shape = (batch.features.shape[-2], batch.graph_mask.shape[-1])
        found = [c for c, b in enumerate(self.budgets) if (b.nodes, b.graphs) == shape]
        if not found:
            raise ValueError(f"PackedGraphs: no size class has batch shapes (T, G) = {shape}")
        return found[-1]
