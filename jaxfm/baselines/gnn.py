"""A generic node-classification stack over the contract layers of :mod:`jaxfm.baselines.kinds`.

* ``gcn`` / ``sage`` / ``gin`` / ``mlp``: ``depth`` layers, ReLU between them, feature dropout
  before each; the last layer maps to ``num_classes`` (``mlp``: the no-graph control, edges
  ignored).
* ``gat``: hidden layers with ``heads`` concatenated heads (ELU), the output layer a single head,
  attention dropout = ``dropout`` (as in the GAT paper).
* ``gps``: input linear map to ``hidden``, ``depth`` :class:`GPSLayer` s (``heads`` heads), a
  linear head.

The first projection of every kind accepts a ``jax.experimental.sparse.BCOO`` feature matrix
(feature dropout is skipped on sparse inputs: dropping stored entries would densify them).
"""

from __future__ import annotations

import flax.linen as nn
from jax.experimental import sparse as jsparse

from jaxfm.baselines.gcn import Linear, mask_nodes
from jaxfm.baselines.kinds import KINDS, layer_class

__all__ = ["GNN", "KINDS"]


class GNN(nn.Module):
    """``depth`` message-passing layers of one ``kind`` -> per-node logits.

    Attributes:
      kind: one of :data:`KINDS`.
      hidden: hidden width.
      num_classes: output width C.
      depth: number of message-passing layers (>= 1).
      dropout: feature dropout rate (rng stream ``"dropout"``).
      heads: attention heads of ``gat`` hidden layers and ``gps`` layers (must divide ``hidden``).

    Shapes:
      x ``[N, F]`` (array or BCOO); senders/receivers ``[E]`` int; edge_mask ``[E]`` bool;
      node_mask ``[N]`` bool; segment_ids ``[N]`` int (``gps`` only: the graph of each node,
      so a batch of graphs attends within each graph) -> logits ``[N, C]`` (padded nodes
      zeroed); with ``return_embedding=True`` also the input of the last layer ``[N, hidden]``
      (for ``gps``: the last GPS layer's output; for ``depth=1`` the features themselves).

    Raises:
      ValueError: for an unknown ``kind``, ``depth < 1``, or ``heads`` not dividing ``hidden``
        where heads are used.
    """

    kind: str
    hidden: int = 64
    num_classes: int = 2
    depth: int = 2
    dropout: float = 0.5
    heads: int = 4

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"GNN.kind must be one of {KINDS}, got {self.kind!r}")
        if self.depth < 1 or self.hidden < 1 or self.num_classes < 1:
            raise ValueError(
                f"GNN: depth, hidden and num_classes must be >= 1, got depth={self.depth}, "
                f"hidden={self.hidden}, num_classes={self.num_classes}"
            )
        if self.kind in ("gat", "gps") and self.hidden % self.heads:
            raise ValueError(
                f"GNN({self.kind!r}): hidden ({self.hidden}) must be divisible by heads "
                f"({self.heads})"
            )
        super().__post_init__()

    def _layer(self, i: int, last: bool) -> nn.Module:
        width = self.num_classes if last else self.hidden
        extra = {}
        if self.kind == "gin":
            extra = {"hidden_features": self.hidden}
        elif self.kind == "gat":  # the output layer: one head (GAT paper, Sec. 3.3)
            extra = {"heads": 1 if last else self.heads, "concat": not last}
            extra["attention_dropout"] = self.dropout
        return layer_class(self.kind)(width, name=f"layer_{i}", **extra)

    @nn.compact
    def __call__(
        self,
        x,
        senders,
        receivers,
        *,
        edge_mask=None,
        node_mask=None,
        deterministic: bool = True,
        return_embedding: bool = False,
        segment_ids=None,
    ):
        kw = dict(edge_mask=edge_mask, node_mask=node_mask, deterministic=deterministic)

        def drop(h):
            if isinstance(h, jsparse.BCOO):
                return h
            return nn.Dropout(self.dropout)(h, deterministic=deterministic)

        h = x
        if self.kind == "gps":
            h = Linear(self.hidden, name="input")(drop(h))
            for i in range(self.depth):
                h = layer_class("gps")(
                    self.hidden, heads=self.heads, dropout=self.dropout, name=f"layer_{i}"
                )(h, senders, receivers, segment_ids=segment_ids, **kw)
            emb = h
            logits = Linear(self.num_classes, name="head")(drop(h))
        else:
            act = nn.elu if self.kind == "gat" else nn.relu
            emb = h
            for i in range(self.depth):
                last = i == self.depth - 1
                if last:
                    emb = h
                h = self._layer(i, last)(drop(h), senders, receivers, **kw)
                if not last:
                    h = act(h)
            logits = h
        logits = mask_nodes(logits, node_mask)
        return (logits, emb) if return_embedding else logits
