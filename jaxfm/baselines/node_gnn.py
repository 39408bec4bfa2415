"""The GNN baselines of the FIMP tasks (FIMP paper, Tables 1-4): GCN, GraphSAGE, GAT, GIN and GPS
on the same tokenized ``nodes`` and padded FIMP batches as :class:`~jaxfm.fimp.tasks.FIMPTaskModel`.

Each node's flat features (:func:`jaxfm.baselines.node_mlp.node_features`: dense gene expression
⊕ masked-gene indicator, flattened pixels, or the filled fMRI signal ⊕ patch mask) go through an
input ``Dense``, then ``depth`` message-passing layers of one kind with residual connections and
dropout, then :class:`~jaxfm.baselines.node_mlp.NodeMLP`'s output heads.

FIMP graphs carry self loops as edges (FIMP's COMBINE reads them); the GNN layers define their own
self term (GCN/GAT add the node itself, SAGE/GIN/GPS have a separate self path), so the self-loop
edges are masked out here and every layer sees the plain neighbour graph.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxfm.baselines.kinds import MESSAGE_PASSING_KINDS, layer_class
from jaxfm.baselines.node_mlp import FILLS, Tokenizer, fill_rng, node_features, task_head

__all__ = ["GNN_KINDS", "NodeGNN"]

#: Message-passing kinds of :class:`NodeGNN` (the FIMP tasks' no-graph baseline is
#: :class:`~jaxfm.baselines.node_mlp.NodeMLP`, with its own featurisation).
GNN_KINDS = MESSAGE_PASSING_KINDS


class NodeGNN(nn.Module):
    """A message-passing baseline for the FIMP tasks.

    Attributes:
      kind: one of :data:`GNN_KINDS`.
      task: FIMP task name.
      tokenizer: the task's tokenizer config.
      num_classes: classification tasks only.
      hidden: hidden width F.
      depth: message-passing layers (= hops of neighbourhood the batches must carry).
      dropout: dropout after each layer.
      heads: attention heads (GAT, GPS).
      fill: fMRI masked-patch filling (:data:`jaxfm.baselines.node_mlp.FILLS`).

    Returns from ``apply(variables, nodes, senders, receivers, node_mask=, edge_mask=,
    deterministic=, rngs=)`` ``{"predictions", "node_embedding"}`` like ``FIMPTaskModel``.

    Shapes:
      senders, receivers, edge_mask: ``[E]``; node_mask: ``[N]``; node_embedding: ``[N, F]``;
      predictions: expression ``[N, L]``, fmri ``[N, P, patch]``, classification ``[N, C]``.
      Padded nodes (``node_mask`` False) and padded edges (``edge_mask`` False) do not affect
      the valid nodes' outputs. ``nodes["graph_index"]`` ``[N]`` int (optional; fMRI batches of
      several recordings carry it) keeps GPS's global attention inside each graph.
    """

    kind: str
    task: str
    tokenizer: Tokenizer
    num_classes: int | None = None
    hidden: int = 128
    depth: int = 2
    dropout: float = 0.1
    heads: int = 4
    fill: str = "zero"

    def _check(self) -> None:
        if self.kind not in GNN_KINDS:
            raise ValueError(f"kind must be one of {GNN_KINDS}, got {self.kind!r}")
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {self.fill!r}")
        if self.hidden <= 0 or self.depth <= 0:
            raise ValueError(f"hidden and depth must be positive, got {self.hidden}, {self.depth}")
        if self.kind in ("gat", "gps") and self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by heads={self.heads}")

    def _layer(self, i: int) -> nn.Module:
        extra = {"heads": self.heads} if self.kind in ("gat", "gps") else {}
        return layer_class(self.kind, GNN_KINDS)(
            features=self.hidden, name=f"{self.kind}_{i}", **extra
        )

    @nn.compact
    def __call__(
        self,
        nodes,
        senders,
        receivers,
        *,
        node_mask=None,
        edge_mask=None,
        deterministic: bool = True,
    ):
        self._check()
        rng = fill_rng(self, self.fill, deterministic)
        x, onehot = node_features(nodes, self.tokenizer, self.task, fill=self.fill, rng=rng)
        n = x.shape[0]
        nmask = jnp.ones(n, bool) if node_mask is None else node_mask.astype(bool)
        emask = jnp.ones(senders.shape[0], bool) if edge_mask is None else edge_mask.astype(bool)
        # Only edges between valid nodes, and no self loops (each layer has its own self term).
        emask = emask & (senders != receivers) & nmask[senders] & nmask[receivers]
        h = nn.gelu(nn.Dense(self.hidden, name="input")(x))
        h = jnp.where(nmask[:, None], h, 0.0)
        # GPS: a batch of several graphs (fMRI recordings) keeps its global attention per graph.
        seg = {"segment_ids": nodes.get("graph_index")} if self.kind == "gps" else {}
        for i in range(self.depth):
            y = self._layer(i)(
                h,
                senders,
                receivers,
                edge_mask=emask,
                node_mask=nmask,
                deterministic=deterministic,
                **seg,
            )
            y = nn.Dropout(self.dropout)(nn.gelu(y), deterministic=deterministic)
            h = jnp.where(nmask[:, None], h + y, 0.0)  # residual; padded rows stay 0
        pred = task_head(h, self.task, self.tokenizer, self.num_classes, onehot)
        return {"predictions": pred, "node_embedding": h}
