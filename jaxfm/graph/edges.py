"""Edge-list edits in numpy: self loops, undirected edge sets."""

from __future__ import annotations

import numpy as np

__all__ = ["add_self_loops", "remove_self_loops", "to_undirected"]


def add_self_loops(
    senders: np.ndarray,
    receivers: np.ndarray,
    num_nodes: int,
    *,
    node_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Appends a self-loop ``(i, i)`` for every valid node that does not already have one.

    Existing edges keep their positions, so per-edge features of the input still line up with the
    first ``E`` entries; the new loops come after them in node order.

    Args:
      senders: source node of each edge.
      receivers: destination node of each edge.
      num_nodes: ``N``.
      node_mask: optional validity mask; masked-out (e.g. padding) nodes get no loop.

    Returns:
      ``(senders, receivers)`` int32 with ``E + number_of_added_loops`` entries.

    Shapes:
      senders, receivers ``[E]``; node_mask ``[N]``.
    """
    senders, receivers = _edges(senders, receivers, "add_self_loops")
    valid = np.ones(num_nodes, bool) if node_mask is None else np.asarray(node_mask, bool).copy()
    if valid.shape != (num_nodes,):
        raise ValueError(
            f"add_self_loops: node_mask must have shape [{num_nodes}], got {valid.shape}"
        )
    loops = senders[senders == receivers]
    valid[loops[(loops >= 0) & (loops < num_nodes)]] = False
    new = np.flatnonzero(valid).astype(np.int32)
    return np.concatenate([senders, new]), np.concatenate([receivers, new])


def remove_self_loops(senders: np.ndarray, receivers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drops every edge ``(i, i)``; the other edges keep their order (their feature rows are
    ``edges[senders != receivers]``).

    Shapes:
      senders, receivers ``[E] -> [E']``.
    """
    senders, receivers = _edges(senders, receivers, "remove_self_loops")
    keep = senders != receivers
    return senders[keep], receivers[keep]


def to_undirected(senders: np.ndarray, receivers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adds the reverse of every edge and removes duplicates.

    Returns:
      ``(senders, receivers)`` int32, unique pairs sorted by receiver then sender. Edge features do
      not survive (the edge set is rebuilt).
    """
    senders, receivers = _edges(senders, receivers, "to_undirected")
    s = np.concatenate([senders, receivers])
    r = np.concatenate([receivers, senders])
    pairs = np.unique(np.stack([r, s], axis=1), axis=0)  # rows sorted by (receiver, sender)
    return pairs[:, 1].astype(np.int32), pairs[:, 0].astype(np.int32)


def _edges(senders, receivers, fn: str) -> tuple[np.ndarray, np.ndarray]:
    senders, receivers = np.asarray(senders), np.asarray(receivers)
    if senders.ndim != 1 or senders.shape != receivers.shape:
        raise ValueError(
            f"{fn}: senders and receivers must be 1-D of equal length, got {senders.shape} and "
            f"{receivers.shape}"
        )
    if senders.size and not (
        np.issubdtype(senders.dtype, np.integer) and np.issubdtype(receivers.dtype, np.integer)
    ):
        raise ValueError(f"{fn}: senders/receivers must be integers, got {senders.dtype}")
    return senders.astype(np.int32), receivers.astype(np.int32)
