"""Graph-classification GNN: message passing, per-layer pooling readout, MLP head (graph logits).

The GIN paper's architecture (Xu et al., 2019): an embedding layer, ``depth`` message-passing
layers (GIN, GCN or GraphSAGE), sum or mean pooling of every layer's node states, concatenated
over layers (eq. 4.2), and a two-layer MLP head. It reads padded disjoint-union batches
(:class:`jaxfm.data.graph_batches.GraphUnion`), one graph per ``n_node`` entry, the last one the
padding graph.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from jaxfm.baselines.kinds import layer_class
from jaxfm.graph.batching import edge_mask, node_mask

__all__ = ["GRAPH_CLASSIFIER_KINDS", "GraphClassifier"]

#: Message-passing layers :class:`GraphClassifier` can stack (from the one registry).
GRAPH_CLASSIFIER_KINDS = ("gin", "gcn", "sage")


class GraphClassifier(nn.Module):
    """Message-passing GNN + per-layer pooling readout + MLP head (graph logits).

    Attributes:
      kind: message-passing layer, one of :data:`GRAPH_CLASSIFIER_KINDS`.
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
        layer = layer_class(self.kind, GRAPH_CLASSIFIER_KINDS)
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
