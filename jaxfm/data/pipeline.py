"""Deterministic, resumable GraphFM input pipeline: corpus -> snake buckets -> packed batches.

One *step* (one optimizer update) consumes ``num_buckets = devices x accumulation steps``
packed batches (paper C.1). The pipeline is a ``grain`` ``IterDataset``:

1. a step iterator walks ``(epoch, step)``; for each epoch it asks the corpus for the epoch's
   units (whole graphs and GraphSAINT subgraphs) and plans the epoch with the
   :class:`~jaxfm.graph.snake.DistributedSSSampler` (node budget T and graph budget G per
   bucket), so every unit is packed exactly once per epoch;
2. a ``map`` packs each of this process's buckets with
   :func:`~jaxfm.data.packing.pack_bucket`, seeded by ``(seed, epoch, step, bucket)``.

Everything is a pure function of ``(corpus, budget, num_buckets, seed, epoch, step)``: the state
is just ``{"epoch", "step"}`` (plus the settings it was made with, checked on restore), JSON-able
for checkpoints, and restoring it reproduces the exact continuation (also with another number of
processes: the state is the same on every process). With several processes,
process ``p`` of ``P`` packs buckets ``[p * nb / P, (p + 1) * nb / P)`` of every step (its local
devices' buckets); the union over processes equals the single-process step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np

from jaxfm.data.corpus import Corpus, Unit
from jaxfm.data.packing import PackingBudget, pack_bucket
from jaxfm.graph.packed import PackedBatch
from jaxfm.graph.snake import Assignment, DistributedSSSampler, bucket_loads

__all__ = ["PackedPipeline", "PipelineStateError", "stack_batches"]

_STATE_VERSION = 1


class PipelineStateError(ValueError):
    """A saved pipeline state does not match this pipeline (other settings, or malformed)."""


def stack_batches(batches: Sequence[PackedBatch]) -> PackedBatch:
    """Stacks per-bucket batches into one with a leading ``[num_buckets]`` axis (numpy)."""
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)


class _Planner:
    """Per-epoch unit lists and bucket plans (a small cache of the latest epochs)."""

    def __init__(self, corpus: Corpus, budget: PackingBudget, num_buckets: int, seed: int, **kw):
        self.corpus, self.budget, self.num_buckets, self.seed, self.kw = (
            corpus,
            budget,
            num_buckets,
            seed,
            kw,
        )
        self._cache: dict[int, tuple[list[Unit], list[list[list[int]]]]] = {}

    def epoch(self, epoch: int) -> tuple[list[Unit], list[list[list[int]]]]:
        if epoch not in self._cache:
            units = self.corpus.units(epoch)
            if not units:
                raise ValueError("PackedPipeline: the corpus has no units")
            sampler = DistributedSSSampler(
                [u.size for u in units],
                num_buckets=self.num_buckets,
                node_budget=self.budget.nodes,
                max_units=self.budget.graphs,
                seed=self.seed,
                **self.kw,
            )
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = (units, sampler.epoch_plan(epoch))
        return self._cache[epoch]


class _StepIterator(grain.DatasetIterator):
    """Yields ``(epoch, step, [(bucket_id, units), ...])`` for this process's buckets."""

    def __init__(self, planner: _Planner, local_buckets: range, settings: dict):
        super().__init__()
        self._planner = planner
        self._local = local_buckets
        self._settings = settings
        self._epoch = 0
        self._step = 0

    def __next__(self):
        units, plan = self._planner.epoch(self._epoch)
        while self._step >= len(plan):
            self._epoch, self._step = self._epoch + 1, 0
            units, plan = self._planner.epoch(self._epoch)
        epoch, step = self._epoch, self._step
        self._step += 1
        buckets = [(b, [units[i] for i in plan[step][b]]) for b in self._local]
        return epoch, step, buckets

    def get_state(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "epoch": self._epoch,
            "step": self._step,
            **self._settings,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        try:
            epoch, step = int(state["epoch"]), int(state["step"])
            version = int(state["version"])
        except (KeyError, TypeError, ValueError) as err:
            raise PipelineStateError(
                f"PackedPipeline.set_state: malformed state {state!r}"
            ) from err
        if version != _STATE_VERSION:
            raise PipelineStateError(
                f"PackedPipeline.set_state: state version {version} != {_STATE_VERSION}"
            )
        for key, value in self._settings.items():
            if state.get(key) != value:
                raise PipelineStateError(
                    f"PackedPipeline.set_state: state was saved with {key}={state.get(key)!r}, "
                    f"this pipeline has {key}={value!r}"
                )
        if epoch < 0 or step < 0:
            raise PipelineStateError(f"PackedPipeline.set_state: negative epoch/step in {state!r}")
        self._epoch, self._step = epoch, step


class _StepDataset(grain.IterDataset):
    def __init__(self, planner: _Planner, local_buckets: range, settings: dict):
        super().__init__()
        self._args = (planner, local_buckets, settings)

    def __iter__(self) -> _StepIterator:
        return _StepIterator(*self._args)


class PackedPipeline:
    """Iterator of per-step packed buckets with checkpointable state.

    ``next(pipeline)`` returns this process's buckets of the next step: a list of
    ``num_buckets / process_count`` :class:`~jaxfm.graph.packed.PackedBatch` es (numpy), or
    one batch with a leading bucket axis when ``stack=True``.

    Args:
      corpus: the corpus (:func:`~jaxfm.data.corpus.build_corpus`).
      budget: static per-bucket sizes; ``budget.nodes`` should be the corpus's ``node_budget``.
      num_buckets: buckets per step (devices x accumulation steps, all processes together).
      seed: seed of the epoch shuffles and of the target / neighbour sampling.
      process_index, process_count: multi-host sharding (``jax.process_index()`` /
        ``jax.process_count()``); ``num_buckets`` must be divisible by ``process_count``.
      assignment: ``"snake"`` (default) or ``"random"`` (benchmark baseline; may overflow T).
      shuffle: shuffle units every epoch.
      fill: share of a step's total capacity the sampler fills before dealing.
      stack: return one stacked batch instead of a list.
      check: validate every packed batch (:func:`~jaxfm.graph.packed.check_packed_batch`).

    Example:
      >>> # pipeline = PackedPipeline(corpus, budget=budget, num_buckets=8, seed=0)
      >>> # state = pipeline.get_state(); batches = next(pipeline)
      >>> # pipeline.set_state(state); assert next(pipeline) equals batches
    """

    def __init__(
        self,
        corpus: Corpus,
        *,
        budget: PackingBudget,
        num_buckets: int,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        assignment: Assignment = "snake",
        shuffle: bool = True,
        fill: float = 1.0,
        stack: bool = False,
        check: bool = True,
    ):
        if num_buckets < 1:
            raise ValueError(f"PackedPipeline: num_buckets must be >= 1, got {num_buckets}")
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(
                f"PackedPipeline: need 0 <= process_index < process_count, got "
                f"{process_index} / {process_count}"
            )
        if num_buckets % process_count:
            raise ValueError(
                f"PackedPipeline: num_buckets={num_buckets} is not divisible by "
                f"process_count={process_count}"
            )
        if budget.nodes < corpus.max_unit_nodes:
            raise ValueError(
                f"PackedPipeline: budget.nodes={budget.nodes} < the corpus's max_unit_nodes="
                f"{corpus.max_unit_nodes}; build the corpus with this node budget"
            )
        self.corpus = corpus
        self.budget = budget
        self.num_buckets = int(num_buckets)
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.stack = stack
        self.check = check
        per = self.num_buckets // self.process_count
        self.local_buckets = range(self.process_index * per, (self.process_index + 1) * per)
        self._planner = _Planner(
            corpus,
            budget,
            self.num_buckets,
            self.seed,
            assignment=assignment,
            shuffle=shuffle,
            fill=fill,
        )
        settings = {
            "num_buckets": self.num_buckets,
            "seed": self.seed,
            "budget": [budget.nodes, budget.graphs, budget.targets, budget.neighbors],
            "assignment": assignment,
        }
        dataset = _StepDataset(self._planner, self.local_buckets, settings).map(self._pack_step)
        self._iterator = iter(dataset)
        self._peeked: tuple[dict, Any] | None = None

    # ---------------------------------------------------------------- iteration and state

    def _pack_step(self, item) -> list[PackedBatch] | PackedBatch:
        epoch, step, buckets = item
        batches = [
            pack_bucket(
                [self.corpus.materialize(u) for u in units],
                self.budget,
                num_datasets=self.corpus.num_datasets,
                feature_dim=self.corpus.feature_dim,
                pe_dim=self.corpus.pe_dim,
                seed=[self.seed, epoch, step, b],
                check=self.check,
            )
            for b, units in buckets
        ]
        return stack_batches(batches) if self.stack else batches

    def __iter__(self) -> PackedPipeline:
        return self

    def __next__(self) -> list[PackedBatch] | PackedBatch:
        if self._peeked is not None:
            value, self._peeked = self._peeked[1], None
            return value
        return next(self._iterator)

    def peek(self) -> list[PackedBatch] | PackedBatch:
        """The next step's batches without consuming them (the next ``next`` returns them)."""
        if self._peeked is None:
            state = self._iterator.get_state()
            self._peeked = (state, next(self._iterator))
        return self._peeked[1]

    def get_state(self) -> dict[str, Any]:
        """JSON-able position: ``{"version", "epoch", "step", <settings>}``."""
        if self._peeked is not None:
            return dict(self._peeked[0])
        return dict(self._iterator.get_state())

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores a position from :meth:`get_state` (raises :class:`PipelineStateError`)."""
        self._iterator.set_state(state)
        self._peeked = None

    # ---------------------------------------------------------------- introspection

    def epoch_plan(self, epoch: int) -> list[list[list[int]]]:
        """``plan[step][bucket]`` = indices into ``corpus.units(epoch)`` (all processes)."""
        return self._planner.epoch(epoch)[1]

    def steps_per_epoch(self, epoch: int) -> int:
        return len(self.epoch_plan(epoch))

    def epoch_loads(self, epoch: int) -> np.ndarray:
        """``int64 [steps, num_buckets]`` node load of every bucket of ``epoch``."""
        units, plan = self._planner.epoch(epoch)
        sizes = np.array([u.size for u in units])
        return np.stack([bucket_loads(sizes, buckets) for buckets in plan])
