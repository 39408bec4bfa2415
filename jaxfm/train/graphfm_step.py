"""The GraphFM train step: gradient accumulation over packed buckets, one jitted pure function.

A step receives ``A`` packed buckets stacked on a leading axis (``PackedBatch`` leaves
``[A, ...]``; A = accumulation steps). Gradients are averaged over buckets with ``lax.scan`` so
only one bucket's activations are alive at a time; the optimizer update runs once per step.
Per-dataset metrics are summed over buckets.

:func:`make_sharded_train_step` is the same step on a device mesh (FSDP): buckets ``[A, D, ...]``
with ``D`` split over the mesh's ``data`` x ``fsdp`` devices. Inside a ``shard_map`` each device
all-gathers the parameters (stored sharded by :mod:`jaxfm.train.sharding`), accumulates its own
buckets exactly as the single-device step does, and reduce-scatters the gradients back to the
parameters' sharding; the optimizer update then runs on the sharded state. The mean over all
``A x D`` buckets does not depend on the mesh, so any mesh gives the single-device result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxfm.graphfm.batch import PackedBatch
from jaxfm.train.loop import TrainState
from jaxfm.train.sharding import BATCH_AXES, data_parallel_size

__all__ = ["make_eval_step", "make_sharded_train_step", "make_train_step"]

LossFn = Callable[[Any, PackedBatch, jax.Array, bool], tuple[jax.Array, dict]]


def _accumulate(loss_fn: LossFn, params, batches: PackedBatch, keys: jax.Array):
    """Mean loss/grad over the leading bucket axis of ``batches``; metrics summed.

    Shapes:
      batches: leaves ``[A, ...]``; keys: ``[A]`` PRNG keys, one per bucket.
    """
    num = jax.tree.leaves(batches)[0].shape[0]
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(carry, xs):
        grads_acc, loss_acc, metrics_acc = carry
        batch, key = xs
        (loss, metrics), grads = grad_fn(params, batch, key, True)
        grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
        metrics_acc = jax.tree.map(jnp.add, metrics_acc, metrics)
        return (grads_acc, loss_acc + loss, metrics_acc), None

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
        num = jax.tree.leaves(batches)[0].shape[0]
        keys = jax.random.split(rng, num)
        loss, grads, metrics = _accumulate(loss_fn, state.params, batches, keys)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(train_step, donate_argnums=(0,), **jit_kwargs)


def _gather(x: jax.Array, spec: P) -> jax.Array:
    """All-gathers a parameter shard along every mesh axis of its spec (inside shard_map)."""
    for dim, axis in enumerate(spec):
        if axis is not None:
            x = jax.lax.all_gather(x, axis, axis=dim, tiled=True)
    return x


def _reduce(g: jax.Array, spec: P, mesh_shape: dict) -> jax.Array:
    """Full local gradient -> this device's shard of the mean over data-parallel devices.

    ``fsdp``-sharded dims are reduce-scattered, ``model``-sharded dims sliced (every device of a
    ``model`` group computed the same gradient), and the batch axes not yet reduced summed.
    """
    for dim, axis in enumerate(spec):
        if axis == "fsdp":
            g = jax.lax.psum_scatter(g, "fsdp", scatter_dimension=dim, tiled=True)
        elif axis is not None:
            size = g.shape[dim] // mesh_shape[axis]
            start = jax.lax.axis_index(axis) * size
            g = jax.lax.dynamic_slice_in_dim(g, start, size, axis=dim)
    rest = tuple(a for a in BATCH_AXES if a not in tuple(spec))
    if rest:
        g = jax.lax.psum(g, rest)
    return g / data_parallel_size(mesh_shape)


def make_sharded_train_step(
    loss_fn: LossFn, optimizer: optax.GradientTransformation, mesh: Mesh, state_shardings
):
    """``train_step(state, batches, rng) -> (state, metrics)`` on ``mesh`` (FSDP, see module).

    Args:
      loss_fn: ``(params, batch, rng, train) -> (loss, metrics)`` for ONE bucket (summable
        metrics), as for :func:`make_train_step`.
      optimizer: the optax transformation.
      mesh: a mesh with axes ``(data, fsdp, model)`` (:func:`jaxfm.train.sharding.make_mesh`).
      state_shardings: ``NamedSharding`` tree of the :class:`TrainState` (the state is created,
        kept and returned with these; it is donated).

    Shapes:
      batches: ``PackedBatch`` leaves ``[A, D, ...]``: A accumulation steps, D buckets per
        accumulation step (a multiple of ``data x fsdp``), sharded ``P(None, ("data", "fsdp"))``.
    """
    mesh_shape = dict(mesh.shape)
    param_specs = jax.tree.map(
        lambda s: s.spec, state_shardings.params, is_leaf=lambda x: isinstance(x, NamedSharding)
    )
    is_spec = lambda x: isinstance(x, P)
    batch_spec = P(None, BATCH_AXES)

    def local(params, batches, keys):
        # params: this device's shards; batches/keys: [A, D_local, ...]
        full = jax.tree.map(_gather, params, param_specs, is_leaf=is_spec)
        a, d = keys.shape[:2]
        flat = jax.tree.map(lambda x: x.reshape((a * d, *x.shape[2:])), batches)  # [A*Dl, ...]
        keys = jax.random.wrap_key_data(keys.reshape((a * d, *keys.shape[2:])))
        loss, grads, metrics = _accumulate(loss_fn, full, flat, keys)
        grads = jax.tree.map(
            lambda g, s: _reduce(g, s, mesh_shape), grads, param_specs, is_leaf=is_spec
        )
        loss = jax.lax.pmean(loss, BATCH_AXES)
        metrics = jax.tree.map(lambda m: jax.lax.psum(m, BATCH_AXES), metrics)
        return loss, grads, metrics

    grad_fn = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(param_specs, batch_spec, batch_spec),
        out_specs=(P(), param_specs, P()),
        check_vma=False,
    )

    def train_step(state: TrainState, batches: PackedBatch, rng: jax.Array):
        a, d = jax.tree.leaves(batches)[0].shape[:2]
        keys = jax.random.key_data(jax.random.split(rng, a * d)).reshape(a, d, -1)
        keys = jax.lax.with_sharding_constraint(keys, NamedSharding(mesh, batch_spec))
        loss, grads, metrics = grad_fn(state.params, batches, keys)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    replicated = NamedSharding(mesh, P())
    return jax.jit(
        train_step,
        donate_argnums=(0,),
        in_shardings=(state_shardings, NamedSharding(mesh, batch_spec), replicated),
        out_shardings=(state_shardings, replicated),
    )


def make_eval_step(loss_fn: LossFn, **jit_kwargs):
    """``eval_step(params, batch) -> metrics`` for one bucket (no gradient, deterministic)."""

    def eval_step(params, batch: PackedBatch):
        loss, metrics = loss_fn(params, batch, jax.random.key(0), False)
        return {**metrics, "loss": loss}

    return jax.jit(eval_step, **jit_kwargs)
