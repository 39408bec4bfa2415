"""The GraphFM pretraining corpus: many graphs, one feature width, cached PEs, units per epoch.

:func:`build_corpus` turns loaded datasets (:class:`~jaxfm.data.graph_dataset.NodeDataset` s, and
optionally :class:`~jaxfm.data.graph_dataset.GraphClassificationDataset` s) into a
:class:`Corpus` the packing pipeline draws from:

- **Features.** A dataset wider than ``feature_dim`` is reduced to ``feature_dim`` columns by a
  seeded randomized truncated SVD (Halko, Martinsson & Tropp 2011: Gaussian range finder with
  ``oversample`` extra columns and ``power_iters`` power iterations, then an exact SVD of the
  small projected matrix). It never centres the matrix, so a sparse bag-of-words ``csr_matrix``
  stays sparse and only sparse @ dense products are formed (memory O(nnz + N * feature_dim));
  the result is ``X V_k`` (= ``U_k S_k``), each ``V`` column's sign fixed so its largest entry is
  positive. Narrower datasets keep their features; :func:`~jaxfm.data.packing.pack_bucket`
  zero-pads rows to ``feature_dim``. The dataset table records the width actually used.
- **Laplacian PE.** Computed once per graph (:func:`~jaxfm.graph.laplacian.laplacian_pe`,
  memoised by :class:`~jaxfm.graph.laplacian.LaplacianPECache`, optionally on disk). A big
  graph's PE is computed on the full graph and its subgraphs take the rows of their nodes.
- **Units.** Per epoch, a graph of at most ``max_unit_nodes`` nodes is one unit; a bigger one is
  cut into GraphSAINT random-walk subgraphs (roots among its training nodes, at most
  ``max_unit_nodes`` nodes each) drawn until their sizes add up to the graph's node count. Units
  are a pure function of ``(seed, epoch)``.
- **Targets.** A node can be a (loss-carrying) target when it is in the training mask of split
  ``split_index`` (the dataset's public split, or a seeded class-stratified 60/20/20 split when
  it has none) and labelled; val/test masks are kept for evaluation.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp

from jaxfm.data.graph_dataset import GraphClassificationDataset, NodeDataset, Split
from jaxfm.data.packing import PackUnit
from jaxfm.data.splits import seeded_node_splits
from jaxfm.graph.laplacian import LaplacianPECache
from jaxfm.graph.saint import SaintSampler, csr_adjacency, induced_subgraph

__all__ = [
    "Corpus",
    "CorpusGraph",
    "DatasetInfo",
    "Unit",
    "build_corpus",
    "reduce_features",
]

Task = Literal["classification", "regression", "graph_classification"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """One row of the dataset table the model config is built from.

    Attributes:
      name: dataset name (unique in the corpus).
      num_features: feature columns actually used (``min(original, feature_dim)``).
      num_classes: classes (0 for regression).
      task: ``"classification"``, ``"regression"`` or ``"graph_classification"``.
    """

    name: str
    num_features: int
    num_classes: int
    task: Task


@dataclasses.dataclass(frozen=True, eq=False)
class CorpusGraph:
    """One graph of the corpus with everything packing needs (read-only arrays).

    Attributes:
      dataset: index into the dataset table.
      num_nodes: N.
      features: ``float32 [N, f]`` (``f <= feature_dim``).
      pe: ``float32 [N, k]``.
      indptr, indices: undirected CSR adjacency (:func:`~jaxfm.graph.saint.csr_adjacency`).
      labels: ``[N]`` int32 classes (-1 unlabelled) or float32 regression targets; all -1 for
        the nodes of graph-classification sets.
      split: node masks (train/val/test) of the chosen split.
      regression: labels are regression values.
      graph_label: graph class for graph-classification training graphs, else -1.
    """

    dataset: int
    num_nodes: int
    features: np.ndarray
    pe: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    split: Split
    regression: bool = False
    graph_label: int = -1


@dataclasses.dataclass(frozen=True, eq=False)
class Unit:
    """A graph (``nodes is None``) or the subgraph of ``graph`` induced by sorted ``nodes``."""

    graph: int
    nodes: np.ndarray | None
    size: int


def _qr(a: np.ndarray) -> np.ndarray:
    """Orthonormal basis of ``a``'s columns: CholeskyQR2 (two Gram-matrix passes, matmul-bound and
    ~100x faster than Householder QR on tall matrices), Householder QR if the Gram matrix is
    singular."""
    q = np.asarray(a, np.float64)
    try:
        for _ in range(2):
            r = np.linalg.cholesky(q.T @ q).T
            q = np.linalg.solve(r.T, q.T).T
    except np.linalg.LinAlgError:
        q = np.linalg.qr(np.asarray(a, np.float64))[0]
    return q.astype(np.float32)


def reduce_features(
    x: np.ndarray | sp.spmatrix,
    dim: int,
    *,
    seed: int | Sequence[int] = 0,
    oversample: int = 10,
    power_iters: int = 2,
) -> np.ndarray:
    """Randomized truncated SVD projection ``X V_dim`` (``float32 [N, dim]``), sparse-friendly.

    Returns ``X`` as dense float32 unchanged when it has at most ``dim`` columns. When the rank
    is below ``dim`` (e.g. ``N < dim``) the extra columns are zero.
    """
    n, f = x.shape
    if f <= dim:
        return np.asarray(x.toarray() if sp.issparse(x) else x, np.float32)
    if not sp.issparse(x) and np.count_nonzero(x) < 0.1 * x.size:
        x = sp.csr_matrix(x)  # bag-of-words stored dense: sparse products are ~10x cheaper
    # float32 products (the range finder needs no more), float64 for the small exact SVD.
    xs = x.tocsr().astype(np.float32) if sp.issparse(x) else np.asarray(x, np.float32)
    rng = np.random.default_rng(seed)
    width = min(dim + oversample, f)
    q = _qr(np.asarray(xs @ rng.standard_normal((f, width)).astype(np.float32)))
    for _ in range(power_iters):
        q = _qr(np.asarray(xs.T @ q))
        q = _qr(np.asarray(xs @ q))
    b = np.asarray(xs.T @ q, np.float64).T  # [r, f], r = min(n, width)
    _, _, vt = np.linalg.svd(b, full_matrices=False)
    v = vt[:dim].T  # [f, r']
    idx = np.argmax(np.abs(v), axis=0)
    v = v * np.where(v[idx, np.arange(v.shape[1])] < 0, -1.0, 1.0)
    out = np.zeros((n, dim), np.float32)
    out[:, : v.shape[1]] = np.asarray(xs @ v.astype(np.float32))
    return out


def _check_finite(x, what: str) -> None:
    data = x.data if sp.issparse(x) else np.asarray(x)
    if data.size and not np.isfinite(data).all():
        raise ValueError(f"build_corpus: {what}: features contain NaN or inf")


def _check_edges(senders, receivers, n: int, what: str) -> None:
    s, r = np.asarray(senders), np.asarray(receivers)
    if n < 1:
        raise ValueError(f"build_corpus: {what}: a graph has zero nodes")
    if s.shape != r.shape:
        raise ValueError(f"build_corpus: {what}: senders {s.shape} and receivers {r.shape} differ")
    if s.size and (min(s.min(), r.min()) < 0 or max(s.max(), r.max()) >= n):
        raise ValueError(f"build_corpus: {what}: an edge index is outside [0, {n})")


def _node_split(ds: NodeDataset, split_index: int, seed: int) -> Split:
    if ds.splits:
        if not 0 <= split_index < len(ds.splits):
            raise ValueError(
                f"build_corpus: {ds.name}: split_index {split_index} but the dataset has "
                f"{len(ds.splits)} splits"
            )
        return ds.splits[split_index]
    return seeded_node_splits(ds.y, ds.task, 1, seed)[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """Graphs of many datasets, ready to be cut into units and packed.

    Attributes:
      datasets: the dataset table (index = dataset id in packed batches).
      graphs: every graph (a node-level dataset has one; a graph-classification set many).
      feature_dim, pe_dim: F and k.
      node_budget: packing node budget T the units were sized for.
      max_unit_nodes: graphs above this are cut into GraphSAINT subgraphs.
      walk_length: GraphSAINT walk length.
      seed: seed of the units (and of everything seeded at build time).
      samplers: GraphSAINT sampler of each graph above ``max_unit_nodes`` (by graph index).
    """

    datasets: tuple[DatasetInfo, ...]
    graphs: tuple[CorpusGraph, ...]
    feature_dim: int
    pe_dim: int
    node_budget: int
    max_unit_nodes: int
    walk_length: int
    seed: int
    samplers: dict[int, SaintSampler]

    @property
    def num_datasets(self) -> int:
        return len(self.datasets)

    @property
    def dataset_specs(self) -> tuple:
        """The dataset table as ``jaxfm.graph.packed.DatasetSpec`` s (for ``GraphFMConfig``).

        Graph-classification sets appear with ``task="classification"`` and their number of
        graph classes (they carry no node targets; their labels reach the graph decoder).
        """
        from jaxfm.graph.packed import DatasetSpec

        return tuple(
            DatasetSpec(
                name=d.name,
                num_features=d.num_features,
                num_classes=d.num_classes,
                task="classification" if d.task == "graph_classification" else d.task,
            )
            for d in self.datasets
        )

    def train_nodes_per_dataset(self) -> np.ndarray:
        """``int64 [S]`` number of candidate target nodes (labelled training nodes) per dataset."""
        out = np.zeros(self.num_datasets, np.int64)
        for g in self.graphs:
            out[g.dataset] += int(_candidates(g).size)
        return out

    def units(self, epoch: int) -> list[Unit]:
        """The units of ``epoch``: whole graphs, or GraphSAINT subgraphs of the big ones."""
        out = []
        for gi, g in enumerate(self.graphs):
            sampler = self.samplers.get(gi)
            if sampler is None:
                out.append(Unit(gi, None, g.num_nodes))
            else:
                out.extend(
                    Unit(gi, nodes, int(nodes.size)) for nodes in sampler.epoch_subgraphs(epoch)
                )
        return out

    def materialize(self, unit: Unit) -> PackUnit:
        """The arrays of one unit (subgraph rows sliced from its graph, local adjacency)."""
        g = self.graphs[unit.graph]
        if unit.nodes is None:
            return PackUnit(
                dataset=g.dataset,
                graph=unit.graph,
                features=g.features,
                pe=g.pe,
                indptr=g.indptr,
                indices=g.indices,
                labels=g.labels,
                train_mask=g.split.train,
                regression=g.regression,
                graph_label=g.graph_label,
            )
        nodes = unit.nodes
        owner, local = induced_subgraph(g.indptr, g.indices, nodes)
        indptr = np.zeros(nodes.size + 1, np.int64)
        np.cumsum(np.bincount(owner, minlength=nodes.size), out=indptr[1:])
        return PackUnit(
            dataset=g.dataset,
            graph=unit.graph,
            features=g.features[nodes],
            pe=g.pe[nodes],
            indptr=indptr,
            indices=local.astype(np.int64),
            labels=g.labels[nodes],
            train_mask=g.split.train[nodes],
            regression=g.regression,
            graph_label=-1,  # a subgraph is not the labelled graph
        )


def _candidates(g: CorpusGraph) -> np.ndarray:
    mask = g.split.train
    if not g.regression:
        mask = mask & (g.labels >= 0)
    return np.flatnonzero(mask)


def build_corpus(
    datasets: Sequence[NodeDataset | GraphClassificationDataset],
    *,
    feature_dim: int,
    pe_dim: int,
    node_budget: int,
    seed: int = 0,
    max_unit_nodes: int | None = None,
    walk_length: int = 2,
    split_index: int = 0,
    pe_cache: LaplacianPECache | None = None,
    pe_cache_dir: str | os.PathLike | None = None,
    svd_oversample: int = 10,
    svd_power_iters: int = 4,
) -> Corpus:
    """Builds the corpus (feature reduction, PEs, splits, GraphSAINT samplers).

    Args:
      datasets: loaded datasets; names must be unique. Graph-classification sets contribute one
        graph per member graph (graph labels only for the graphs in fold ``split_index``'s
        training part, or all graphs when there are no folds).
      feature_dim: F; wider datasets are reduced by randomized truncated SVD.
      pe_dim: k Laplacian eigenvectors per node.
      node_budget: the packing node budget T.
      seed: seeds the SVD sketches, default splits, PE solver and the GraphSAINT samplers.
      max_unit_nodes: graphs with more nodes are sampled as GraphSAINT subgraphs of at most this
        many nodes (default ``node_budget // 2``; must be ``<= node_budget``).
      walk_length: GraphSAINT walk length (roots per subgraph =
        ``max_unit_nodes // (walk_length + 1)``).
      split_index: which public split's training mask provides the targets.
      pe_cache: PE cache to use (shared across corpora); default a new one on ``pe_cache_dir``.
      pe_cache_dir: directory for ``.npy`` PE files (None: memory only).
      svd_oversample, svd_power_iters: randomized SVD accuracy knobs.

    Raises:
      ValueError: duplicate names, NaN/inf features, out-of-range edges or labels, an empty graph,
        or bad budgets; the message names the dataset.
    """
    if feature_dim < 1 or pe_dim < 0 or node_budget < 1:
        raise ValueError(
            f"build_corpus: need feature_dim >= 1, pe_dim >= 0, node_budget >= 1, got "
            f"{feature_dim}, {pe_dim}, {node_budget}"
        )
    if max_unit_nodes is None:
        max_unit_nodes = max(1, node_budget // 2)
    if not 1 <= max_unit_nodes <= node_budget:
        raise ValueError(
            f"build_corpus: max_unit_nodes must be in [1, node_budget={node_budget}], "
            f"got {max_unit_nodes}"
        )
    if walk_length < 0 or max_unit_nodes < walk_length + 1:
        raise ValueError(
            f"build_corpus: walk_length={walk_length} needs max_unit_nodes >= walk_length + 1"
        )
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"build_corpus: duplicate dataset names {dup}")
    cache = pe_cache if pe_cache is not None else LaplacianPECache(pe_cache_dir)
    table: list[DatasetInfo] = []
    graphs: list[CorpusGraph] = []
    samplers: dict[int, SaintSampler] = {}
    for di, ds in enumerate(datasets):
        what = f"{ds.name} ({ds.source or 'in memory'})"
        if isinstance(ds, GraphClassificationDataset):
            table.append(_add_graph_set(ds, di, what, graphs, cache, feature_dim, pe_dim, seed))
            continue
        _check_edges(ds.senders, ds.receivers, ds.num_nodes, what)
        if ds.x.shape[0] != ds.num_nodes:
            raise ValueError(f"build_corpus: {what}: x has {ds.x.shape[0]} rows, N={ds.num_nodes}")
        _check_finite(ds.x, what)
        regression = ds.task == "regression"
        y = np.asarray(ds.y)
        if y.shape != (ds.num_nodes,):
            raise ValueError(f"build_corpus: {what}: y has shape {y.shape}, want ({ds.num_nodes},)")
        if regression:
            labels = y.astype(np.float32)
        else:
            labels = y.astype(np.int32)
            if (labels >= ds.num_classes).any() or (labels < -1).any():
                raise ValueError(
                    f"build_corpus: {what}: labels outside [-1, num_classes={ds.num_classes})"
                )
        feats = reduce_features(
            ds.x,
            feature_dim,
            seed=[seed, di, 0xF3],
            oversample=svd_oversample,
            power_iters=svd_power_iters,
        )
        pe = cache.get(ds.senders, ds.receivers, ds.num_nodes, pe_dim, seed=seed)
        indptr, indices = csr_adjacency(ds.senders, ds.receivers, ds.num_nodes)
        split = _node_split(ds, split_index, seed)
        gi = len(graphs)
        graph = CorpusGraph(
            dataset=di,
            num_nodes=ds.num_nodes,
            features=feats,
            pe=pe,
            indptr=indptr,
            indices=indices,
            labels=labels,
            split=split,
            regression=regression,
        )
        graphs.append(graph)
        if ds.num_nodes > max_unit_nodes:
            samplers[gi] = SaintSampler(
                ds.senders,
                ds.receivers,
                ds.num_nodes,
                num_roots=max(1, max_unit_nodes // (walk_length + 1)),
                walk_length=walk_length,
                seed=int(np.random.default_rng([seed, di, 0x5A]).integers(2**31)),
                root_candidates=_candidates(graph),
            )
        table.append(
            DatasetInfo(
                name=ds.name,
                num_features=int(feats.shape[1]),
                num_classes=0 if regression else int(ds.num_classes),
                task="regression" if regression else "classification",
            )
        )
    return Corpus(
        datasets=tuple(table),
        graphs=tuple(graphs),
        feature_dim=int(feature_dim),
        pe_dim=int(pe_dim),
        node_budget=int(node_budget),
        max_unit_nodes=int(max_unit_nodes),
        walk_length=int(walk_length),
        seed=int(seed),
        samplers=samplers,
    )


def _add_graph_set(
    ds: GraphClassificationDataset,
    di: int,
    what: str,
    graphs: list[CorpusGraph],
    cache: LaplacianPECache,
    feature_dim: int,
    pe_dim: int,
    seed: int,
) -> DatasetInfo:
    if not ds.graphs:
        raise ValueError(f"build_corpus: {what}: no graphs")
    y = np.asarray(ds.y)
    if y.shape != (len(ds.graphs),) or (y < 0).any() or (y >= ds.num_classes).any():
        raise ValueError(f"build_corpus: {what}: graph labels must be [G] in [0, num_classes)")
    train = np.ones(len(ds.graphs), bool) if not ds.folds else np.asarray(ds.folds[0].train)
    for i, g in enumerate(ds.graphs):
        _check_edges(g.senders, g.receivers, g.num_nodes, f"{what} graph {i}")
        _check_finite(g.x, f"{what} graph {i}")
    stacked = np.concatenate([np.asarray(g.x, np.float64) for g in ds.graphs], axis=0)
    feats = reduce_features(stacked, feature_dim, seed=[seed, di, 0xF3])
    row = 0
    for i, g in enumerate(ds.graphs):
        n = g.num_nodes
        pe = cache.get(g.senders, g.receivers, n, pe_dim, seed=seed)
        indptr, indices = csr_adjacency(g.senders, g.receivers, n)
        none = np.zeros(n, bool)
        graphs.append(
            CorpusGraph(
                dataset=di,
                num_nodes=n,
                features=feats[row : row + n],
                pe=pe,
                indptr=indptr,
                indices=indices,
                labels=np.full(n, -1, np.int32),
                split=Split(none, none.copy(), none.copy()),
                graph_label=int(y[i]) if train[i] else -1,
            )
        )
        row += n
    return DatasetInfo(
        name=ds.name,
        num_features=int(feats.shape[1]),
        num_classes=int(ds.num_classes),
        task="graph_classification",
    )
