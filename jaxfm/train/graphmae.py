"""GraphMAE's trainers on the spine: masked-feature pretraining and the linear-probe evaluation.

Both run :func:`jaxfm.train.step.make_train_step` over a full-graph
:class:`jaxfm.train.trainer.RepeatBatches` batch in the loop :func:`jaxfm.train.trainer.fit`
(step ``s`` uses ``fold_in(rng, s)``; checkpoints and resume with a ``workdir``), with
:func:`jaxfm.train.optim.make_optimizer` (no weight decay on biases, norm scales and the
``[MASK]`` token). :func:`linear_probe` trains a logistic regression on the frozen encoder
embeddings and selects the epoch by validation accuracy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfm.baselines.graphmae import GraphMAE
from jaxfm.train.optim import OptimizerConfig, make_optimizer
from jaxfm.train.step import (
    TrainState,
    default_mesh,
    make_eval_step,
    make_train_step,
    state_shardings_for,
)
from jaxfm.train.trainer import RepeatBatches, Select, fit, read_metrics

__all__ = ["linear_probe", "pretrain_graphmae"]


def _checkpoint_every(epochs: int) -> int:
    """About ten checkpoints a run: a full-graph step is cheap next to a save."""
    return max(epochs // 10, 1)


def _adamw_state(params, *, learning_rate: float, weight_decay: float, epochs: int):
    """AdamW and its train state, created with the state's shardings (on one device).

    Returns ``(optimizer, state, shardings)``; ``shardings`` go to ``make_train_step`` so that
    the first step sees the same input types as the later ones (one compilation).
    """
    cfg = OptimizerConfig(
        name="adamw", learning_rate=learning_rate, weight_decay=weight_decay, clip_norm=None
    )
    tx = make_optimizer(cfg.for_run(epochs), params)
    create = lambda p: TrainState.create(p, tx)
    shardings = state_shardings_for(jax.eval_shape(create, params), default_mesh())
    return tx, jax.jit(create, out_shardings=shardings)(params), shardings


def pretrain_graphmae(
    model: GraphMAE,
    x,
    senders,
    receivers,
    *,
    epochs: int = 200,
    learning_rate: float = 1e-3,
    weight_decay: float = 2e-4,
    seed: int = 0,
    edge_mask=None,
    node_mask=None,
    workdir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
):
    """Full-graph GraphMAE pretraining with AdamW, one step per epoch.

    Args:
      model: the autoencoder.
      x, senders, receivers: the graph (see Shapes).
      epochs: training steps (each one over the whole graph).
      learning_rate, weight_decay: AdamW (:func:`jaxfm.train.optim.make_optimizer`).
      seed: initialisation seed; step ``s`` masks and drops out with ``fold_in(rng, s)``.
      edge_mask, node_mask: optional validity masks.
      workdir: checkpoints and ``metrics.jsonl`` (one record per step) go here.
      resume: continue from the newest checkpoint in ``workdir``.
      overwrite: a fresh run may replace an earlier run's checkpoints in ``workdir``.
      progress: a progress bar.

    Returns:
      ``(variables, losses)``: ``{"params": ...}`` for ``model.apply``, and the ``[epochs]``
      training losses (of the whole run, across resumes, when there is a ``workdir``; of the
      steps this call ran otherwise). A run stopped by SIGTERM / SIGINT returns the losses so far.

    Shapes:
      x ``[N, F]`` dense; senders/receivers ``[E]`` int; edge_mask ``[E]``; node_mask ``[N]``.
    """
    init_key, mkey, rng = jax.random.split(jax.random.key(seed), 3)
    graph = {"x": x, "senders": senders, "receivers": receivers}
    if edge_mask is not None:
        graph["edge_mask"] = edge_mask
    if node_mask is not None:
        graph["node_mask"] = node_mask
    graph = jax.device_put(graph)  # step arguments, not constants folded into the program
    masks = {k: graph.get(k) for k in ("edge_mask", "node_mask")}
    params = model.init({"params": init_key, "mask": mkey}, x, senders, receivers, **masks)
    params = params["params"]
    tx, state, shardings = _adamw_state(
        params, learning_rate=learning_rate, weight_decay=weight_decay, epochs=epochs
    )

    def loss_fn(params, g, key, train):
        mkey, dkey = jax.random.split(key)
        loss, masked = model.apply(
            {"params": params},
            g["x"],
            g["senders"],
            g["receivers"],
            edge_mask=g.get("edge_mask"),
            node_mask=g.get("node_mask"),
            deterministic=not train,
            rngs={"mask": mkey, "dropout": dkey},
        )
        return loss, {"masked_nodes": masked.sum().astype(jnp.float32)}

    info = {
        "graphmae": {
            f.name: getattr(model, f.name)
            for f in dataclasses.fields(model)
            if f.name not in ("parent", "name")
        },
        "epochs": epochs,
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "seed": seed,
        "num_nodes": int(x.shape[0]),
        "num_edges": int(senders.shape[0]),
    }
    fitted = fit(
        state,
        make_train_step(loss_fn, tx, state_shardings=shardings),
        RepeatBatches(graph),
        total_steps=epochs,
        rng=rng,
        steps_per_epoch=1,
        workdir=workdir,
        checkpoint_every=_checkpoint_every(epochs),
        resume=resume,
        overwrite=overwrite,
        run_info=info,
        log_every=1,
        log_stream=None,
        progress=progress,
        desc="graphmae",
    )
    records = read_metrics(workdir) if workdir is not None else fitted.steps
    losses = np.asarray([r["loss"] for r in records if "loss" in r], np.float32)
    return {"params": fitted.best_params}, losses


def linear_probe(
    embeddings,
    labels,
    masks,
    num_classes: int,
    *,
    epochs: int = 300,
    learning_rate: float = 0.01,
    weight_decay: float = 1e-4,
    seed: int = 0,
    workdir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Logistic regression on frozen embeddings, the epoch selected by validation accuracy.

    Selection is :class:`jaxfm.train.trainer.Select` on validation accuracy (a later epoch must
    be strictly better); test accuracy is computed once, at the selected parameters.

    Args:
      embeddings: ``[N, D]`` frozen node embeddings.
      labels: ``[N]`` int class ids.
      masks: ``[3, N]`` train / val / test indicators (float or bool).
      num_classes: C.
      epochs: full-batch AdamW steps.
      learning_rate: AdamW learning rate.
      weight_decay: AdamW weight decay (on the kernel, not the bias).
      seed: initialisation seed.
      workdir: checkpoints and ``metrics.jsonl`` go here.
      resume: continue from the newest checkpoint in ``workdir``.
      overwrite: a fresh run may replace an earlier run's checkpoints in ``workdir``.

    Returns:
      ``{"val_accuracy", "test_accuracy", "best_epoch"}`` (0-based epoch), or
      ``{"preempted": True}`` for a run stopped by SIGTERM / SIGINT (resume it).
    """
    data = jax.device_put(
        {
            "emb": jnp.asarray(embeddings, jnp.float32),
            "y": jnp.asarray(labels, jnp.int32),
            "masks": jnp.asarray(masks, jnp.float32),
        }
    )
    probe = nn.Dense(num_classes)
    key = jax.random.key(seed)
    params = probe.init(key, data["emb"][:1])["params"]
    tx, state, shardings = _adamw_state(
        params, learning_rate=learning_rate, weight_decay=weight_decay, epochs=epochs
    )

    def loss_fn(params, b, key, train):
        del key, train  # deterministic
        logits = probe.apply({"params": params}, b["emb"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, b["y"])
        return jnp.sum(ce * b["train"]) / jnp.maximum(b["train"].sum(), 1.0), {}

    def accuracy_fn(params, data, which):
        mask = data["masks"][which]
        hit = probe.apply({"params": params}, data["emb"]).argmax(-1) == data["y"]
        return jnp.sum(hit * mask) / jnp.maximum(mask.sum(), 1.0)

    accuracy = make_eval_step(accuracy_fn)
    select = Select(metric="accuracy", mode="max")
    batch = {"emb": data["emb"], "y": data["y"], "train": data["masks"][0]}
    info = {
        "epochs": epochs,
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "seed": seed,
        "embeddings": list(data["emb"].shape),
        "num_classes": num_classes,
    }
    fitted = fit(
        state,
        make_train_step(loss_fn, tx, state_shardings=shardings),
        RepeatBatches(batch),
        total_steps=epochs,
        rng=key,
        steps_per_epoch=1,
        evaluate=lambda p: {"accuracy": accuracy(p, data, 1)},
        select=select,
        workdir=workdir,
        checkpoint_every=_checkpoint_every(epochs),
        resume=resume,
        overwrite=overwrite,
        run_info=info,
        log_stream=None,
        progress=False,
        desc="linear probe",
    )
    if fitted.preempted:
        return {"preempted": True}
    best = jax.device_put(fitted.best_params, shardings.params)  # as the evaluations saw them
    return {
        "val_accuracy": float(select.best),
        "test_accuracy": float(accuracy(best, data, 2)),
        "best_epoch": int(select.best_epoch),
    }
