"""FIMP message creation (eqs. 6-7) over node token streams, aggregated at receivers.

For an edge ``u -> v`` with tokens ``H_u [L_u, D]`` (source) and ``H_v [L_v, D]`` (destination):
``Q = H_v W_Q``, ``K = H_u W_K``, ``V = H_u W_V`` (eq. 6) and
``m_{u->v} = softmax(Q K^T / sqrt(Dh)) V`` (eq. 7, multi-head, then the output projection);
``M_v = AGG_{u in N(v)} m_{u->v}`` token-wise.

Two kinds:

* ``"attention"`` (FIMP-base): one bare multi-head cross-attention, submodule ``attention``.
* ``"transformer"``: ``num_layers`` :class:`~jaxfm.nn.TransformerLayer` in cross-node form, named
  ``layers_0``, ``layers_1``, ... (the layout a pretrained ViT / scGPT / BrainLM stack loads into).
  Layer ``j`` takes its queries from the destination's stream and its keys/values from the
  sources' streams after layer ``j-1`` (messages are aggregated at every layer; residuals, norms
  and MLPs run per node), and the last hidden state is the message. On a graph of self-loops only
  this is exactly the foundation model applied to each node.
* ``"foundation"``: the same, with the layers of the pretrained model named by ``pretrained``
  (built by :func:`jaxfm.fimp.pretrained.foundation_layers`, e.g. BrainLM's Nystromformer layers,
  whose ``cross_node`` has the :class:`~jaxfm.nn.TransformerLayer` signature).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.fimp.config import MessageCreatorConfig, PretrainedConfig
from jaxfm.fimp.pretrained import foundation_layers
from jaxfm.nn.attention import AGGREGATIONS, MultiHeadAttention
from jaxfm.nn.transformer import TransformerLayer

__all__ = ["MessageCreator"]


class MessageCreator(nn.Module):
    """Cross-node message creator returning the aggregated messages ``M`` (eqs. 6-7).

    Attributes:
      config: kind, depth, heads, norm placement, activation, LayerNorm epsilon.
      dim: token width D (sets the transformer MLP width ``mlp_ratio * D``).
      aggregation: ``"mean"`` or ``"sum"`` over incoming edges.
      edge_chunk_size: edges per attention chunk; ``None`` = op default.
      dropout: dropout inside transformer layers.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      pretrained: the pretrained model whose layers kind ``"foundation"`` hosts.

    Parameters: ``attention/{query,key,value,out}`` (kind ``"attention"``),
    ``layers_{j}/{attention,norm1,norm2,mlp}`` (kind ``"transformer"``) or ``layers_{j}/...``
    named as in the foundation model (kind ``"foundation"``).

    Shapes:
      h ``[N, L, D]``; senders, receivers ``[E]`` int; kv_mask ``[N, L]`` bool; edge_mask
      ``[E]`` bool -> ``M [N, L, D]``.
    """

    config: MessageCreatorConfig
    dim: int
    aggregation: str = "mean"
    edge_chunk_size: int | None = None
    dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32
    pretrained: PretrainedConfig | None = None

    def setup(self):
        cfg = self.config
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if cfg.kind == "attention":
            self.attention = MultiHeadAttention(
                num_heads=cfg.num_heads,
                head_dim=cfg.head_dim,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
        elif cfg.kind == "foundation":
            if self.pretrained is None:
                raise ValueError("MessageCreator: kind 'foundation' needs pretrained=")
            self.layers = foundation_layers(
                self.pretrained, cfg.num_layers, dropout=self.dropout, dtype=self.dtype
            )
        else:
            self.layers = [
                TransformerLayer(
                    num_heads=cfg.num_heads,
                    mlp_dim=max(1, round(cfg.mlp_ratio * self.dim)),
                    head_dim=cfg.head_dim,
                    norm=cfg.norm,
                    activation=cfg.activation,
                    layer_norm_eps=cfg.layer_norm_eps,
                    dropout=self.dropout,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                )
                for _ in range(cfg.num_layers)
            ]

    def __call__(
        self,
        h: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        *,
        kv_mask: jax.Array | None = None,
        edge_mask: jax.Array | None = None,
        deterministic: bool = True,
        attention_edges: jax.Array | None = None,
    ):
        """Creates and aggregates the messages of every valid edge.

        Args:
          h: node token streams.
          senders: source node per edge.
          receivers: destination node per edge.
          kv_mask: True for valid tokens (padding tokens are never attended).
          edge_mask: True for real edges.
          deterministic: disables dropout when True.
          attention_edges: optional edge indices ``[Es]`` whose attention maps to return.

        Returns:
          ``M [N, L, D]``; with ``attention_edges`` a tuple ``(M, maps)``, maps
          ``[num_layers, Es, H, L, L]`` float32 (destination tokens x source tokens).
        """
        h, senders, receivers = jnp.asarray(h), jnp.asarray(senders), jnp.asarray(receivers)
        kv_mask = None if kv_mask is None else jnp.asarray(kv_mask, bool)
        kw = dict(
            kv_mask=kv_mask,
            edge_mask=edge_mask,
            aggregation=self.aggregation,
            edge_chunk_size=self.edge_chunk_size,
        )

        def edge_map(module, x):
            if not hasattr(module, "attention_map"):
                raise ValueError(
                    f"attention maps are not available for {type(module).__name__} layers "
                    f"(message kind {self.config.kind!r})"
                )
            s, r = senders[attention_edges], receivers[attention_edges]
            mask = None if kv_mask is None else kv_mask[s]
            return module.attention_map(x[r], x[s], kv_mask=mask)  # [Es, H, L, L]

        maps = []
        if self.config.kind == "attention":
            if attention_edges is not None:
                maps.append(edge_map(self.attention, h))
            # FIMP-base: m_{u->v} = Attn(Q = H_v, K = V = H_u), aggregated at v.
            out = self.attention.cross_node(h, senders, receivers, **kw)
        else:
            out = h
            for layer in self.layers:
                if attention_edges is not None:
                    maps.append(edge_map(layer, out))
                out = layer.cross_node(out, senders, receivers, deterministic=deterministic, **kw)
        if attention_edges is None:
            return out
        return out, jnp.stack(maps)
