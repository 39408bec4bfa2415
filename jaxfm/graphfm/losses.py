"""GraphFM multi-task loss over every dataset in a batch, and summable metrics.

loss = mean cross-entropy over loss-carrying targets of classification datasets
     + mean squared error over those of regression datasets
     + mean graph cross-entropy over labelled graph slots (graph decoder on).
Each term is 0 when the batch has none of its kind. Metrics are sums (``correct``, ``count``,
per-dataset ``dataset_correct [S]`` / ``dataset_count [S]``) so they add across buckets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfm.graph.packed import PackedBatch
from jaxfm.graphfm.config import GraphFMConfig

__all__ = ["loss_and_metrics"]


def loss_and_metrics(outputs: dict, batch: PackedBatch, config: GraphFMConfig):
    """``(loss, metrics)`` for one packed bucket (see the module docstring).

    Args:
      outputs: :class:`~jaxfm.graphfm.model.GraphFM` outputs (``logits``, ``prediction``, and
        ``graph_logits`` when the graph decoder is on).
      batch: the packed batch (``target_loss_mask``, labels, values, graph labels).
      config: the model config (its dataset table says which datasets are regression sets).

    Returns:
      ``loss`` (scalar float32) and ``metrics``: ``correct``, ``count`` (classification
      targets in the loss), ``sse``, ``reg_count``, ``dataset_correct [S]``,
      ``dataset_count [S]`` and, with graph logits, ``graph_correct``, ``graph_count``. All are
      sums, so they add across buckets and steps.

    Shapes:
      logits ``[Q, C]``, prediction ``[Q]``, graph_logits ``[G, C]``.
    """
    s = len(config.datasets)
    is_reg = jnp.asarray(np.array([d.task == "regression" for d in config.datasets]))
    ds = batch.target_dataset
    reg = is_reg[ds]
    labels = batch.target_label
    cls_mask = batch.target_loss_mask & ~reg & (labels >= 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(outputs["logits"], jnp.maximum(labels, 0))
    n_cls = cls_mask.sum()
    loss = jnp.sum(jnp.where(cls_mask, ce, 0)) / jnp.maximum(n_cls, 1)
    reg_mask = batch.target_loss_mask & reg
    sq = (outputs["prediction"] - batch.target_value) ** 2
    n_reg = reg_mask.sum()
    sse = jnp.sum(jnp.where(reg_mask, sq, 0))
    loss = loss + sse / jnp.maximum(n_reg, 1)
    correct = (jnp.argmax(outputs["logits"], -1) == labels) & cls_mask
    metrics = {
        "correct": correct.sum().astype(jnp.float32),
        "count": n_cls.astype(jnp.float32),
        "sse": sse,
        "reg_count": n_reg.astype(jnp.float32),
        "dataset_correct": jax.ops.segment_sum(correct.astype(jnp.float32), ds, s),
        "dataset_count": jax.ops.segment_sum(cls_mask.astype(jnp.float32), ds, s),
    }
    if "graph_logits" in outputs:
        gmask = batch.graph_mask & (batch.graph_label >= 0)
        gce = optax.softmax_cross_entropy_with_integer_labels(
            outputs["graph_logits"], jnp.maximum(batch.graph_label, 0)
        )
        n_g = gmask.sum()
        loss = loss + jnp.sum(jnp.where(gmask, gce, 0)) / jnp.maximum(n_g, 1)
        gcorrect = (jnp.argmax(outputs["graph_logits"], -1) == batch.graph_label) & gmask
        metrics["graph_correct"] = gcorrect.sum().astype(jnp.float32)
        metrics["graph_count"] = n_g.astype(jnp.float32)
    return loss, metrics
