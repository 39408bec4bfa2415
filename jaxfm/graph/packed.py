"""The packed multi-graph batch GraphFM trains on (the contract between data and model).

Many graphs (whole small graphs, or GraphSAINT random-walk subgraphs of large ones) are packed
into ONE node sequence of static length T with no padding between graphs (DESIGN.md, "Data
model"). Rows are ordered by dataset (all rows of dataset 0, then dataset 1, ...), so the
per-dataset feature MLPs run as one grouped matmul (``jax.lax.ragged_dot``) with ``group_sizes``;
inside a dataset, rows of one graph are contiguous. The tail ``T - sum(group_sizes)`` rows are
padding (segment id 0).

Graph slots: a batch holds at most G graphs; the graph in slot ``g`` (0-based) has segment id
``g + 1`` on its rows and its latents are ``latents[g]``. Unused slots have
``graph_mask[g] == False``.

Decoded nodes: the node decoder runs on at most Q *target* nodes (the labelled nodes that carry a
loss, or the nodes to embed); each target names its own row, up to m neighbour rows (sampled
neighbours in the same graph), its graph slot and dataset.

Shapes:
  T: node rows (static budget), F: feature dim (``GraphFMConfig.feature_dim``; a dataset with
  fewer features is zero-padded, one with more is reduced when the corpus is built),
  k: Laplacian PE dim, G: graph slots, Q: targets, m: neighbours per target, S: datasets
  (number of entries in the model's dataset table).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import struct

__all__ = ["TASKS", "DatasetSpec", "PackedBatch", "check_packed_batch"]

#: Tasks a dataset slot can have.
TASKS = ("classification", "regression")


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """One dataset of the table: input width, label space and task.

    Attributes:
      name: unique dataset name (as in the corpus).
      num_features: input feature width (<= ``GraphFMConfig.feature_dim``).
      num_classes: classes of a classification set (>= 1); a regression set may use 0.
      task: ``"classification"`` or ``"regression"``.
    """

    name: str
    num_features: int
    num_classes: int
    task: str = "classification"

    def __post_init__(self):
        _require(bool(self.name), "DatasetSpec.name must be non-empty")
        _require(
            _is_int(self.num_features) and self.num_features >= 1,
            f"DatasetSpec {self.name!r}: num_features must be an int >= 1, got "
            f"{self.num_features!r}",
        )
        _require(
            self.task in TASKS,
            f"DatasetSpec {self.name!r}: task must be one of {TASKS}, got {self.task!r}",
        )
        _require(
            _is_int(self.num_classes) and self.num_classes >= 0,
            f"DatasetSpec {self.name!r}: num_classes must be an int >= 0",
        )
        _require(
            self.task != "classification" or self.num_classes >= 1,
            f"DatasetSpec {self.name!r}: a classification set needs num_classes >= 1",
        )


@struct.dataclass
class PackedBatch:
    """One packed batch (a pytree of arrays; every shape is a static budget).

    Attributes:
      features: ``float32 [T, F]`` node features, zero-padded to F; zero on padding rows.
      pe: ``float32 [T, k]`` Laplacian eigenvector PE of each node in its (sub)graph; columns
        past the graph's size are zero. Zero on padding rows.
      segment_ids: ``int32 [T]`` graph slot + 1 for real rows, 0 for padding.
      group_sizes: ``int32 [S]`` number of rows of each dataset (rows are sorted by dataset);
        ``sum(group_sizes) <= T``, the rest is padding.
      graph_dataset: ``int32 [G]`` dataset index of each graph slot (0 for unused slots).
      graph_mask: ``bool [G]`` slot holds a graph.
      graph_label: ``int32 [G]`` graph-classification label, -1 if none.
      target_index: ``int32 [Q]`` row of each target node (0 for padding targets).
      target_mask: ``bool [Q]`` target is real.
      target_graph: ``int32 [Q]`` graph slot of the target (0-based).
      target_dataset: ``int32 [Q]`` dataset index of the target.
      target_label: ``int32 [Q]`` class label for classification datasets, -1 if unlabelled.
      target_value: ``float32 [Q]`` regression target for regression datasets (0 otherwise).
      target_loss_mask: ``bool [Q]`` target contributes to the loss (has a label in the training
        split); False for padding and for nodes only embedded/evaluated.
      neighbor_index: ``int32 [Q, m]`` rows of sampled neighbours (same graph), 0 for padding.
      neighbor_mask: ``bool [Q, m]`` neighbour slot is real.
    """

    features: jax.Array
    pe: jax.Array
    segment_ids: jax.Array
    group_sizes: jax.Array
    graph_dataset: jax.Array
    graph_mask: jax.Array
    graph_label: jax.Array
    target_index: jax.Array
    target_mask: jax.Array
    target_graph: jax.Array
    target_dataset: jax.Array
    target_label: jax.Array
    target_value: jax.Array
    target_loss_mask: jax.Array
    neighbor_index: jax.Array
    neighbor_mask: jax.Array

    @property
    def num_rows(self) -> int:
        return self.features.shape[0]

    @property
    def num_graph_slots(self) -> int:
        return self.graph_mask.shape[0]

    @property
    def num_targets(self) -> int:
        return self.target_index.shape[0]


def check_packed_batch(batch: PackedBatch, *, num_datasets: int | None = None) -> None:
    """Validates shapes, dtypes and the packing invariants of a host-side (numpy) batch.

    Cheap enough to run on every batch the pipeline produces; raises ``ValueError`` naming the
    field and the violated invariant.
    """
    b = {k: np.asarray(v) for k, v in vars(batch).items()}
    t, _ = b["features"].shape
    g = b["graph_mask"].shape[0]
    q = b["target_index"].shape[0]
    expect = {
        "pe": (t,),
        "segment_ids": (t,),
        "graph_dataset": (g,),
        "graph_label": (g,),
        "target_mask": (q,),
        "target_graph": (q,),
        "target_dataset": (q,),
        "target_label": (q,),
        "target_value": (q,),
        "target_loss_mask": (q,),
        "neighbor_index": (q,),
        "neighbor_mask": (q,),
    }
    for name, lead in expect.items():
        if b[name].shape[: len(lead)] != lead:
            raise ValueError(
                f"PackedBatch.{name}: leading shape {b[name].shape[: len(lead)]} != {lead}"
            )
    if b["neighbor_index"].shape != b["neighbor_mask"].shape:
        raise ValueError("PackedBatch.neighbor_index and neighbor_mask must have the same shape")
    sizes = b["group_sizes"]
    if num_datasets is not None and sizes.shape != (num_datasets,):
        raise ValueError(f"PackedBatch.group_sizes: shape {sizes.shape} != ({num_datasets},)")
    if (sizes < 0).any() or sizes.sum() > t:
        raise ValueError(f"PackedBatch.group_sizes: {sizes} must be >= 0 and sum to <= T={t}")
    seg = b["segment_ids"]
    used = int(sizes.sum())
    if (seg[:used] <= 0).any() or (seg[used:] != 0).any():
        raise ValueError("PackedBatch.segment_ids: rows < sum(group_sizes) need ids >= 1, rest 0")
    if seg.max(initial=0) > g:
        raise ValueError(f"PackedBatch.segment_ids: id {seg.max()} exceeds the {g} graph slots")
    real_slots = np.unique(seg[seg > 0]) - 1
    if not b["graph_mask"][real_slots].all():
        raise ValueError("PackedBatch.graph_mask: a slot with rows is marked unused")
    tm = b["target_mask"]
    ti, tg = b["target_index"][tm], b["target_graph"][tm]
    if ((ti < 0) | (ti >= used)).any():
        raise ValueError("PackedBatch.target_index: a real target points outside the real rows")
    if (seg[ti] != tg + 1).any():
        raise ValueError("PackedBatch.target_graph: a target's slot differs from its row's graph")
    nm = b["neighbor_mask"] & tm[:, None]
    ni = b["neighbor_index"]
    if ((ni[nm] < 0) | (ni[nm] >= used)).any():
        raise ValueError("PackedBatch.neighbor_index: a real neighbour points outside real rows")
    same = seg[np.where(nm, ni, 0)] == (b["target_graph"][:, None] + 1)
    if not same[nm].all():
        raise ValueError("PackedBatch.neighbor_index: a neighbour lies in another graph")
    if (b["target_loss_mask"] & ~tm).any():
        raise ValueError("PackedBatch.target_loss_mask: set on a padding target")
