"""FIMP task registry: tokenizer kind, head and a pure loss per task, and the task model.

Tasks (paper §4, appendix B):

* ``expression``: masked gene-expression prediction; 80 % of a cell's sampled genes are masked
  upstream (``value_mask``); MSE (and R²) on masked positions of target nodes only.
* ``celltype``: cell-type classification from gene tokens; cross-entropy, accuracy, macro-F1.
* ``image``: image (country) classification from ViT patch tokens; same metrics.
* ``fmri``: masked patch reconstruction of brain-region signals; MSE and R² on masked patches.

Batch ``nodes`` keys used by the losses: ``target_mask [N]`` bool (nodes whose loss counts, always
required); classification ``label [N]`` int; expression ``target_values [N, L]`` (the original
values), ``value_mask [N, L]``, ``token_mask [N, L]``; fmri ``signal [N, T]`` (the unmasked
signal), ``patch_mask [N, P]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
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
from jaxfm.fimp.heads import ClassificationHead, MaskedValueHead, PatchReconstructionHead
from jaxfm.fimp.model import FIMP
from jaxfm.fimp.tokenizers import patchify_signal
from jaxfm.ops import metrics

__all__ = ["TASKS", "FIMPTaskModel", "TaskSpec", "loss_and_metrics"]

Metrics = dict[str, jax.Array]


def _valid_nodes(nodes: Mapping[str, jax.Array], node_mask) -> jax.Array:
    target = jnp.asarray(nodes["target_mask"], bool)
    return target if node_mask is None else target & jnp.asarray(node_mask, bool)


def _expression_loss(outputs, nodes, node_mask) -> tuple[jax.Array, Metrics]:
    """MSE on masked gene values of valid target nodes (appendix B.2)."""
    valid = (
        jnp.asarray(nodes["value_mask"], bool)
        & jnp.asarray(nodes["token_mask"], bool)
        & _valid_nodes(nodes, node_mask)[:, None]
    )  # [N, L]
    pred, target = outputs["predictions"], nodes["target_values"]
    mse = metrics.masked_mse(pred, target, valid)
    r2 = metrics.r2_score(pred, target, valid)
    return mse, {"loss": mse, "mse": mse, "r2": r2, "count": jnp.sum(valid, dtype=jnp.float32)}


def _classification_loss(outputs, nodes, node_mask) -> tuple[jax.Array, Metrics]:
    """Cross-entropy, accuracy and macro-F1 on valid target nodes."""
    valid = _valid_nodes(nodes, node_mask)  # [N]
    logits, labels = outputs["predictions"], nodes["label"]
    ce = metrics.softmax_cross_entropy(logits, labels, valid)
    return ce, {
        "loss": ce,
        "cross_entropy": ce,
        "accuracy": metrics.accuracy(logits, labels, valid),
        "macro_f1": metrics.macro_f1(logits, labels, valid),
        "count": jnp.sum(valid, dtype=jnp.float32),
    }


def _fmri_loss(outputs, nodes, node_mask) -> tuple[jax.Array, Metrics]:
    """MSE and R² on masked patches of valid target regions (appendix B.3)."""
    pred = outputs["predictions"]  # [N, P, patch]
    target = patchify_signal(nodes["signal"], pred.shape[-1])  # [N, P, patch]
    valid = (
        jnp.asarray(nodes["patch_mask"], bool) & _valid_nodes(nodes, node_mask)[:, None]
    )  # [N, P]
    mse = metrics.masked_mse(pred, target, valid)
    r2 = metrics.r2_score(pred, target, valid)
    count = jnp.sum(valid, dtype=jnp.float32) * pred.shape[-1]
    return mse, {"loss": mse, "mse": mse, "r2": r2, "count": count}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """What a task needs: its tokenizer config type, head and loss.

    Attributes:
      name: registry key.
      tokenizer: the tokenizer config class the task's FIMP config must use.
      make_head: ``(config, num_classes) -> flax module`` mapping FIMP outputs to predictions.
      loss_and_metrics: pure ``(outputs, nodes, node_mask) -> (loss, metrics)``.
      needs_num_classes: whether the head needs ``num_classes``.
    """

    name: str
    tokenizer: type
    make_head: Callable[[FIMPConfig, int | None], nn.Module]
    loss_and_metrics: Callable[..., tuple[jax.Array, Metrics]]
    needs_num_classes: bool = False


TASKS: dict[str, TaskSpec] = {
    "expression": TaskSpec(
        name="expression",
        tokenizer=GeneTokenizerConfig,
        make_head=lambda cfg, c: MaskedValueHead(name="head"),
        loss_and_metrics=_expression_loss,
    ),
    "celltype": TaskSpec(
        name="celltype",
        tokenizer=GeneTokenizerConfig,
        make_head=lambda cfg, c: ClassificationHead(c, name="head"),
        loss_and_metrics=_classification_loss,
        needs_num_classes=True,
    ),
    "image": TaskSpec(
        name="image",
        tokenizer=ImageTokenizerConfig,
        make_head=lambda cfg, c: ClassificationHead(c, name="head"),
        loss_and_metrics=_classification_loss,
        needs_num_classes=True,
    ),
    "fmri": TaskSpec(
        name="fmri",
        tokenizer=FMRITokenizerConfig,
        make_head=lambda cfg, c: PatchReconstructionHead(cfg.tokenizer.patch_size, name="head"),
        loss_and_metrics=_fmri_loss,
    ),
}


def _spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ValueError(f"unknown FIMP task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]


def loss_and_metrics(
    task: str,
    outputs: Mapping[str, jax.Array],
    nodes: Mapping[str, jax.Array],
    node_mask: jax.Array | None = None,
) -> tuple[jax.Array, Metrics]:
    """The task's scalar loss and float32 metrics (``loss``, ``count`` of valid targets, and
    ``mse``/``r2`` or ``cross_entropy``/``accuracy``/``macro_f1``); all 0 when nothing counts.

    ``count`` weights per-batch means when averaging over batches (macro-F1 is not additive:
    recompute it from gathered logits for exact epoch values).
    """
    return _spec(task).loss_and_metrics(outputs, nodes, node_mask)


class FIMPTaskModel(nn.Module):
    """FIMP trunk + the task's head.

    Attributes:
      config: FIMP config whose tokenizer matches the task.
      task: a key of :data:`TASKS`.
      num_classes: classes (classification tasks only).

    Parameters: ``fimp`` (:class:`~jaxfm.fimp.model.FIMP`) and ``head``.

    Returns from ``apply(variables, nodes, senders, receivers, node_mask=, edge_mask=,
    deterministic=, rngs=)`` a dict: ``predictions`` (expression ``[N, L]``, celltype/image
    logits ``[N, C]``, fmri ``[N, P, patch_size]``; float32), ``node_embedding [N, D]``,
    ``token_mask [N, L]``; with ``attention_edges=`` (edge indices ``[Es]``) also
    ``attention_maps [num_layers, num_message_layers, Es, H, L, L]`` (see :class:`FIMP`).
    """

    config: FIMPConfig
    task: str
    num_classes: int | None = None

    def _check(self) -> TaskSpec:
        spec = _spec(self.task)
        if not isinstance(self.config.tokenizer, spec.tokenizer):
            raise ValueError(
                f"task {self.task!r} needs a {spec.tokenizer.__name__}, got "
                f"{type(self.config.tokenizer).__name__}"
            )
        if spec.needs_num_classes and not (
            isinstance(self.num_classes, int) and self.num_classes > 1
        ):
            raise ValueError(f"task {self.task!r} needs num_classes >= 2, got {self.num_classes}")
        return spec

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
        spec = self._check()
        outputs = FIMP(self.config, name="fimp")(
            nodes,
            senders,
            receivers,
            node_mask=node_mask,
            edge_mask=edge_mask,
            deterministic=deterministic,
            attention_edges=attention_edges,
        )
        result = {
            "predictions": spec.make_head(self.config, self.num_classes)(outputs),
            "node_embedding": outputs["node_embedding"],
            "token_mask": outputs["token_mask"],
        }
        if attention_edges is not None:
            result["attention_maps"] = outputs["attention_maps"]
        return result
