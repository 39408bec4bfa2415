"""Packing one bucket of units (graphs or subgraphs) into a static-budget :class:`PackedBatch`.

A *unit* is what the sampler deals into buckets: a whole small graph or a GraphSAINT subgraph of a
big one, already materialised (:class:`PackUnit`: its features, PE rows, local adjacency, labels
and training mask). :func:`pack_bucket` concatenates a bucket's units into the packed layout of
:mod:`jaxfm.graph.packed`:

- units are ordered by ``(dataset, graph, position in the bucket)``, their rows contiguous, so
  rows are sorted by dataset (``group_sizes`` for ``jax.lax.ragged_dot``); unit ``g`` in that
  order takes graph slot ``g`` (segment id ``g + 1``);
- features are zero-padded to F columns and PEs to k columns; rows past the real ones are zero;
- up to Q *targets* are drawn among the units' labelled training nodes, split over the units in
  proportion to their node counts (water-filling: a unit with fewer candidates than its share
  gives the rest to the others), without replacement;
- each target gets up to m neighbours drawn without replacement from its neighbours inside the
  unit (all of them when it has at most m), as packed row indices, the rest masked.

All randomness comes from one ``numpy`` generator seeded by the caller (the pipeline passes
``(seed, epoch, step, bucket)``), so a bucket packs identically wherever it is packed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxfm.graph.packed import PackedBatch, check_packed_batch

__all__ = ["PackUnit", "PackingBudget", "allocate_targets", "pack_bucket"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackingBudget:
    """Static sizes of one packed bucket (the shapes ``jit`` compiles for).

    Attributes:
      nodes: node rows T.
      graphs: graph slots G.
      targets: decoded target nodes Q.
      neighbors: neighbour slots m per target.
    """

    nodes: int
    graphs: int
    targets: int
    neighbors: int

    def __post_init__(self):
        for name in ("nodes", "graphs", "targets"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"PackingBudget.{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.neighbors, int | np.integer) or self.neighbors < 0:
            raise ValueError(f"PackingBudget.neighbors must be an int >= 0, got {self.neighbors!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackUnit:
    """One materialised unit (whole graph or subgraph) ready to pack.

    Attributes:
      dataset: dataset index (row group).
      graph: graph index inside the corpus (second sort key).
      features: ``float32 [n, f]`` with ``f <= F``.
      pe: ``float32 [n, k']`` with ``k' <= k``.
      indptr, indices: local undirected adjacency in CSR form (``[n + 1]``, ``[e]``).
      labels: ``[n]`` int class ids (-1 = unlabelled) or float regression targets.
      train_mask: ``bool [n]`` nodes that may be drawn as (loss-carrying) targets.
      regression: labels are regression values.
      graph_label: graph-classification label, -1 if none.
    """

    dataset: int
    graph: int
    features: np.ndarray
    pe: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    train_mask: np.ndarray
    regression: bool = False
    graph_label: int = -1

    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    def candidates(self) -> np.ndarray:
        """Local ids of the nodes that can be targets (training nodes with a label)."""
        mask = np.asarray(self.train_mask, bool)
        if not self.regression:
            mask = mask & (np.asarray(self.labels) >= 0)
        else:
            mask = mask & np.isfinite(np.asarray(self.labels, np.float64))
        return np.flatnonzero(mask)


def allocate_targets(sizes: Sequence[int], available: Sequence[int], budget: int) -> np.ndarray:
    """Splits ``budget`` targets over units in proportion to ``sizes``, capped by ``available``.

    Water-filling: each round gives every unit with spare candidates its proportional share of
    what is left (largest-remainder rounding, ties to the earlier unit), capped at its candidates;
    repeats until the budget or the candidates run out. Returns ``int64 [num_units]``.

    Example:
      >>> allocate_targets([100, 100, 200], [5, 100, 100], 40).tolist()
      [5, 12, 23]
    """
    sizes = np.asarray(sizes, np.float64)
    avail = np.asarray(available, np.int64)
    alloc = np.zeros(avail.size, np.int64)
    left = min(int(budget), int(avail.sum()))
    while left > 0:
        active = alloc < avail
        weights = np.where(active, np.maximum(sizes, 1e-9), 0.0)
        raw = weights / weights.sum() * left
        give = np.floor(raw).astype(np.int64)
        rest = left - give.sum()
        order = np.argsort(-(raw - give), kind="stable")
        order = order[active[order]]
        give[order[:rest]] += 1
        give = np.minimum(give, avail - alloc)
        alloc += give
        left -= int(give.sum())
    return alloc


def _sample_neighbors(
    unit: PackUnit, targets: np.ndarray, m: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``[q, m]`` local neighbour ids (without replacement) and their mask."""
    q = targets.size
    out = np.zeros((q, m), np.int64)
    mask = np.zeros((q, m), bool)
    if q == 0 or m == 0:
        return out, mask
    start = unit.indptr[targets]
    deg = unit.indptr[targets + 1] - start
    total = int(deg.sum())
    if total == 0:
        return out, mask
    owner = np.repeat(np.arange(q), deg)
    offset = np.arange(total) - np.repeat(np.cumsum(deg) - deg, deg)
    nbr = unit.indices[np.repeat(start, deg) + offset]
    # A random key per candidate; per target keep the m smallest keys = a uniform sample
    # without replacement.
    order = np.lexsort((rng.random(total), owner))
    owner, nbr = owner[order], nbr[order]
    rank = np.arange(total) - np.repeat(np.cumsum(deg) - deg, deg)
    keep = rank < m
    out[owner[keep], rank[keep]] = nbr[keep]
    mask[owner[keep], rank[keep]] = True
    return out, mask


def pack_bucket(
    units: Sequence[PackUnit],
    budget: PackingBudget,
    *,
    num_datasets: int,
    feature_dim: int,
    pe_dim: int,
    seed: int | Sequence[int] = 0,
    check: bool = True,
) -> PackedBatch:
    """Packs one bucket's units into a numpy :class:`PackedBatch` of the budget's static shapes.

    Args:
      units: the bucket's units (possibly empty: an all-padding batch).
      budget: static sizes (T, G, Q, m).
      num_datasets: S (length of ``group_sizes``).
      feature_dim: F (features are zero-padded to it).
      pe_dim: k (PEs are zero-padded to it).
      seed: seed (or seed sequence) of target and neighbour sampling.
      check: run :func:`~jaxfm.graph.packed.check_packed_batch` on the result.

    Returns:
      The packed batch (numpy leaves).

    Shapes:
      features ``[T, F]``, pe ``[T, k]``, segment_ids ``[T]``, group_sizes ``[S]``, graph fields
      ``[G]``, target fields ``[Q]``, neighbour fields ``[Q, m]``.

    Raises:
      ValueError: the units exceed the node or graph budget, a unit is wider than F or k, or a
        unit's dataset is outside ``[0, num_datasets)``.
    """
    t, g, q, m = budget.nodes, budget.graphs, budget.targets, budget.neighbors
    total = sum(u.num_nodes for u in units)
    if total > t:
        raise ValueError(f"pack_bucket: {total} nodes exceed the node budget T={t}")
    if len(units) > g:
        raise ValueError(f"pack_bucket: {len(units)} units exceed the graph budget G={g}")
    for u in units:
        if u.features.shape[1] > feature_dim or u.pe.shape[1] > pe_dim:
            raise ValueError(
                f"pack_bucket: unit (dataset {u.dataset}, graph {u.graph}) has features "
                f"{u.features.shape} / pe {u.pe.shape} wider than F={feature_dim} / k={pe_dim}"
            )
        if not 0 <= u.dataset < num_datasets:
            raise ValueError(
                f"pack_bucket: unit dataset {u.dataset} outside [0, num_datasets={num_datasets})"
            )
    rng = np.random.default_rng(seed)
    order = sorted(range(len(units)), key=lambda i: (units[i].dataset, units[i].graph, i))
    units = [units[i] for i in order]

    features = np.zeros((t, feature_dim), np.float32)
    pe = np.zeros((t, pe_dim), np.float32)
    segment_ids = np.zeros(t, np.int32)
    group_sizes = np.zeros(num_datasets, np.int32)
    graph_dataset = np.zeros(g, np.int32)
    graph_mask = np.zeros(g, bool)
    graph_label = np.full(g, -1, np.int32)
    offsets = np.zeros(len(units), np.int64)
    row = 0
    for slot, u in enumerate(units):
        n = u.num_nodes
        offsets[slot] = row
        features[row : row + n, : u.features.shape[1]] = u.features
        pe[row : row + n, : u.pe.shape[1]] = u.pe
        segment_ids[row : row + n] = slot + 1
        group_sizes[u.dataset] += n
        graph_dataset[slot] = u.dataset
        graph_mask[slot] = True
        graph_label[slot] = u.graph_label
        row += n

    target_index = np.zeros(q, np.int32)
    target_mask = np.zeros(q, bool)
    target_graph = np.zeros(q, np.int32)
    target_dataset = np.zeros(q, np.int32)
    target_label = np.full(q, -1, np.int32)
    target_value = np.zeros(q, np.float32)
    neighbor_index = np.zeros((q, m), np.int32)
    neighbor_mask = np.zeros((q, m), bool)
    cands = [u.candidates() for u in units]
    alloc = allocate_targets([u.num_nodes for u in units], [c.size for c in cands], q)
    j = 0
    for slot, (u, cand, count) in enumerate(zip(units, cands, alloc, strict=True)):
        if count == 0:
            continue
        chosen = np.sort(rng.choice(cand, size=int(count), replace=False))
        nbr, nmask = _sample_neighbors(u, chosen, m, rng)
        sl = slice(j, j + chosen.size)
        target_index[sl] = offsets[slot] + chosen
        target_mask[sl] = True
        target_graph[sl] = slot
        target_dataset[sl] = u.dataset
        if u.regression:
            target_value[sl] = np.asarray(u.labels, np.float32)[chosen]
        else:
            target_label[sl] = np.asarray(u.labels)[chosen]
        neighbor_index[sl] = np.where(nmask, offsets[slot] + nbr, 0)
        neighbor_mask[sl] = nmask
        j += chosen.size

    batch = PackedBatch(
        features=features,
        pe=pe,
        segment_ids=segment_ids,
        group_sizes=group_sizes,
        graph_dataset=graph_dataset,
        graph_mask=graph_mask,
        graph_label=graph_label,
        target_index=target_index,
        target_mask=target_mask,
        target_graph=target_graph,
        target_dataset=target_dataset,
        target_label=target_label,
        target_value=target_value,
        target_loss_mask=target_mask.copy(),
        neighbor_index=neighbor_index,
        neighbor_mask=neighbor_mask,
    )
    if check:
        check_packed_batch(batch, num_datasets=num_datasets)
    return batch
