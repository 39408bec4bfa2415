"""Snake partitioning and the DistributedSSSampler (GraphFM paper, section 3.2.2 and appendix C.1).

GraphFM packs graphs of very different sizes into ``num_buckets = devices x accumulation steps``
buckets per optimizer step, each bucket with a static node budget. Putting several large graphs
into one bucket wastes the other buckets' capacity (they are padded to the same budget) or runs
out of memory. The paper's remedy (Algorithm 1) is a *snake deal*: sort the graphs by size,
descending, and deal them to the buckets right-to-left, then left-to-right, then right-to-left
again, ... so each pass pairs the buckets that received the larger graphs of the previous pass
with the smaller graphs of this one.

:func:`snake_partition` is that deal on a list of sizes. :class:`DistributedSSSampler` applies it
per optimizer step: every epoch it shuffles the units (whole graphs, or GraphSAINT subgraphs of
graphs above the node budget), cuts the shuffled order into steps that fill the step's total
capacity, and snake-deals each step's units into the buckets under the per-bucket node and graph
budgets. A unit that fits no bucket of its step is deferred to the next step, so every unit is
used exactly once per epoch. The plan is a pure function of ``(sizes, seed, epoch)``.

Everything here is host-side numpy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = ["DistributedSSSampler", "bucket_loads", "random_partition", "snake_partition"]

Assignment = Literal["snake", "random"]


def _as_sizes(sizes: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(sizes)
    if arr.ndim != 1:
        raise ValueError(f"{what}: sizes must be 1-D, got shape {arr.shape}")
    if arr.size and (not np.issubdtype(arr.dtype, np.number) or (arr < 0).any()):
        raise ValueError(f"{what}: sizes must be non-negative numbers")
    return arr.astype(np.int64)


def snake_partition(
    sizes: Sequence[int] | np.ndarray, num_buckets: int, *, budget: float | None = None
) -> list[list[int]]:
    """Deals items into ``num_buckets`` buckets snake-wise by decreasing size under a budget.

    Paper Algorithm 1 (GraphFM C.1): items are sorted by size, descending (ties keep index
    order), and dealt to buckets ``num_buckets - 1, ..., 0`` (right to left), then
    ``0, ..., num_buckets - 1`` (left to right), and so on, alternating. Each bucket has a node
    ``budget``; a graph uses up its size of it, and the deal walks on along the snake past buckets
    the graph would overflow. A graph that fits nowhere goes to the least-loaded bucket. Each bucket
    lists its item indices in the order they were dealt (largest first).

    Args:
      sizes: ``[n]`` non-negative sizes (node counts).
      num_buckets: number of buckets (>= 1).
      budget: node budget per bucket; default the mean load ``sum(sizes) / num_buckets`` (the
        tightest budget all items can share). ``math.inf`` gives the budget-free snake deal.

    Returns:
      ``num_buckets`` lists of indices into ``sizes``; every index appears in exactly one list.

    Example:
      >>> snake_partition([10, 9, 8, 7, 6, 5], 3)
      [[2, 3], [1, 4], [0, 5]]
      >>> snake_partition([10, 9, 1, 1, 1], 2)  # budget 11: the last 1 skips the full bucket
      [[1, 2, 4], [0, 3]]
      >>> snake_partition([10, 9, 1, 1, 1], 2, budget=float("inf"))
      [[1, 2], [0, 3, 4]]
    """
    arr = _as_sizes(sizes, "snake_partition")
    if num_buckets < 1:
        raise ValueError(f"snake_partition: num_buckets must be >= 1, got {num_buckets}")
    cap = arr.sum() / num_buckets if budget is None else float(budget)
    if not cap > 0 and arr.sum() > 0:
        raise ValueError(f"snake_partition: budget must be > 0, got {budget}")
    order = np.argsort(-arr, kind="stable")
    buckets: list[list[int]] = [[] for _ in range(num_buckets)]
    loads = np.zeros(num_buckets, np.float64)
    walk = 0  # position along the snake: bucket sequence n-1..0, 0..n-1, n-1..0, ...

    def at(w: int) -> int:
        rnd, pos = divmod(w, num_buckets)
        return num_buckets - 1 - pos if rnd % 2 == 0 else pos

    for item in order.tolist():
        size = arr[item]
        ahead = [at(walk + j) for j in range(num_buckets)]
        fits = [j for j, b in enumerate(ahead) if loads[b] + size <= cap]
        if fits:
            chosen, walk = ahead[fits[0]], walk + fits[0] + 1
        else:  # over budget everywhere: the emptiest bucket, ties in snake order
            chosen, walk = min(ahead, key=lambda b: loads[b]), walk + 1
        loads[chosen] += size
        buckets[chosen].append(item)
    return buckets


def random_partition(
    sizes: Sequence[int] | np.ndarray, num_buckets: int, *, seed: int | Sequence[int] = 0
) -> list[list[int]]:
    """Baseline: a random permutation dealt round-robin (equal item counts, sizes ignored).

    This is what a size-unaware distributed sampler does (PyTorch's ``DistributedSampler`` gives
    rank ``r`` items ``perm[r::world]``).
    """
    arr = _as_sizes(sizes, "random_partition")
    if num_buckets < 1:
        raise ValueError(f"random_partition: num_buckets must be >= 1, got {num_buckets}")
    perm = np.random.default_rng(seed).permutation(arr.size)
    return [perm[b::num_buckets].tolist() for b in range(num_buckets)]


def bucket_loads(sizes: Sequence[int] | np.ndarray, buckets: Sequence[Sequence[int]]) -> np.ndarray:
    """``int64 [num_buckets]`` total size of each bucket."""
    arr = _as_sizes(sizes, "bucket_loads")
    return np.array([int(arr[list(b)].sum()) for b in buckets], np.int64)


def _snake_positions(num_buckets: int, count: int) -> np.ndarray:
    """Bucket visited by the ``i``-th dealt item of a snake deal, for ``i < count``."""
    rnd, pos = np.divmod(np.arange(count), num_buckets)
    return np.where(rnd % 2 == 0, num_buckets - 1 - pos, pos)


class DistributedSSSampler:
    """Distributed Snake-Strategy sampler: per-step bucket assignments of units, per epoch.

    Each optimizer step owns ``num_buckets`` buckets (``devices x accumulation steps``, paper C.1),
    each holding at most ``node_budget`` nodes and ``max_units`` units (graph slots). Per epoch:

    1. the units are shuffled (a pure function of ``(seed, epoch)``; ``shuffle=False`` keeps the
       index order);
    2. units are taken in that order into a step while their total stays within
       ``fill * num_buckets * node_budget`` and their count within ``num_buckets * max_units``;
       a unit that would overflow the step is skipped (it stays first in line for the next
       step) and up to ``lookahead`` further units are tried, so small units top the step up;
    3. the step's units are dealt snake-wise by decreasing size (:func:`snake_partition`); a unit
       whose snake bucket is full goes to the least-loaded bucket it fits, and a unit that fits
       none is deferred to the front of the next step;
    4. a repair pass moves units from the fullest to the emptiest bucket while that lowers the
       maximum (the plain snake's spread is bounded only by the largest unit, which for
       GraphSAINT units can be half the budget; see ``experiments/benchmarks/snake_sampler.py``
       for the measured effect).

    Every unit appears exactly once per epoch; the last step may be partly empty.
    ``assignment="random"`` is the size-unaware baseline for benchmarks: the same steps, units
    dealt round-robin in shuffled order *without* budget checks (loads may exceed the budget).

    Args:
      sizes: ``[n]`` node count of each unit (each ``<= node_budget``).
      num_buckets: buckets per step (``devices x accumulation steps``).
      node_budget: nodes per bucket (the packed batch's row budget T).
      max_units: units per bucket (graph slots G); ``None`` = unlimited.
      seed: base seed of the epoch shuffles.
      shuffle: shuffle the units every epoch.
      assignment: ``"snake"`` (the sampler) or ``"random"`` (baseline, no budget).
      fill: fraction of a step's total capacity the step-cutting aims at, in ``(0, 1]``.
      lookahead: units tried past the first one that overflows the step.

    Raises:
      ValueError: a unit larger than ``node_budget`` (cut big graphs into subgraphs first), or
        bad arguments.
    """

    def __init__(
        self,
        sizes: Sequence[int] | np.ndarray,
        *,
        num_buckets: int,
        node_budget: int,
        max_units: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        assignment: Assignment = "snake",
        fill: float = 1.0,
        lookahead: int = 64,
    ):
        self.sizes = _as_sizes(sizes, "DistributedSSSampler")
        if num_buckets < 1:
            raise ValueError(f"DistributedSSSampler: num_buckets must be >= 1, got {num_buckets}")
        if node_budget < 1:
            raise ValueError(f"DistributedSSSampler: node_budget must be >= 1, got {node_budget}")
        if max_units is not None and max_units < 1:
            raise ValueError(f"DistributedSSSampler: max_units must be >= 1, got {max_units}")
        if assignment not in ("snake", "random"):
            raise ValueError(
                f"DistributedSSSampler: assignment must be 'snake' or 'random', got {assignment!r}"
            )
        if not 0 < fill <= 1:
            raise ValueError(f"DistributedSSSampler: fill must be in (0, 1], got {fill}")
        too_big = np.flatnonzero(self.sizes > node_budget)
        if too_big.size:
            raise ValueError(
                f"DistributedSSSampler: unit {int(too_big[0])} has {int(self.sizes[too_big[0]])} "
                f"nodes > node_budget={node_budget} ({too_big.size} such units); split graphs "
                "above the budget into subgraphs (GraphSAINT) first"
            )
        self.num_buckets = int(num_buckets)
        self.node_budget = int(node_budget)
        self.max_units = None if max_units is None else int(max_units)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.assignment = assignment
        self.fill = float(fill)
        if lookahead < 0:
            raise ValueError(f"DistributedSSSampler: lookahead must be >= 0, got {lookahead}")
        self.lookahead = int(lookahead)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The unit order of ``epoch`` (a permutation of ``range(n)``)."""
        if not self.shuffle:
            return np.arange(self.sizes.size)
        return np.random.default_rng([self.seed, int(epoch), 0x5A4E]).permutation(self.sizes.size)

    def epoch_plan(self, epoch: int) -> list[list[list[int]]]:
        """All steps of ``epoch``: ``plan[step][bucket]`` = unit indices of that bucket."""
        queue = deque(self.epoch_order(epoch).tolist())
        capacity = self.fill * self.num_buckets * self.node_budget
        max_count = None if self.max_units is None else self.num_buckets * self.max_units
        plan = []
        while queue:
            chunk, skipped, total = [], [], 0
            while queue and (max_count is None or len(chunk) < max_count):
                u = queue.popleft()
                s = int(self.sizes[u])
                if chunk and total + s > capacity:
                    # Look ahead for smaller units that still fit; skipped ones stay first.
                    skipped.append(u)
                    if len(skipped) > self.lookahead:
                        break
                    continue
                chunk.append(u)
                total += s
            queue.extendleft(reversed(skipped))
            if self.assignment == "random":
                buckets = [chunk[b :: self.num_buckets] for b in range(self.num_buckets)]
            else:
                buckets, deferred = self._deal(chunk)
                queue.extendleft(reversed(deferred))
            plan.append(buckets)
        return plan

    def _deal(self, chunk: list[int]) -> tuple[list[list[int]], list[int]]:
        """Snake deal of one step's units under the node and unit budgets, then a repair pass."""
        nb = self.num_buckets
        sizes = self.sizes[chunk]
        order = np.argsort(-sizes, kind="stable")
        positions = _snake_positions(nb, order.size)
        load = np.zeros(nb, np.int64)
        count = np.zeros(nb, np.int64)
        unit_cap = np.iinfo(np.int64).max if self.max_units is None else self.max_units
        buckets: list[list[int]] = [[] for _ in range(nb)]
        deferred = []
        for j, b in zip(order.tolist(), positions.tolist(), strict=True):
            s = int(sizes[j])
            if load[b] + s > self.node_budget or count[b] >= unit_cap:
                ok = np.flatnonzero((load + s <= self.node_budget) & (count < unit_cap))
                if ok.size == 0:
                    deferred.append(j)
                    continue
                b = int(ok[np.argmin(load[ok])])
            buckets[b].append(j)
            load[b] += s
            count[b] += 1
        self._repair(buckets, sizes, load, unit_cap)
        return [[chunk[j] for j in b] for b in buckets], sorted(chunk[j] for j in deferred)

    def _repair(self, buckets, sizes, load, unit_cap) -> None:
        """Moves units from the fullest bucket to the emptiest while that lowers the spread.

        The snake deal bounds the spread by the largest unit (up to half the budget for
        GraphSAINT units); a unit of size ``s < gap`` moved from the fullest to the emptiest bucket
        leaves both below the old maximum. The unit closest to ``gap / 2`` is moved each time.
        """
        for _ in range(4 * sum(len(b) for b in buckets) + 1):
            hi, lo = int(np.argmax(load)), int(np.argmin(load))
            gap = int(load[hi] - load[lo])
            if len(buckets[lo]) >= unit_cap:
                return
            movable = [j for j in buckets[hi] if 0 < sizes[j] < gap]
            if not movable:
                return
            j = min(movable, key=lambda i: (abs(2 * int(sizes[i]) - gap), i))
            buckets[hi].remove(j)
            buckets[lo].append(j)
            load[hi] -= sizes[j]
            load[lo] += sizes[j]

    def steps_per_epoch(self, epoch: int) -> int:
        return len(self.epoch_plan(epoch))

    def load_ratios(self, epoch: int, *, include_last: bool = False) -> np.ndarray:
        """``max / mean`` bucket load of each step of ``epoch`` (the last step only if asked)."""
        plan = self.epoch_plan(epoch)
        if not include_last and len(plan) > 1:
            plan = plan[:-1]
        ratios = []
        for buckets in plan:
            loads = bucket_loads(self.sizes, buckets)
            ratios.append(loads.max() / max(loads.mean(), 1e-12))
        return np.array(ratios)
