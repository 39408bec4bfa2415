"""Validation of loaded graph datasets: every check names the file and the problem.

Readers call :func:`validate_node_dataset` / :func:`validate_graph_dataset` on what they built, so
a dataset that reaches the corpus has finite features, labels in range, edges inside
``[0, num_nodes)``, at least one node and pairwise-disjoint split masks. Errors are
:class:`DatasetFormatError` (a ``ValueError``) whose message starts with the source path.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from jaxfm.data.graph_dataset import GraphClassificationDataset, NodeDataset, Split

__all__ = [
    "DatasetFormatError",
    "check_edges",
    "check_features",
    "check_splits",
    "masks_to_splits",
    "validate_graph_dataset",
    "validate_node_dataset",
]


class DatasetFormatError(ValueError):
    """A dataset file is unknown, missing, truncated or corrupt, or its contents are invalid.

    The message always starts with the file (or folder) it concerns.
    """


def check_edges(senders, receivers, num_nodes: int, where: str) -> None:
    """Raises unless ``senders``/``receivers`` are equal-length 1-D integer arrays in ``[0, N)``.

    Args:
      senders, receivers: ``[E]`` edge endpoints.
      num_nodes: N (must be >= 1).
      where: file / dataset named in the error.

    Raises:
      DatasetFormatError: zero nodes, mismatched shapes, non-integer or out-of-range indices.
    """
    if num_nodes < 1:
        raise DatasetFormatError(f"{where}: the graph has zero nodes")
    s, r = np.asarray(senders), np.asarray(receivers)
    if s.ndim != 1 or s.shape != r.shape:
        raise DatasetFormatError(
            f"{where}: senders {s.shape} and receivers {r.shape} must be equal-length 1-D arrays"
        )
    if s.size == 0:
        return
    if not (np.issubdtype(s.dtype, np.integer) and np.issubdtype(r.dtype, np.integer)):
        raise DatasetFormatError(f"{where}: edge indices must be integers, got {s.dtype}")
    lo, hi = min(int(s.min()), int(r.min())), max(int(s.max()), int(r.max()))
    if lo < 0 or hi >= num_nodes:
        bad = lo if lo < 0 else hi
        raise DatasetFormatError(
            f"{where}: edge index {bad} is out of range for a graph of {num_nodes} nodes"
        )


def check_features(x, num_nodes: int, where: str) -> None:
    """Raises unless ``x`` is a 2-D ``[N, F]`` array / sparse matrix with finite values."""
    if x.ndim != 2 or x.shape[0] != num_nodes:
        raise DatasetFormatError(
            f"{where}: features have shape {tuple(x.shape)}, expected [{num_nodes}, F]"
        )
    data = x.data if sp.issparse(x) else np.asarray(x)
    if data.size and not np.isfinite(data).all():
        bad = int(np.size(data) - np.isfinite(data).sum())
        raise DatasetFormatError(f"{where}: features contain {bad} NaN/inf value(s)")


def check_splits(splits, num_nodes: int, where: str, labelled: np.ndarray | None = None) -> None:
    """Raises unless every split has boolean ``[N]`` masks that are pairwise disjoint.

    Args:
      splits: sequence of :class:`Split`.
      num_nodes: N (nodes, or graphs for graph-classification folds).
      where: file named in the error.
      labelled: optional ``[N]`` bool; train/val/test may then contain labelled items only.
    """
    for k, split in enumerate(splits):
        masks = {}
        for part in ("train", "val", "test"):
            m = np.asarray(getattr(split, part))
            if m.shape != (num_nodes,) or m.dtype != np.bool_:
                raise DatasetFormatError(
                    f"{where}: split {k} {part} mask has shape {m.shape} and dtype {m.dtype}, "
                    f"expected bool [{num_nodes}]"
                )
            if labelled is not None and (m & ~labelled).any():
                raise DatasetFormatError(
                    f"{where}: split {k} {part} mask contains {int((m & ~labelled).sum())} "
                    "unlabelled item(s)"
                )
            masks[part] = m
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = int((masks[a] & masks[b]).sum())
            if both:
                raise DatasetFormatError(
                    f"{where}: split {k} overlaps: {both} item(s) are in both {a} and {b}"
                )


def _check_labels(y: np.ndarray, n: int, num_classes: int, task: str, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise DatasetFormatError(f"{where}: labels have shape {y.shape}, expected [{n}]")
    if task == "regression":
        if not np.issubdtype(y.dtype, np.floating):
            raise DatasetFormatError(f"{where}: regression targets must be float, got {y.dtype}")
        return np.isfinite(y)
    if task != "classification":
        raise DatasetFormatError(f"{where}: unknown task {task!r}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetFormatError(f"{where}: class labels must be integers, got {y.dtype}")
    if num_classes < 1:
        raise DatasetFormatError(f"{where}: num_classes is {num_classes}, expected >= 1")
    if y.size and (y.min() < -1 or y.max() >= num_classes):
        raise DatasetFormatError(
            f"{where}: labels out of range: found [{int(y.min())}, {int(y.max())}], expected "
            f"-1 (unlabelled) or [0, {num_classes})"
        )
    return y >= 0


def validate_node_dataset(ds: NodeDataset) -> NodeDataset:
    """Checks a :class:`NodeDataset` and returns it unchanged.

    Raises:
      DatasetFormatError: zero nodes, edges out of range, NaN/inf features, labels out of range,
        split masks of the wrong shape, overlapping or containing unlabelled nodes.
    """
    where = ds.source or ds.name
    check_edges(ds.senders, ds.receivers, ds.num_nodes, where)
    check_features(ds.x, ds.num_nodes, where)
    labelled = _check_labels(ds.y, ds.num_nodes, ds.num_classes, ds.task, where)
    check_splits(ds.splits, ds.num_nodes, where, labelled)
    return ds


def validate_graph_dataset(ds: GraphClassificationDataset) -> GraphClassificationDataset:
    """Checks a :class:`GraphClassificationDataset` and returns it unchanged.

    Raises:
      DatasetFormatError: no graphs, a graph with zero nodes or edges out of range, NaN/inf or
        inconsistent feature widths, graph labels out of range, bad or overlapping folds.
    """
    where = ds.source or ds.name
    if not ds.graphs:
        raise DatasetFormatError(f"{where}: the dataset has no graphs")
    widths = set()
    for i, g in enumerate(ds.graphs):
        check_edges(g.senders, g.receivers, g.num_nodes, f"{where} (graph {i})")
        check_features(g.x, g.num_nodes, f"{where} (graph {i})")
        widths.add(int(g.x.shape[1]))
    if len(widths) > 1:
        raise DatasetFormatError(f"{where}: graphs have different feature widths {sorted(widths)}")
    labelled = _check_labels(ds.y, len(ds.graphs), ds.num_classes, "classification", where)
    if not labelled.all():
        raise DatasetFormatError(f"{where}: {int((~labelled).sum())} graph(s) have no label")
    check_splits(ds.folds, len(ds.graphs), where)
    return ds


def masks_to_splits(train, val, test) -> tuple[Split, ...]:
    """``[S, N]`` (or ``[N]``) train/val/test masks -> ``S`` :class:`Split` s of bool masks."""
    tr, va, te = (np.atleast_2d(np.asarray(m)).astype(bool) for m in (train, val, test))
    return tuple(
        Split(train=tr[i].copy(), val=va[i].copy(), test=te[i].copy()) for i in range(tr.shape[0])
    )
