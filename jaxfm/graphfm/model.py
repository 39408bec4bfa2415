"""The GraphFM model: tokens -> packed Perceiver encoder -> node decoder -> per-dataset heads.

``GraphFM(config).apply({"params": p}, batch)`` on a :class:`~jaxfm.graph.packed.PackedBatch`
returns a dict: ``tokens [T, D]``, ``latents [G, K, D]``, ``node_embedding [Q, D]``,
``logits [Q, C]`` (float32), ``prediction [Q]`` (regression) and, with the graph decoder,
``graph_logits [G, C]``.

Parameter paths (an API: freezing, lr scaling and sharding rules are regexes over them):
``tokenizer/feature_mlp/*`` and ``heads/*``, ``graph_heads/*`` are dataset-specific (leading
axis S); ``tokenizer/signnet/*``, ``encoder/{latents,cross_attention,layer_i,norm}``,
``decoder/{type_embedding,layer_i,norm}``, ``graph_decoder/*`` are the shared trunk.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxfm.graph.packed import PackedBatch
from jaxfm.graphfm.config import GraphFMConfig
from jaxfm.graphfm.decoder import NodeDecoder
from jaxfm.graphfm.encoder import PerceiverEncoder
from jaxfm.graphfm.graph_decoder import GraphDecoder
from jaxfm.graphfm.heads import DatasetHeads
from jaxfm.graphfm.tokens import NodeTokenizer

__all__ = ["DATASET_SPECIFIC", "GraphFM"]

DATASET_SPECIFIC = ("^tokenizer/feature_mlp/", "^heads/", "^graph_heads/")


class GraphFM(nn.Module):
    """GraphFM (see the module docstring). ``config.datasets`` must be non-empty.

    Parameters are float32; the compute dtype is ``config.dtype`` (float32 or bfloat16); the heads
    and every returned array are float32.

    Shapes:
      batch: a :class:`~jaxfm.graph.packed.PackedBatch` with T rows, G slots, Q targets ->
      ``tokens [T, D]``, ``latents [G, K, D]``, ``node_embedding [Q, D]``, ``logits [Q, C]``,
      ``prediction [Q]``, ``graph_logits [G, C]`` (graph decoder on).
    """

    config: GraphFMConfig

    def setup(self):
        cfg = self.config
        if not cfg.datasets:
            raise ValueError("GraphFM: config.datasets is empty (the per-dataset table)")
        dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
        self.tokenizer = NodeTokenizer(
            num_datasets=len(cfg.datasets),
            dim=cfg.dim,
            pe_width=cfg.pe_channels,
            feature_hidden=cfg.hidden_features,
            signnet_hidden=cfg.signnet_hidden,
            feature_mlp=cfg.feature_mlp,
            dtype=dtype,
        )
        self.encoder = PerceiverEncoder(
            num_latents=cfg.num_latents,
            depth=cfg.encoder_depth,
            cross_heads=cfg.cross_heads,
            self_heads=cfg.self_heads,
            mlp_ratio=cfg.mlp_ratio,
            dropout=cfg.dropout,
            eps=cfg.layer_norm_eps,
            attention=cfg.attention,
            bucket_nodes=cfg.bucket_nodes,
            dtype=dtype,
        )
        self.decoder = NodeDecoder(
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_heads,
            mlp_ratio=cfg.mlp_ratio,
            dropout=cfg.dropout,
            eps=cfg.layer_norm_eps,
            dtype=dtype,
        )
        classes = tuple(d.num_classes for d in cfg.datasets)
        self.heads = DatasetHeads(classes)
        if cfg.graph_decoder:
            self.graph_decoder = GraphDecoder(
                cfg.cross_heads, cfg.mlp_ratio, cfg.layer_norm_eps, dtype=dtype
            )
            self.graph_heads = DatasetHeads(classes)

    def _tokens(self, batch: PackedBatch):
        return self.tokenizer(
            batch.features,
            batch.pe,
            batch.group_sizes,
            batch.segment_ids,
            num_graphs=batch.num_graph_slots,
        )

    def encode(self, batch: PackedBatch, *, deterministic: bool = True):
        """Per-graph latents ``[G, K, D]`` (float32; zeros for unused slots)."""
        tokens = self._tokens(batch)
        latents = self.encoder(
            tokens, batch.segment_ids, batch.graph_mask, deterministic=deterministic
        )
        return latents.astype(jnp.float32)

    def embed(self, batch: PackedBatch, *, deterministic: bool = True):
        """Node embeddings ``[Q, D]`` (float32) of the batch's targets (no heads run)."""
        tokens = self._tokens(batch)
        latents = self.encoder(
            tokens, batch.segment_ids, batch.graph_mask, deterministic=deterministic
        )
        h = self.decoder(tokens, latents, batch, deterministic=deterministic)
        return h.astype(jnp.float32)

    def __call__(self, batch: PackedBatch, *, deterministic: bool = True):
        """All outputs (see the module docstring); ``deterministic=False`` needs a
        ``"dropout"`` rng when ``config.dropout > 0``."""
        tokens = self._tokens(batch)
        latents = self.encoder(
            tokens, batch.segment_ids, batch.graph_mask, deterministic=deterministic
        )
        h = self.decoder(tokens, latents, batch, deterministic=deterministic)
        logits, prediction = self.heads(h, batch.target_dataset)
        out = {
            "tokens": tokens.astype(jnp.float32),
            "latents": latents.astype(jnp.float32),
            "node_embedding": h.astype(jnp.float32),
            "logits": logits,
            "prediction": prediction,
        }
        if self.config.graph_decoder:
            g = self.graph_decoder(latents, batch.graph_mask)
            out["graph_logits"], _ = self.graph_heads(g, batch.graph_dataset)
        return out
