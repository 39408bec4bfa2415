"""The GraphFM train step: gradient accumulation over packed buckets, one jitted pure function.

A step receives ``A`` packed buckets stacked on a leading axis (``PackedBatch`` leaves
``[A, ...]``; A = accumulation steps, times the data-parallel devices once sharded). Gradients
are averaged over buckets with ``lax.scan`` so only one bucket's activations are alive at a
time; the optimizer update runs once per step. Per-dataset metrics are summed over buckets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxfm.graphfm.batch import PackedBatch
from jaxfm.train.loop import TrainState

__all__ = ["make_eval_step", "make_train_step"]

LossFn = Callable[[Any, PackedBatch, jax.Array, bool], tuple[jax.Array, dict]]


def _accumulate(loss_fn: LossFn, params, batches: PackedBatch, rng: jax.Array):
    """Mean loss/grad over the leading bucket axis of ``batches``; metrics summed."""
    num = jax.tree.leaves(batches)[0].shape[0]
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(carry, xs):
        grads_acc, loss_acc, metrics_acc = carry
        batch, key = xs
        (loss, metrics), grads = grad_fn(params, batch, key, True)
        grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
        metrics_acc = jax.tree.map(jnp.add, metrics_acc, metrics)
        return (grads_acc, loss_acc + loss, metrics_acc), None

    keys = jax.random.split(rng, num)
    first = jax.tree.map(lambda x: x[0], batches)
    metrics0 = jax.eval_shape(lambda: loss_fn(params, first, keys[0], True)[1])
    init = (
        jax.tree.map(jnp.zeros_like, params),
        jnp.zeros((), jnp.float32),
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics0),
    )
    (grads, loss, metrics), _ = jax.lax.scan(body, init, (batches, keys))
    grads = jax.tree.map(lambda g: g / num, grads)
    return loss / num, grads, metrics


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, **jit_kwargs):
    """``train_step(state, batches, rng) -> (state, metrics)``, jitted with the state donated.

    Args:
      loss_fn: ``(params, batch, rng, train) -> (loss, metrics)`` for ONE bucket; metrics are
        sums (counts, correct predictions) so that they add across buckets.
      optimizer: the optax transformation (freezing/scaling already folded in).
      **jit_kwargs: extra ``jax.jit`` arguments (``in_shardings``/``out_shardings`` when sharded).
    """

    def train_step(state: TrainState, batches: PackedBatch, rng: jax.Array):
        loss, grads, metrics = _accumulate(loss_fn, state.params, batches, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(train_step, donate_argnums=(0,), **jit_kwargs)


def make_eval_step(loss_fn: LossFn, **jit_kwargs):
    """``eval_step(params, batch) -> metrics`` for one bucket (no gradient, deterministic)."""

    def eval_step(params, batch: PackedBatch):
        loss, metrics = loss_fn(params, batch, jax.random.key(0), False)
        return {**metrics, "loss": loss}

    return jax.jit(eval_step, **jit_kwargs)
