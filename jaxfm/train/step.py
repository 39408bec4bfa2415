"""The one train step and eval step of jaxfm, for every trainer, on any device mesh.

A step receives a batch whose leaves carry two leading axes ``[A, D, ...]``: ``A`` accumulation
steps and ``D`` micro-batches per accumulation step, with ``D`` split over the mesh's ``data`` x
``fsdp`` devices (a multiple of ``data x fsdp``). Inside a ``shard_map`` each device all-gathers
the parameters (stored sharded by :mod:`jaxfm.train.sharding`), runs ``lax.scan`` over its own
``A x D_local`` micro-batches (one micro-batch's activations alive at a time), and
reduce-scatters the gradients back to the parameters' sharding; the optimizer update then runs
once on the sharded state. The loss and gradient are means over all ``A x D`` micro-batches, so
they do not depend on the mesh: one device (the mesh of one device, the default) and eight give
the same step. Metrics returned by the loss function must be sums (counts, sums of errors) so
that they add across micro-batches.

Example:
  >>> from jaxfm.train.optim import OptimizerConfig, make_optimizer
  >>> def loss_fn(params, batch, rng, train):
  ...     err = batch["x"] * params["w"] - batch["y"]
  ...     return (err**2).mean(), {"count": jnp.float32(err.size)}
  >>> params = {"w": jnp.ones(())}
  >>> opt = make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.1, clip_norm=None), params)
  >>> state = TrainState.create(params, opt)
  >>> step = make_train_step(loss_fn, opt)
  >>> batch = {"x": jnp.ones((1, 1, 4)), "y": jnp.zeros((1, 1, 4))}  # [A=1, D=1, 4]
  >>> state, metrics = step(state, batch, jax.random.key(0))
  >>> float(metrics["loss"]), float(metrics["count"]), int(state.step)
  (1.0, 4.0, 1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxfm.train.sharding import BATCH_AXES, data_parallel_size, make_mesh, shardings_for

__all__ = [
    "BATCH_SPEC",
    "LossFn",
    "TrainState",
    "create_state",
    "default_mesh",
    "make_eval_step",
    "make_train_step",
    "stack_batches",
    "state_shardings_for",
]

LossFn = Callable[[Any, Any, jax.Array, bool], tuple[jax.Array, dict]]

#: Sharding of a step's batch leaves ``[A, D, ...]``: ``D`` over the data-parallel axes.
BATCH_SPEC = P(None, BATCH_AXES)


@flax.struct.dataclass
class TrainState:
    """Parameters, optimizer state and step counter (a pytree)."""

    step: jax.Array
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params, optimizer: optax.GradientTransformation) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def default_mesh() -> Mesh:
    """The mesh of one device (the first one): what a trainer uses when given no mesh."""
    return make_mesh("fsdp=1", devices=jax.devices()[:1])


def state_shardings_for(abstract_state: Any, mesh: Mesh) -> Any:
    """``NamedSharding`` tree of a train state (parameter paths -> logical axes -> mesh)."""
    return shardings_for(abstract_state, mesh)


def create_state(params, optimizer: optax.GradientTransformation, mesh: Mesh | None = None):
    """``(state, state_shardings)``: a :class:`TrainState` created directly on ``mesh``.

    Pass both to :func:`make_train_step` (``state_shardings=``), so the step compiles once
    for the state's final layout (a state created unsharded would make it compile twice).
    """
    mesh = default_mesh() if mesh is None else mesh
    create = lambda p: TrainState.create(p, optimizer)
    shardings = state_shardings_for(jax.eval_shape(create, params), mesh)
    return jax.jit(create, out_shardings=shardings)(params), shardings


def stack_batches(batches, accum: int) -> Any:
    """``A x D`` micro-batches (numpy pytrees of equal shapes) -> one batch ``[A, D, ...]``.

    Micro-batch ``b`` goes to accumulation step ``b % A`` of data-parallel slot ``b // A``.
    """
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *batches)  # [D * A, ...]
    # The leading size is spelled out: a zero-size leaf (e.g. no decoder neighbours, ``[.., 0]``)
    # cannot infer a -1.
    split = lambda x: x.reshape((x.shape[0] // accum, accum, *x.shape[1:]))
    return jax.tree.map(lambda x: np.swapaxes(split(x), 0, 1), stacked)


def _accumulate(loss_fn: LossFn, params, batches, keys: jax.Array):
    """Mean loss/grad over the leading micro-batch axis of ``batches``; metrics summed.

    Shapes:
      batches: leaves ``[M, ...]``; keys: ``[M]`` PRNG keys, one per micro-batch.
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


