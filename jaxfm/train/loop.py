"""A small, generic jitted training loop: pure train step, evaluation, early stopping.

The train step is a pure function ``(state, batch, rng) -> (state, metrics)`` jitted with the state
donated; task code supplies only ``loss_fn(params, batch, rng, train) -> (loss, metrics)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

__all__ = ["EarlyStopping", "TrainState", "fit", "make_train_step"]


@flax.struct.dataclass
class TrainState:
    """Parameters, optimizer state and step counter (a pytree)."""

    step: jax.Array
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params, optimizer: optax.GradientTransformation) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


LossFn = Callable[[Any, Any, jax.Array, bool], tuple[jax.Array, dict]]


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation):
    """Returns the jitted ``train_step(state, batch, rng) -> (state, metrics)``.

    The state argument is donated: do not reuse it after the call.
    """

    def train_step(state: TrainState, batch, rng):
        grad_fn = jax.value_and_grad(lambda p: loss_fn(p, batch, rng, True), has_aux=True)
        (loss, metrics), grads = grad_fn(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **metrics, "grad_norm": optax.tree.norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(train_step, donate_argnums=(0,))


@dataclasses.dataclass
class EarlyStopping:
    """Tracks the best validation value; ``update`` returns True when training should stop."""

    metric: str
    mode: str = "max"
    patience: int = 10
    best: float = dataclasses.field(default=math.nan)
    best_epoch: int = -1
    _bad: int = 0

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping.mode must be 'max' or 'min', got {self.mode!r}")

    def improved(self, value: float) -> bool:
        if math.isnan(self.best):
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def update(self, value: float, epoch: int) -> bool:
        if self.improved(value):
            self.best, self.best_epoch, self._bad = value, epoch, 0
            return False
        self._bad += 1
        return self._bad >= self.patience


def _log_line(stream, record: dict) -> None:
    if stream is not None:
        stream.write(json.dumps(record) + "\n")
        stream.flush()


def fit(
    state: TrainState,
    train_step,
    train_batches: Callable[[int], Iterable[Any]],
    evaluate: Callable[[Any], dict[str, float]],
    *,
    epochs: int,
    rng: jax.Array,
    stopper: EarlyStopping | None = None,
    log_stream=sys.stdout,
    progress: bool = True,
) -> tuple[TrainState, Any, list[dict]]:
    """Trains for up to ``epochs`` epochs with per-epoch validation and early stopping.

    Args:
      state: initial train state (donated to the first step).
      train_step: from :func:`make_train_step`.
      train_batches: ``epoch -> iterable of batches`` (deterministic per epoch).
      evaluate: ``params -> {metric: value}`` on the validation set.
      epochs: maximum number of epochs.
      rng: PRNG key, split per step.
      stopper: early stopping on a validation metric (best parameters are kept).
      log_stream: where one JSON line per epoch goes (None: silent).
      progress: show a tqdm progress bar (on stderr).

    Returns:
      ``(final_state, best_params, history)``; best_params are those of the best validation epoch
      (or the final ones without a stopper).
    """
    history: list[dict] = []
    best_params = None
    bar = tqdm(total=epochs, desc="train", unit="epoch", disable=not progress, file=sys.stderr)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        n = 0
        for batch in train_batches(epoch):
            rng, step_rng = jax.random.split(rng)
            state, metrics = train_step(state, batch, step_rng)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
        if n == 0:
            raise ValueError("fit: train_batches produced no batch (is the training split empty?)")
        record = {"epoch": epoch, "step": int(state.step)}
        record.update({f"train_{k}": v / n for k, v in sums.items()})
        record.update({f"val_{k}": float(v) for k, v in evaluate(state.params).items()})
        record["epoch_seconds"] = round(time.perf_counter() - t0, 3)
        if not np.isfinite(record["train_loss"]):
            raise FloatingPointError(
                f"fit: training loss became {record['train_loss']} at epoch {epoch}"
            )
        history.append(record)
        _log_line(log_stream, record)
        stop = False
        if stopper is not None:
            value = record[f"val_{stopper.metric}"]
            if stopper.improved(value):
                best_params = jax.tree.map(np.asarray, state.params)
            stop = stopper.update(value, epoch)
        bar.set_postfix(
            {k: f"{v:.4g}" for k, v in record.items() if k.startswith("val_") or k == "train_loss"}
        )
        bar.update(1)
        if stop:
            break
    bar.close()
    if best_params is None:
        best_params = jax.tree.map(np.asarray, state.params)
    return state, best_params, history
