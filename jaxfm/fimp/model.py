"""The FIMP layer (message creation + COMBINE) and the FIMP model (tokenizer + layers + norm).

Algorithm (one hop): tokens ``H [N, L, D]`` -> messages ``M_v = AGG_u m_{u->v}`` (eqs. 6-7, see
:mod:`jaxfm.fimp.message`) -> ``H' = Norm(H + Dropout(M))`` -> optionally
``H'' = Norm(H' + MLP(H'))``. Padding is handled with explicit masks: tokens of padding nodes
are invalid, edges into or out of padding nodes are dropped, invalid tokens are never attended
and are zero in every layer's output, so nothing leaks from padding into real tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.fimp.config import (
    FIMPConfig,
    FMRITokenizerConfig,
    GeneTokenizerConfig,
    ImageTokenizerConfig,
)
from jaxfm.fimp.message import MessageCreator
from jaxfm.fimp.pretrained import FAMILY_SPECS, make_tokenizer
from jaxfm.fimp.tokenizers import FMRITokenizer, GeneTokenizer, ImageTokenizer
from jaxfm.nn.mlp import Mlp

__all__ = ["FIMP", "FIMPLayer", "ZeroShotEncoder", "masked_mean_pool", "tokenize_nodes"]


def masked_mean_pool(tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
    """Mean over valid tokens (0 for a node without any).

    Shapes:
      tokens ``[N, L, D]``, token_mask ``[N, L]`` -> ``[N, D]``.
    """
    m = token_mask.astype(tokens.dtype)[..., None]  # [N, L, 1]
    total = jnp.sum(tokens * m, axis=1)
    count = jnp.sum(m, axis=1)
    return total / jnp.maximum(count, 1)


def _zero_invalid(h: jax.Array, token_mask: jax.Array) -> jax.Array:
    return jnp.where(token_mask[..., None], h, jnp.zeros((), h.dtype))


def tokenize_nodes(cfg: FIMPConfig, nodes: Mapping[str, jax.Array], *, deterministic: bool = True):
    """Creates the ``tokenizer`` submodule of the calling module and tokenizes ``nodes``.

    Call inside a compact method. The modality (genes / image / fmri) picks the inputs; a
    pretrained family (``cfg.pretrained``) picks the module (:func:`jaxfm.fimp.pretrained.
    make_tokenizer`), else FIMP's own tokenizer.

    Returns:
      ``(tokens [N, L, D], token_mask [N, L])``.
    """
    tok, dtype = cfg.tokenizer, cfg.compute_dtype
    pre = make_tokenizer(cfg.pretrained, "tokenizer")
    if isinstance(tok, GeneTokenizerConfig):
        args = (nodes["gene_ids"], nodes["values"], nodes["token_mask"], nodes.get("value_mask"))
        if pre is None:
            return GeneTokenizer(tok, dim=cfg.dim, dtype=dtype, name="tokenizer")(*args)
        return pre(*args, deterministic=deterministic)
    if isinstance(tok, ImageTokenizerConfig):
        if pre is None:
            return ImageTokenizer(tok, dim=cfg.dim, dtype=dtype, name="tokenizer")(nodes["image"])
        return pre(nodes["image"], deterministic=deterministic)
    if isinstance(tok, FMRITokenizerConfig):
        args = (nodes["signal"], nodes["xyz"], nodes.get("patch_mask"))
        if pre is None:
            return FMRITokenizer(tok, dim=cfg.dim, dtype=dtype, name="tokenizer")(*args)
        return pre(*args, deterministic=deterministic)
    raise ValueError("FIMP: config.tokenizer must be set (see jaxfm.fimp.fimp_config)")


def _prepare_masks(h, token_mask, senders, receivers, node_mask, edge_mask):
    """Edges into or out of padding nodes are not edges; padding nodes have no valid token."""
    n = h.shape[0]
    senders, receivers = jnp.asarray(senders), jnp.asarray(receivers)
    node_mask = jnp.ones((n,), bool) if node_mask is None else jnp.asarray(node_mask, bool)
    edge_mask = jnp.ones(senders.shape, bool) if edge_mask is None else jnp.asarray(edge_mask, bool)
    edge_mask = edge_mask & node_mask[senders] & node_mask[receivers]
    token_mask = token_mask & node_mask[:, None]
    return senders, receivers, token_mask, edge_mask


class FIMPLayer(nn.Module):
    """One FIMP hop: message creator + COMBINE.

    Attributes:
      config: the model config (message creator, aggregation, COMBINE options, dropout, dtype).

    Parameters: ``message`` (:class:`~jaxfm.fimp.message.MessageCreator`), ``self_message`` (with
    ``separate_self``), ``norm``, and with
    ``combine_mlp`` also ``mlp/{fc1,fc2}`` and ``mlp_norm``.

    Shapes:
      h ``[N, L, D]``; token_mask ``[N, L]``; senders, receivers, edge_mask ``[E]`` ->
      ``[N, L, D]`` (zero at invalid tokens).
    """

    config: FIMPConfig

    @nn.compact
    def __call__(
        self,
        h: jax.Array,
        token_mask: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        edge_mask: jax.Array,
        *,
        deterministic: bool = True,
        attention_edges: jax.Array | None = None,
    ):
        cfg = self.config
        dtype = cfg.compute_dtype
        layer_norm = lambda name: nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, name=name)
        creator = lambda name: MessageCreator(
            cfg.message,
            dim=cfg.dim,
            aggregation=cfg.aggregation,
            edge_chunk_size=cfg.edge_chunk_size,
            dropout=cfg.dropout,
            dtype=dtype,
            pretrained=cfg.pretrained,
            name=name,
        )
        is_self = senders == receivers
        res = creator("message")(
            h,
            senders,
            receivers,
            kv_mask=token_mask,
            edge_mask=edge_mask & ~is_self if cfg.separate_self else edge_mask,
            deterministic=deterministic,
            attention_edges=attention_edges,
        )
        m, maps = res if attention_edges is not None else (res, None)
        if cfg.separate_self:
            m = m + creator("self_message")(
                h,
                senders,
                receivers,
                kv_mask=token_mask,
                edge_mask=edge_mask & is_self,
                deterministic=deterministic,
            )
        # COMBINE: H' = Norm(H + Dropout(M)).
        m = nn.Dropout(cfg.dropout)(m, deterministic=deterministic)
        h = layer_norm("norm")(h + m)
        if cfg.combine_mlp:
            # H'' = Norm(H' + MLP(H')).
            mlp = Mlp(
                hidden=cfg.combine_mlp_dim,
                activation=cfg.message.activation,
                dropout=cfg.dropout,
                dtype=dtype,
                name="mlp",
            )
            h = layer_norm("mlp_norm")(h + mlp(h, deterministic=deterministic))
        h = _zero_invalid(h, token_mask)
        return h if maps is None else (h, maps)


class FIMP(nn.Module):
    """FIMP model: modality tokenizer (eq. 5) -> ``num_layers`` FIMP hops -> final norm.

    Attributes:
      config: a :class:`~jaxfm.fimp.config.FIMPConfig` with ``tokenizer`` set.

    Parameters: ``tokenizer``, ``layers_0`` ... ``layers_{num_layers-1}`` (:class:`FIMPLayer`),
    ``final_norm`` (if enabled).

    ``nodes`` keys by tokenizer:
      genes: ``gene_ids [N, L]`` int, ``values [N, L]``, ``token_mask [N, L]`` bool, optional
      ``value_mask [N, L]`` bool; image: ``image [N, H, W, C]``; fmri: ``signal [N, T]``,
      ``xyz [N, 3]``, optional ``patch_mask [N, P]`` bool. Other keys are ignored.
    """

    config: FIMPConfig

    @nn.compact
    def __call__(
        self,
        nodes: Mapping[str, jax.Array],
        senders: jax.Array,
        receivers: jax.Array,
        *,
        node_mask: jax.Array | None = None,
        edge_mask: jax.Array | None = None,
        deterministic: bool = True,
        attention_edges: jax.Array | None = None,
    ) -> dict[str, Any]:
        """Encodes every node's token sequence with ``num_layers`` hops of message passing.

        Args:
          nodes: per-node inputs (see class docstring).
          senders: source node per edge.
          receivers: destination node per edge.
          node_mask: True for real nodes (default: all).
          edge_mask: True for real edges (default: all); combined with the node mask of both
            endpoints.
          deterministic: disables dropout when True (else needs the ``"dropout"`` rng).
          attention_edges: optional edge indices ``[Es]`` whose attention maps to export.

        Returns:
          dict with ``tokens [N, L, D]`` (zero at invalid tokens), ``token_mask [N, L]`` bool,
          ``node_embedding [N, D]`` (masked mean of tokens; 0 for padding nodes), and with
          ``attention_edges`` also ``attention_maps [num_layers, num_message_layers, Es, H, L, L]``.

        Shapes:
          senders, receivers, edge_mask ``[E]``; node_mask ``[N]``.
        """
        cfg = self.config
        h, token_mask = tokenize_nodes(cfg, nodes, deterministic=deterministic)  # [N, L, D]
        senders, receivers, token_mask, edge_mask = _prepare_masks(
            h, token_mask, senders, receivers, node_mask, edge_mask
        )
        h = _zero_invalid(h.astype(cfg.compute_dtype), token_mask)
        maps = []
        for i in range(cfg.num_layers):
            res = FIMPLayer(cfg, name=f"layers_{i}")(
                h,
                token_mask,
                senders,
                receivers,
                edge_mask,
                deterministic=deterministic,
                attention_edges=attention_edges,
            )
            h = res[0] if attention_edges is not None else res
            if attention_edges is not None:
                maps.append(res[1])
        if cfg.final_norm:
            h = nn.LayerNorm(
                epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, name="final_norm"
            )(h)
            h = _zero_invalid(h, token_mask)
        out = {
            "tokens": h,
            "token_mask": token_mask,
            "node_embedding": masked_mean_pool(h, token_mask),
        }
        if attention_edges is not None:
            out["attention_maps"] = jnp.stack(maps)
        return out


class ZeroShotEncoder(nn.Module):
    """Zero-shot FIMP node embeddings from a pretrained model, with no graph training.

    The pretrained tokenizer, then every pretrained encoder layer in cross-node form over the
    whole graph (one creator, ``message``; self-loops are ordinary edges, messages averaged over
    incoming edges), then the foundation's final LayerNorm if it has one (``final_norm``), and the
    mean over each node's valid tokens. On a graph of self-loops only, ``tokens`` is the
    foundation model's own output for each node (ViT ``last_hidden_state``, scGPT
    ``encoder_output``, BrainLM's encoder on one region's tokens).

    Attributes:
      config: a FIMP config with ``pretrained`` a foundation model (see
        :func:`jaxfm.fimp.pretrained.pretrained_fimp_config`).

    Parameters: ``tokenizer``, ``message/layers_{j}``, optional ``final_norm``.

    Shapes:
      as :class:`FIMP`; returns ``tokens [N, L, D]``, ``token_mask [N, L]``,
      ``node_embedding [N, D]``.
    """

    config: FIMPConfig

    @nn.compact
    def __call__(
        self,
        nodes: Mapping[str, jax.Array],
        senders: jax.Array,
        receivers: jax.Array,
        *,
        node_mask: jax.Array | None = None,
        edge_mask: jax.Array | None = None,
    ) -> dict[str, Any]:
        cfg = self.config
        pre = cfg.pretrained
        if pre is None or pre.foundation is None or cfg.message.kind == "attention":
            raise ValueError("ZeroShotEncoder needs a config with a pretrained foundation model")
        h, token_mask = tokenize_nodes(cfg, nodes)
        senders, receivers, token_mask, edge_mask = _prepare_masks(
            h, token_mask, senders, receivers, node_mask, edge_mask
        )
        h = _zero_invalid(h.astype(cfg.compute_dtype), token_mask)
        h = MessageCreator(
            cfg.message,
            dim=cfg.dim,
            aggregation=cfg.aggregation,
            edge_chunk_size=cfg.edge_chunk_size,
            dtype=cfg.compute_dtype,
            pretrained=pre,
            name="message",
        )(h, senders, receivers, kv_mask=token_mask, edge_mask=edge_mask)
        eps = FAMILY_SPECS[pre.family].final_norm_eps(pre.foundation)
        if eps is not None:
            h = nn.LayerNorm(epsilon=eps, dtype=cfg.compute_dtype, name="final_norm")(h)
        h = _zero_invalid(h, token_mask)
        return {
            "tokens": h,
            "token_mask": token_mask,
            "node_embedding": masked_mean_pool(h, token_mask),
        }
