"""One whole graph as packed batches with chosen target nodes (finetuning and embedding).

The graph goes through the same corpus preparation as pretraining (feature reduction to
``feature_dim``, Laplacian PE), so a finetuned model sees inputs built exactly like the
pretraining ones. Every batch holds the whole graph in one graph slot; only its targets change.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxfm.data.corpus import Unit, build_corpus
from jaxfm.data.graph_dataset import NodeDataset
from jaxfm.data.packing import PackingBudget, pack_bucket

__all__ = ["WholeGraphBatcher"]


class WholeGraphBatcher:
    """Packs the whole graph (one graph slot) with chosen target nodes into PackedBatches.

    Args:
      ds: the graph.
      feature_dim, pe_dim, num_neighbors: the model's input widths and decoder neighbours.
      num_targets: target budget of a batch.
      seed: feature reduction, PE signs and neighbour sampling.

    Shapes:
      a batch has ``ceil(N / 256) * 256`` node rows, one graph slot and ``num_targets`` targets.
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
    ):
        n = ds.num_nodes
        rows = -(-n // 256) * 256
        corpus = build_corpus(
            [ds], feature_dim=feature_dim, pe_dim=pe_dim, node_budget=rows, max_unit_nodes=n,
            seed=seed,
        )  # fmt: skip
        self.unit = corpus.materialize(Unit(0, None, n))
        self.spec = corpus.dataset_specs[0]
        self.feature_dim, self.pe_dim = feature_dim, pe_dim
        self.budget = PackingBudget(
            nodes=rows, graphs=1, targets=num_targets, neighbors=num_neighbors
        )

    @classmethod
    def for_model(cls, ds: NodeDataset, config, num_targets: int, seed: int) -> WholeGraphBatcher:
        """The batcher whose inputs fit a ``GraphFMConfig``."""
        return cls(
            ds, feature_dim=config.feature_dim, pe_dim=config.pe_dim,
            num_neighbors=config.num_neighbors, num_targets=num_targets, seed=seed,
        )  # fmt: skip

    def batch(self, nodes: np.ndarray, seed, *, dataset: int = 0, num_datasets: int = 1):
        """``(batch, node_ids)``: targets = ``nodes`` (at most the target budget)."""
        mask = np.zeros(self.unit.num_nodes, bool)
        mask[nodes] = True
        # Only the chosen nodes are labelled inside this batch, so every one of them is a target.
        unit = dataclasses.replace(
            self.unit,
            train_mask=mask,
            labels=np.where(mask, np.maximum(self.unit.labels, 0), -1),
            dataset=dataset,
        )
        b = pack_bucket(
            [unit], self.budget, num_datasets=num_datasets, feature_dim=self.feature_dim,
            pe_dim=self.pe_dim, seed=seed, check=False,
        )  # fmt: skip
        return b, np.asarray(b.target_index)[np.asarray(b.target_mask)]
