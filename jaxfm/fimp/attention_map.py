"""Token x token cross-attention between neighbouring nodes, averaged per (receiver group, sender
group) pair: gene x gene maps between cell types, patch x patch maps between brain-region groups.

FIMP, App. C: attention matrices of all connected node pairs are extracted from the message
creator, averaged over heads, and aggregated by node group (cell types; functional regions).

Token positions are mapped to *token ids* before averaging (for genes the gene id of each sampled
token, since every cell samples its own genes; for images/fMRI the patch index), so maps are
``[G, G, V, V]`` over ids, with per-entry counts of how many token pairs contributed.
"""

from __future__ import annotations

import jax
import jraph
import numpy as np
from tqdm.auto import tqdm

from jaxfm.graph import Budget, edge_mask, node_mask, pad_to_budget

__all__ = ["group_attention_maps", "plot_group_maps"]


def group_attention_maps(
    model,
    params,
    graphs: list[jraph.GraphsTuple],
    *,
    groups: list[np.ndarray],
    num_groups: int,
    token_ids: list[np.ndarray],
    num_token_ids: int,
    layer: int = 0,
    message_layer: int = 0,
    include_self_loops: bool = False,
    edge_chunk_size: int = 2048,
    max_edges: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Head-averaged attention of every (valid) edge, summed per group pair and token-id pair.

    Args:
      model: a ``FIMPTaskModel`` (or ``FIMP``) accepting ``attention_edges``.
      params: its parameters.
      graphs: graphs whose edges are averaged over (e.g. one tissue graph, or test recordings).
      groups: per graph, the group id ``[N]`` of each node (``-1``: leave the node out).
      num_groups: G.
      token_ids: per graph, ``[N, L]`` int id of each token position.
      num_token_ids: V.
      layer: which FIMP hop; ``message_layer``: which layer of its message creator.
      include_self_loops: also average edges u -> u.
      edge_chunk_size: edges per forward pass (bounds memory).
      max_edges: use at most this many edges per graph (the first ones after a seeded shuffle).

    Returns:
      ``(sums, counts)``, both ``[G, G, V, V]`` float64: summed attention probability and the
      number of (query token, key token) pairs behind each entry. ``sums / counts`` is the mean.
    """
    g, v = num_groups, num_token_ids
    sums = np.zeros(g * g * v * v)
    counts = np.zeros(g * g * v * v)

    @jax.jit
    def edge_maps(params, graph, edges):
        out = model.apply(
            {"params": params},
            graph.nodes,
            graph.senders,
            graph.receivers,
            node_mask=node_mask(graph),
            edge_mask=edge_mask(graph),
            attention_edges=edges,
        )
        maps = out["attention_maps"][layer, message_layer]  # [Es, H, Lq, Lk]
        return maps.mean(axis=1), out["token_mask"]

    for gi, graph in enumerate(graphs):
        nodes = {k: val for k, val in graph.nodes.items() if k != "node_index"}
        n_real, e_real = int(np.sum(graph.n_node)), int(np.sum(graph.n_edge))
        budget = Budget(n_node=n_real + 1, n_edge=e_real, n_graph=len(graph.n_node) + 1)
        graph = pad_to_budget(graph._replace(nodes=nodes), budget)  # masks need the padding graph
        s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
        grp = np.concatenate([np.asarray(groups[gi]), [-1]])  # the padding node has no group
        ids = np.asarray(token_ids[gi])
        keep = (grp[s] >= 0) & (grp[r] >= 0) & (np.asarray(edge_mask(graph)))
        if not include_self_loops:
            keep &= s != r
        edges = np.flatnonzero(keep)
        if max_edges is not None and edges.size > max_edges:
            edges = np.sort(np.random.default_rng(0).choice(edges, max_edges, replace=False))
        chunks = range(0, edges.size, edge_chunk_size)
        for start in tqdm(chunks, desc="attention", disable=not progress, leave=False):
            chunk = edges[start : start + edge_chunk_size]
            padded = np.resize(chunk, edge_chunk_size)  # static shape; extra rows dropped below
            maps, tmask = edge_maps(params, graph, padded)
            maps, tmask = np.asarray(maps, np.float64)[: chunk.size], np.asarray(tmask)
            es, rs = s[chunk], r[chunk]
            pair = (grp[r[chunk]] * g + grp[s[chunk]])[:, None, None]  # [Es, 1, 1]
            idx = (pair * v + ids[rs][:, :, None]) * v + ids[es][:, None, :]  # [Es, Lq, Lk]
            valid = tmask[rs][:, :, None] & tmask[es][:, None, :]
            sums += np.bincount(idx[valid], weights=maps[valid], minlength=sums.size)
            counts += np.bincount(idx[valid], minlength=counts.size)
    shape = (g, g, v, v)
    return sums.reshape(shape), counts.reshape(shape)


def plot_group_maps(mean, counts, path, *, group_names, token_names, top: int = 4) -> list:
    """Heatmaps of the ``top`` group pairs with the most token pairs; returns the pairs drawn.

    Draws on a standalone :class:`matplotlib.figure.Figure` (no pyplot state, no backend
    switch), so it works headless and leaves a notebook's inline plotting untouched.
    """
    from matplotlib.figure import Figure

    totals = counts.sum(axis=(2, 3))
    order = np.argsort(totals, axis=None)[::-1][:top]
    pairs = [np.unravel_index(i, totals.shape) for i in order if totals.flat[i] > 0]
    ncol = min(2, len(pairs)) or 1
    nrow = max(1, -(-len(pairs) // ncol))
    fig = Figure(figsize=(6.5 * ncol, 5.5 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    v = mean.shape[-1]
    for ax in axes.flat[len(pairs) :]:
        ax.axis("off")
    for ax, (a, b) in zip(axes.flat, pairs, strict=False):
        im = ax.imshow(mean[a, b], cmap="viridis", aspect="auto")
        ax.set_title(
            f"{group_names[a]} <- {group_names[b]}  ({int(totals[a, b])} token pairs)", fontsize=9
        )
        ax.set_xlabel("sender token")
        ax.set_ylabel("receiver token")
        if v <= 40:
            ax.set_xticks(range(v), token_names, rotation=90, fontsize=6)
            ax.set_yticks(range(v), token_names, fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("FIMP cross-node attention (head mean), receiver group <- sender group")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return [(int(a), int(b)) for a, b in pairs]
