"""Which attention implementation a compiled GraphFM train step uses (``--explain-attention``).

It lowers the real pretraining step (:func:`jaxfm.train.step.make_train_step` with the
pretraining optimizer, on the mesh of one device) at the pretraining budgets, from shapes only,
and reports every attention call through :func:`jaxfm.ops.explain.explain_attention`.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxfm.graphfm import GraphFM, GraphFMConfig, loss_and_metrics
from jaxfm.graphfm.summary import _with_placeholder, dummy_batch
from jaxfm.ops.explain import explain_attention
from jaxfm.train.graphfm_pretrain import PretrainConfig
from jaxfm.train.optim import make_optimizer
from jaxfm.train.step import TrainState, make_train_step

__all__ = ["explain_train_step"]


def explain_train_step(
    config: GraphFMConfig,
    *,
    nodes: int = 2048,
    graphs: int = 16,
    targets: int = 256,
    dtype: str | None = None,
) -> list[dict]:
    """Lowers one GraphFM pretraining step and reports each attention call's implementation.

    Args:
      config: the model config (no dataset table: one placeholder dataset).
      nodes: T. graphs: G. targets: Q (static budgets of a packed bucket).
      dtype: compute dtype override (``"bfloat16"`` as in pretraining on accelerators).

    Returns:
      The rows of :func:`jaxfm.ops.explain.explain_attention`. Nothing is allocated or run.
    """
    config = _with_placeholder(config)
    if dtype is not None:
        config = dataclasses.replace(config, dtype=dtype)
    model = GraphFM(config)
    bucket = dummy_batch(config, rows=nodes, graphs=graphs, targets=targets)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_batch(config)))["params"]
    opt = make_optimizer(PretrainConfig().optimizer.for_run(PretrainConfig().steps), params)
    state = jax.eval_shape(lambda p: TrainState.create(p, opt), params)

    def loss_fn(p, batch, key, train):
        out = model.apply({"params": p}, batch, deterministic=not train, rngs={"dropout": key})
        return loss_and_metrics(out, batch, config)[0], {}

    step = make_train_step(loss_fn, opt)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct((1, 1, *np.shape(x)), x.dtype), bucket)
    key = jax.eval_shape(lambda: jax.random.key(0))
    return explain_attention(lambda s, b, k: step(s, b, k), state, batch, key)
