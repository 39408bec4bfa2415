"""The no-graph baseline: an MLP on each node's flat features, ignoring edges.

It reads the same tokenized ``nodes`` dict as FIMP and returns the same ``predictions`` shapes, so
:func:`jaxfm.fimp.tasks.loss_and_metrics` and the FIMP trainer apply unchanged:

* genes: the sampled tokens scattered back to a dense ``[G]`` expression vector (masked values
  zeroed, plus a ``[G]`` indicator of masked genes); expression predictions are read back at the
  tokens' genes ``[N, L]``; cell-type logits ``[N, C]``;
* image: flattened pixels -> logits;
* fmri: the signal with masked patches zeroed plus the patch-mask indicator -> ``[N, P, patch]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.fimp.config import FMRITokenizerConfig, GeneTokenizerConfig, ImageTokenizerConfig
from jaxfm.fimp.tokenizers import patchify_signal

__all__ = ["NodeMLP"]


def _dense_genes(nodes: Mapping[str, jax.Array], num_genes: int, hide_masked: bool):
    ids, tmask = nodes["gene_ids"], nodes["token_mask"].astype(bool)
    vmask = nodes.get("value_mask")
    hidden = tmask & vmask.astype(bool) if (hide_masked and vmask is not None) else tmask & False
    values = jnp.where(tmask & ~hidden, nodes["values"], 0.0)
    onehot = jax.nn.one_hot(ids, num_genes, dtype=values.dtype)  # [N, L, G]
    dense = jnp.einsum("nl,nlg->ng", values, onehot)
    masked = jnp.einsum("nl,nlg->ng", hidden.astype(values.dtype), onehot)
    return dense, masked, onehot


class NodeMLP(nn.Module):
    """MLP baseline without message passing.

    Attributes:
      task: FIMP task name.
      tokenizer: the task's tokenizer config (gives G, image size, patches).
      hidden: hidden width; ``depth``: hidden layers; ``num_classes``: classification only.

    Returns from ``apply(variables, nodes, senders, receivers, node_mask=, edge_mask=,
    deterministic=)`` ``{"predictions", "node_embedding"}`` like ``FIMPTaskModel``.
    """

    task: str
    tokenizer: GeneTokenizerConfig | ImageTokenizerConfig | FMRITokenizerConfig
    num_classes: int | None = None
    hidden: int = 128
    depth: int = 2
    dropout: float = 0.1

    @nn.compact
    def __call__(
        self,
        nodes,
        senders=None,
        receivers=None,
        *,
        node_mask=None,
        edge_mask=None,
        deterministic: bool = True,
    ):
        del senders, receivers, edge_mask  # no graph
        tok = self.tokenizer
        if isinstance(tok, GeneTokenizerConfig):
            dense, masked, onehot = _dense_genes(nodes, tok.num_genes, self.task == "expression")
            x = jnp.concatenate([dense, masked], axis=-1)
        elif isinstance(tok, ImageTokenizerConfig):
            x = nodes["image"].reshape(nodes["image"].shape[0], -1)
        else:
            patches = patchify_signal(nodes["signal"], tok.patch_size)  # [N, P, patch]
            pmask = nodes["patch_mask"].astype(bool)
            patches = jnp.where(pmask[..., None], 0.0, patches)
            x = jnp.concatenate(
                [patches.reshape(patches.shape[0], -1), pmask.astype(jnp.float32)], axis=-1
            )
        h = x.astype(jnp.float32)
        for i in range(self.depth):
            h = nn.gelu(nn.Dense(self.hidden, name=f"dense_{i}")(h))
            h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        if self.task == "expression":
            out = nn.Dense(tok.num_genes, name="out")(h)  # [N, G]
            pred = jnp.einsum("ng,nlg->nl", out, onehot)
        elif self.task == "fmri":
            out = nn.Dense(tok.num_patches * tok.patch_size, name="out")(h)
            pred = out.reshape(out.shape[0], tok.num_patches, tok.patch_size)
        else:
            pred = nn.Dense(self.num_classes, name="out")(h)
        return {"predictions": pred, "node_embedding": h}
