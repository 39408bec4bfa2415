"""The no-graph baseline: an MLP on each node's flat features, ignoring edges.

It reads the same tokenized ``nodes`` dict as FIMP and returns the same ``predictions`` shapes, so
:func:`jaxfm.fimp.tasks.loss_and_metrics` and the FIMP trainer apply unchanged. The featurisation
(:func:`node_features`) and the output heads (:func:`task_head`) are shared with the GNN baselines
(:class:`jaxfm.baselines.node_gnn.NodeGNN`):

* genes: the sampled tokens scattered back to a dense ``[G]`` expression vector (masked values
  zeroed, plus a ``[G]`` indicator of masked genes); expression predictions are read back at the
  tokens' genes ``[N, L]``; cell-type logits ``[N, C]``;
* image: flattened pixels -> logits;
* fmri: the signal with masked patches filled (``fill``: zeros by default, or the FIMP paper's
  appendix B.3 fillings: random noise, the region's mean, linear interpolation in time) plus the
  patch-mask indicator -> ``[N, P, patch]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.fimp.config import FMRITokenizerConfig, GeneTokenizerConfig, ImageTokenizerConfig
from jaxfm.fimp.tokenizers import patchify_signal

__all__ = ["FILLS", "NodeMLP", "fill_masked", "fill_rng", "node_features", "task_head"]

#: How masked fMRI patches reach the baselines' inputs (FIMP paper, appendix B.3, Table 4).
#: ``zero``: zeros (the default); ``noise``: standard normal noise (signals are z-scored per
#: region); ``mean``: the region's mean over its unmasked timepoints; ``interp``: linear
#: interpolation between the nearest unmasked timepoints before and after (the nearest one at the
#: ends of the recording).
FILLS = ("zero", "noise", "mean", "interp")

Tokenizer = GeneTokenizerConfig | ImageTokenizerConfig | FMRITokenizerConfig


def _dense_genes(nodes: Mapping[str, jax.Array], num_genes: int, hide_masked: bool):
    ids, tmask = nodes["gene_ids"], nodes["token_mask"].astype(bool)
    vmask = nodes.get("value_mask")
    hidden = tmask & vmask.astype(bool) if (hide_masked and vmask is not None) else tmask & False
    values = jnp.where(tmask & ~hidden, nodes["values"], 0.0)
    onehot = jax.nn.one_hot(ids, num_genes, dtype=values.dtype)  # [N, L, G]
    dense = jnp.einsum("nl,nlg->ng", values, onehot)
    masked = jnp.einsum("nl,nlg->ng", hidden.astype(values.dtype), onehot)
    return dense, masked, onehot


def _interpolate(x: jax.Array, visible: jax.Array) -> jax.Array:
    """Linear interpolation of each row over its visible entries (constant past the ends)."""
    n, t = x.shape
    idx = jnp.broadcast_to(jnp.arange(t), (n, t))
    prev = jax.lax.cummax(jnp.where(visible, idx, -1), axis=1)  # last visible index <= t
    nxt = jax.lax.cummin(jnp.where(visible, idx, t), axis=1, reverse=True)  # first visible >= t
    x_prev = jnp.take_along_axis(x, jnp.clip(prev, 0, t - 1), axis=1)
    x_next = jnp.take_along_axis(x, jnp.clip(nxt, 0, t - 1), axis=1)
    gap = jnp.maximum(nxt - prev, 1)
    inner = x_prev + (x_next - x_prev) * (idx - prev) / gap
    out = jnp.where(prev < 0, x_next, jnp.where(nxt >= t, x_prev, inner))
    return jnp.where((prev < 0) & (nxt >= t), 0.0, out)  # no visible entry at all: 0


def fill_masked(
    x: jax.Array, visible: jax.Array, fill: str = "zero", rng: jax.Array | None = None
) -> jax.Array:
    """Replaces the hidden entries of each row of ``x`` (a node's time series).

    Args:
      x: values; only the ``visible`` entries are read.
      visible: ``True`` where the value may be seen.
      fill: one of :data:`FILLS`.
      rng: PRNG key for ``fill="noise"`` (default: a fixed key, so evaluation is deterministic).

    Returns:
      ``x`` with visible entries kept and hidden ones filled.

    Shapes:
      x, visible, returns: ``[N, T]``.

    Raises:
      ValueError: unknown ``fill``.

    Example:
      >>> x = jnp.array([[1.0, 9.0, 9.0, 4.0]])
      >>> vis = jnp.array([[True, False, False, True]])
      >>> fill_masked(x, vis, "interp").tolist()
      [[1.0, 2.0, 3.0, 4.0]]
      >>> fill_masked(x, vis, "mean").tolist()
      [[1.0, 2.5, 2.5, 4.0]]
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    visible = visible.astype(bool)
    if fill == "zero":
        filled = jnp.zeros_like(x)
    elif fill == "noise":
        rng = jax.random.key(0) if rng is None else rng
        filled = jax.random.normal(rng, x.shape, x.dtype)
    elif fill == "mean":
        count = visible.sum(axis=1, keepdims=True)
        total = jnp.where(visible, x, 0.0).sum(axis=1, keepdims=True)
        filled = jnp.broadcast_to(total / jnp.maximum(count, 1), x.shape)
    else:
        filled = _interpolate(jnp.where(visible, x, 0.0), visible)
    return jnp.where(visible, x, filled)


def node_features(
    nodes: Mapping[str, jax.Array],
    tokenizer: Tokenizer,
    task: str,
    *,
    fill: str = "zero",
    rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """Flat per-node input features of the FIMP tasks for graph-free featurisation.

    Args:
      nodes: the tokenized FIMP ``nodes`` dict (see :mod:`jaxfm.fimp.tasks`).
      tokenizer: the task's tokenizer config.
      task: FIMP task (``expression`` hides the masked values).
      fill: fMRI only: how masked patches are filled (:data:`FILLS`).
      rng: PRNG key for ``fill="noise"``.

    Returns:
      ``(x, onehot)``: float32 features and, for gene tokenizers, the token -> gene one-hot that
      :func:`task_head` reads expression predictions back with (else ``None``).

    Shapes:
      genes: x ``[N, 2G]`` (dense values ⊕ masked indicator), onehot ``[N, L, G]``;
      image: x ``[N, H*W*C]``; fmri: x ``[N, T + P]`` (filled signal ⊕ patch mask).

    Raises:
      ValueError: ``fill`` other than ``zero`` for a non-fMRI tokenizer, or unknown.
    """
    if fill != "zero" and not isinstance(tokenizer, FMRITokenizerConfig):
        raise ValueError(f"fill={fill!r} applies to the fmri task only (masked patches)")
    onehot = None
    if isinstance(tokenizer, GeneTokenizerConfig):
        dense, masked, onehot = _dense_genes(nodes, tokenizer.num_genes, task == "expression")
        x = jnp.concatenate([dense, masked], axis=-1)
    elif isinstance(tokenizer, ImageTokenizerConfig):
        x = nodes["image"].reshape(nodes["image"].shape[0], -1)
    else:
        patches = patchify_signal(nodes["signal"], tokenizer.patch_size)  # [N, P, patch]
        pmask = nodes["patch_mask"].astype(bool)
        visible = jnp.broadcast_to(~pmask[..., None], patches.shape)
        n = patches.shape[0]
        signal = fill_masked(
            patches.reshape(n, -1).astype(jnp.float32),  # [N, T]
            visible.reshape(n, -1),
            fill,
            rng,
        )
        x = jnp.concatenate([signal, pmask.astype(jnp.float32)], axis=-1)
    return x.astype(jnp.float32), onehot


def task_head(
    h: jax.Array,
    task: str,
    tokenizer: Tokenizer,
    num_classes: int | None,
    onehot: jax.Array | None,
) -> jax.Array:
    """The task's output layer (a Dense named ``out``); call inside a compact ``__call__``.

    Shapes:
      h: ``[N, F]``; returns expression ``[N, L]`` (read at the tokens' genes), fmri
      ``[N, P, patch]``, classification ``[N, C]``.
    """
    if task == "expression":
        out = nn.Dense(tokenizer.num_genes, name="out")(h)  # [N, G]
        return jnp.einsum("ng,nlg->nl", out, onehot)
    if task == "fmri":
        out = nn.Dense(tokenizer.num_patches * tokenizer.patch_size, name="out")(h)
        return out.reshape(out.shape[0], tokenizer.num_patches, tokenizer.patch_size)
    return nn.Dense(num_classes, name="out")(h)


def fill_rng(module: nn.Module, fill: str, deterministic: bool) -> jax.Array | None:
    """The noise key of a baseline: a fresh ``dropout``-stream key in training, else fixed."""
    if fill == "noise" and not deterministic and module.has_rng("dropout"):
        return module.make_rng("dropout")
    return None


class NodeMLP(nn.Module):
    """MLP baseline without message passing.

    Attributes:
      task: FIMP task name.
      tokenizer: the task's tokenizer config (gives G, image size, patches).
      hidden: hidden width; ``depth``: hidden layers; ``num_classes``: classification only.
      fill: fMRI masked-patch filling (:data:`FILLS`).

    Returns from ``apply(variables, nodes, senders, receivers, node_mask=, edge_mask=,
    deterministic=)`` ``{"predictions", "node_embedding"}`` like ``FIMPTaskModel``.
    """

    task: str
    tokenizer: Tokenizer
    num_classes: int | None = None
    hidden: int = 128
    depth: int = 2
    dropout: float = 0.1
    fill: str = "zero"

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
        del senders, receivers, edge_mask, node_mask  # no graph
        rng = fill_rng(self, self.fill, deterministic)
        h, onehot = node_features(nodes, self.tokenizer, self.task, fill=self.fill, rng=rng)
        for i in range(self.depth):
            h = nn.gelu(nn.Dense(self.hidden, name=f"dense_{i}")(h))
            h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        pred = task_head(h, self.task, self.tokenizer, self.num_classes, onehot)
        return {"predictions": pred, "node_embedding": h}
