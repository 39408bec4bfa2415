"""One graph as packed batches with chosen target nodes (finetuning and embedding).

The graph goes through the same corpus preparation as pretraining (feature reduction to
``feature_dim``, Laplacian PE on the full graph), so a finetuned model sees inputs built exactly
like the pretraining ones. A batch holds, in one graph slot, either the whole graph
(:meth:`WholeGraphBatcher.batch`) or the subgraph its targets reach by GraphSAINT random walks
(:meth:`WholeGraphBatcher.batch_around`): the context pretraining encodes for a big graph, at a
cost per step that does not grow with the graph.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxfm.data.corpus import Unit, build_corpus
from jaxfm.data.graph_dataset import NodeDataset
from jaxfm.data.packing import PackingBudget, pack_bucket
from jaxfm.graph.saint import random_walk_nodes

__all__ = ["WholeGraphBatcher"]


class WholeGraphBatcher:
    """Packs the whole graph (one graph slot) with chosen target nodes into PackedBatches.

    Args:
      ds: the graph.
      feature_dim, pe_dim, num_neighbors: the model's input widths and decoder neighbours.
      num_targets: target budget of a batch.
      seed: feature reduction, PE signs and neighbour sampling.
      context_nodes: node budget of :meth:`batch_around` (None: whole-graph batches only).
      walk_length: steps of :meth:`batch_around`'s random walks (pretraining's GraphSAINT: 2).

    Shapes:
      a :meth:`batch` has ``ceil(N / 256) * 256`` node rows, a :meth:`batch_around`
      ``ceil(min(N, context_nodes) / 256) * 256``; both one graph slot and ``num_targets`` targets.
    """

    def __init__(
        self,
        ds: NodeDataset,
        *,
        feature_dim: int,
        pe_dim: int,
        num_neighbors: int,
        num_targets: int,
        seed: int,
        context_nodes: int | None = None,
        walk_length: int = 2,
    ):
        n = ds.num_nodes
        if context_nodes is not None and not num_targets <= context_nodes:
            raise ValueError(
                f"WholeGraphBatcher: context_nodes={context_nodes} must be >= the target budget "
                f"{num_targets} (every target is a node of its context)"
            )
        rows = -(-n // 256) * 256
        corpus = build_corpus(
            [ds], feature_dim=feature_dim, pe_dim=pe_dim, node_budget=rows, max_unit_nodes=n,
            seed=seed,
        )  # fmt: skip
        self.corpus = corpus
        self.unit = corpus.materialize(Unit(0, None, n))
        self.spec = corpus.dataset_specs[0]
        self.feature_dim, self.pe_dim = feature_dim, pe_dim
        self.budget = PackingBudget(
            nodes=rows, graphs=1, targets=num_targets, neighbors=num_neighbors
        )
        self.context_nodes, self.walk_length = context_nodes, int(walk_length)
        if context_nodes is not None:
            self.context_budget = dataclasses.replace(
                self.budget, nodes=-(-min(n, context_nodes) // 256) * 256
            )

    @classmethod
    def for_model(
        cls, ds: NodeDataset, config, num_targets: int, seed: int, context_nodes: int | None = None
    ) -> WholeGraphBatcher:
        """The batcher whose inputs fit a ``GraphFMConfig``."""
        return cls(
            ds, feature_dim=config.feature_dim, pe_dim=config.pe_dim,
            num_neighbors=config.num_neighbors, num_targets=num_targets, seed=seed,
            context_nodes=context_nodes,
        )  # fmt: skip

    def batch(self, nodes: np.ndarray, seed, *, dataset: int = 0, num_datasets: int = 1):
        """``(batch, node_ids)``: targets = ``nodes`` (at most the target budget)."""
        mask = np.zeros(self.unit.num_nodes, bool)
        mask[nodes] = True
        b = self._pack(self.unit, mask, self.budget, seed, dataset, num_datasets)
        return b, np.asarray(b.target_index)[np.asarray(b.target_mask)]

    def _pack(self, unit, is_target, budget, seed, dataset: int, num_datasets: int):
        """``unit`` packed with exactly the ``is_target`` rows as targets: only they are
        labelled inside the batch, so every one of them is a target."""
        unit = dataclasses.replace(
            unit,
            train_mask=is_target,
            labels=np.where(is_target, np.maximum(unit.labels, 0), -1),
            dataset=dataset,
        )
        return pack_bucket(
            [unit], budget, num_datasets=num_datasets, feature_dim=self.feature_dim,
            pe_dim=self.pe_dim, seed=seed, check=False,
        )  # fmt: skip

    def batch_around(self, nodes: np.ndarray, seed, *, dataset: int = 0, num_datasets: int = 1):
        """``(batch, node_ids)``: targets = ``nodes``, context = the subgraph they reach.

        As pretraining treats its graphs: a graph of at most ``context_nodes`` nodes is its own
        context (the batch equals :meth:`batch`'s). In a bigger one the context is the subgraph
        induced by the nodes that ``walk_length``-step uniform random walks from every target
        visit (GraphSAINT's random-walk sampler with the targets as roots, as pretraining cuts
        big graphs); when that exceeds ``context_nodes`` the targets are kept and the other
        visited nodes are subsampled. Walks and subsampling are a pure function of ``seed``.
        """
        if self.context_nodes is None:
            raise ValueError("batch_around needs a WholeGraphBatcher built with context_nodes")
        nodes = np.unique(np.asarray(nodes, np.int64))
        if nodes.size > self.budget.targets:
            raise ValueError(
                f"batch_around: {nodes.size} targets exceed the target budget {self.budget.targets}"
            )
        if self.unit.num_nodes <= self.context_nodes:
            return self.batch(nodes, seed, dataset=dataset, num_datasets=num_datasets)
        rng = np.random.default_rng([*np.atleast_1d(seed), 0xC07])  # not pack_bucket's stream
        graph = self.corpus.graphs[0]
        reached = random_walk_nodes(graph.indptr, graph.indices, nodes, self.walk_length, rng)
        others = np.setdiff1d(reached, nodes, assume_unique=True)
        room = self.context_nodes - nodes.size
        if others.size > room:
            others = rng.choice(others, size=room, replace=False)
        context = np.union1d(nodes, others)
        unit = self.corpus.materialize(Unit(0, context, int(context.size)))
        mask = np.isin(context, nodes, assume_unique=True)
        b = self._pack(unit, mask, self.context_budget, seed, dataset, num_datasets)
        return b, context[np.asarray(b.target_index)[np.asarray(b.target_mask)]]