def _param_specs(state_shardings):
    return jax.tree.map(
        lambda s: s.spec, state_shardings.params, is_leaf=lambda x: isinstance(x, NamedSharding)
    )


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    state_shardings: Any = None,
    donate: bool = True,
):
    """``train_step(state, batch, rng) -> (state, metrics)``, jitted, on ``mesh`` (see module).

    Args:
      loss_fn: ``(params, micro_batch, rng, train) -> (loss, metrics)`` for ONE micro-batch;
        metrics are sums so that they add across micro-batches.
      optimizer: from :func:`jaxfm.train.optim.make_optimizer` (freezing and scaling folded in).
      mesh: axes ``(data, fsdp, model)``; default: the mesh of one device.
      state_shardings: ``NamedSharding`` tree of the :class:`TrainState`; default: from the
        parameter paths (:func:`state_shardings_for`), which needs the state's structure, so
        the step is then built on the first call.
      donate: donate the state (do not reuse it after the call).

    Shapes:
      batch: leaves ``[A, D, ...]`` (:func:`stack_batches`): A accumulation steps, D
        micro-batches per accumulation step, a multiple of the mesh's ``data x fsdp``.

    Returns:
      The step; ``metrics`` holds the summed loss-function metrics plus ``loss`` (mean over
      micro-batches) and ``grad_norm``, replicated.
    """
    mesh = default_mesh() if mesh is None else mesh
    mesh_shape = dict(mesh.shape)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, BATCH_SPEC)
    is_spec = lambda x: isinstance(x, P)

    def build(shardings):
        param_specs = _param_specs(shardings)

        def local(params, batches, keys):
            # params: this device's shards; batches / keys: [A, D_local, ...]
            full = jax.tree.map(_gather, params, param_specs, is_leaf=is_spec)
            a, d = keys.shape[:2]
            flat = jax.tree.map(lambda x: x.reshape((a * d, *x.shape[2:])), batches)
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
            in_specs=(param_specs, BATCH_SPEC, BATCH_SPEC),
            out_specs=(P(), param_specs, P()),
            check_vma=False,
        )

        def train_step(state: TrainState, batches, rng: jax.Array):
            a, d = jax.tree.leaves(batches)[0].shape[:2]
            keys = jax.random.key_data(jax.random.split(rng, a * d)).reshape(a, d, -1)
            keys = jax.lax.with_sharding_constraint(keys, batch_sharding)
            loss, grads, metrics = grad_fn(state.params, batches, keys)
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
            return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

        return jax.jit(
            train_step,
            donate_argnums=(0,) if donate else (),
            in_shardings=(shardings, batch_sharding, replicated),
            out_shardings=(shardings, replicated),
        )

    if state_shardings is not None:
        return _check_batch(build(state_shardings), mesh_shape)
    built = {}

    def lazy(state, batches, rng):
        if "step" not in built:
            built["step"] = _check_batch(build(state_shardings_for(state, mesh)), mesh_shape)
        return built["step"](state, batches, rng)

    return lazy


def _check_batch(step, mesh_shape):
    dp = data_parallel_size(mesh_shape)

    def checked(state, batches, rng):
        leaves = jax.tree.leaves(batches)
        if not leaves or np.ndim(leaves[0]) < 2:
            raise ValueError(
                "train_step: batch leaves must have leading axes [A, D, ...] (see "
                "jaxfm.train.step.stack_batches)"
            )
        d = np.shape(leaves[0])[1]
        if d % dp:
            raise ValueError(
                f"train_step: {d} micro-batches per accumulation step is not a multiple of the "
                f"mesh's data x fsdp = {dp} (mesh {mesh_shape})"
            )
        return step(state, batches, rng)

    checked.lower = getattr(step, "lower", None)
    return checked


def make_eval_step(fn: Callable, *, mesh: Mesh | None = None):
    """``eval_step(params, batch) -> fn(params, batch)`` jitted on ``mesh``, outputs replicated.

    ``fn`` is deterministic (no dropout, no gradient): predictions, or summable metrics. The
    parameters keep the shardings they already have; the batch (numpy) is replicated.
    """
    mesh = default_mesh() if mesh is None else mesh
    return jax.jit(fn, out_shardings=NamedSharding(mesh, P()))
