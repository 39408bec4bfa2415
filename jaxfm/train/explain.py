"""Which attention implementation a compiled GraphFM train step uses (``--explain-attention``).

It lowers the train step's computation, the gradient of the pretraining loss at the pretraining
budgets, from shapes only, and reports every attention call through
:func:`jaxfm.ops.explain.explain_attention`. It lowers the gradient itself rather than
:func:`jaxfm.train.step.make_train_step`: inside that step's ``shard_map`` the compiled program
loses the module scopes that attribute each kernel to its attention call (measured: every row
came back without a path). The kernels chosen are the same, since the step runs this gradient.
"""

from __future__ import annotations

import dataclasses

import jax

from jaxfm.graphfm import GraphFM, GraphFMConfig, loss_and_metrics
from jaxfm.graphfm.summary import _with_placeholder, dummy_batch
from jaxfm.ops.explain import explain_attention

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

    def loss(p, batch):
        return loss_and_metrics(model.apply({"params": p}, batch), batch, config)[0]

    return explain_attention(jax.value_and_grad(loss), params, bucket)
