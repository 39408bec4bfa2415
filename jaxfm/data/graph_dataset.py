"""In-memory graph datasets: what every loader returns and what GraphFM corpora are built from.

Node-level datasets are one graph (``NodeDataset``); graph-classification sets are many small
graphs (``GraphClassificationDataset``). Arrays are numpy on the host; edges are directed
``senders -> receivers`` pairs (undirected graphs store both directions, no self loops unless the
source has them).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import scipy.sparse as sp

__all__ = ["GraphClassificationDataset", "NodeDataset", "SmallGraph", "Split"]

Task = Literal["classification", "regression"]


@dataclasses.dataclass(frozen=True)
class Split:
    """Boolean node (or graph) masks of one train/val/test split; pairwise disjoint."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeDataset:
    """One graph with node features and node targets.

    Attributes:
      name: registry name (e.g. ``"amazon_cs"``); unique inside a corpus.
      senders, receivers: ``int32 [E]`` directed edges.
      num_nodes: N.
      x: ``[N, F]`` float32 features, dense ``np.ndarray`` or ``scipy.sparse.csr_matrix``
        (high-dimensional bag-of-words sets stay sparse).
      y: ``[N]`` int32 class ids (-1 = unlabelled) for classification, float32 for regression.
      num_classes: number of classes (0 for regression).
      task: ``"classification"`` or ``"regression"``.
      splits: public splits if the source has them (e.g. 10 masks), else seeded 60/20/20 ones.
      structural_features: True when ``x`` was derived from the structure (the source had none).
      source: the file or folder it was read from (for error messages and reports).
    """

    name: str
    senders: np.ndarray
    receivers: np.ndarray
    num_nodes: int
    x: np.ndarray | sp.csr_matrix
    y: np.ndarray
    num_classes: int
    task: Task = "classification"
    splits: tuple[Split, ...] = ()
    structural_features: bool = False
    source: str = ""

    @property
    def num_edges(self) -> int:
        return int(self.senders.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])


@dataclasses.dataclass(frozen=True, kw_only=True)
class SmallGraph:
    """One graph of a graph-classification set."""

    senders: np.ndarray
    receivers: np.ndarray
    num_nodes: int
    x: np.ndarray


@dataclasses.dataclass(frozen=True, kw_only=True)
class GraphClassificationDataset:
    """Many small graphs with one label each (e.g. TU MUTAG / PROTEINS).

    Attributes:
      graphs: the graphs; every ``x`` has the same F.
      y: ``int32 [num_graphs]`` labels in ``[0, num_classes)``.
      folds: splits over graphs (10-fold CV by default).
      structural_features: True when the node features were derived from the structure.
    """

    name: str
    graphs: tuple[SmallGraph, ...]
    y: np.ndarray
    num_classes: int
    folds: tuple[Split, ...] = ()
    source: str = ""
    structural_features: bool = False
