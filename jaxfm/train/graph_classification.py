"""Graph classification with k-fold cross-validation: GNN baselines and GraphFM-MFT.

Both learners see the same folds (:func:`jaxfm.data.graph_batches.stratified_folds`: fold ``k``
tests on part ``k``, selects the epoch on part ``k + 1`` and trains on the other ``k - 2`` parts)
and the same node features (:func:`jaxfm.data.graph_batches.feature_scaler`). Both train on the
training spine: :func:`~jaxfm.train.step.make_train_step`,
:func:`~jaxfm.train.optim.make_optimizer`, and :func:`~jaxfm.train.trainer.fit` with
:class:`~jaxfm.train.trainer.Select` on validation accuracy (ties keep the earlier epoch), one
resumable sub-workdir per fold (:func:`~jaxfm.train.trainer.run_splits`). Test accuracy is that
of the selected parameters, reported per fold and as mean ± std (population std, as in the GIN
paper's tables).

- **Baselines** (:func:`train_graph_baseline`): :class:`~jaxfm.baselines.GraphClassifier` (GIN,
  GCN, GraphSAGE) on padded disjoint-union batches (:class:`~jaxfm.data.graph_batches.GraphUnion`).
- **GraphFM-MFT** (:func:`finetune_graphfm_graph`, GraphFM appendix D.4): a pretrained GraphFM
  (``jaxfm pretrain``'s model directory) gets the graph decoder (a learned query cross-attending
  to each graph's latents) and a graph head; the new per-dataset feature MLP, the graph decoder
  and the graph head are trained while the SignNet, the Perceiver encoder and the node decoder
  stay frozen (parameter-path rules, :data:`GRAPH_MFT_RULES`). Graphs are packed whole
  (:class:`~jaxfm.data.graph_batches.PackedGraphs`), with features and Laplacian PEs prepared by
  :func:`~jaxfm.data.corpus.build_corpus` exactly as in pretraining.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfm.baselines.graph_classifier import GRAPH_CLASSIFIER_KINDS, GraphClassifier
from jaxfm.data.graph_batches import (
    Fold,
    GraphUnion,
    PackedGraphs,
    feature_scaler,
    select_folds,
    union_batches,
    union_budgets,
)
from jaxfm.data.graph_dataset import GraphClassificationDataset
from jaxfm.graph.batching import graph_mask
from jaxfm.train.optim import OptimizerConfig, make_optimizer
from jaxfm.train.step import (
    TrainState,
    default_mesh,
    make_eval_step,
    make_train_step,
    state_shardings_for,
)
from jaxfm.train.trainer import EpochBatches, FitResult, Select, fit, run_splits

__all__ = [
    "BASELINE_KINDS",
    "GRAPH_MFT_RULES",
    "finetune_graphfm_graph",
    "train_graph_baseline",
]

#: Message-passing layers :func:`train_graph_baseline` can stack.
BASELINE_KINDS = GRAPH_CLASSIFIER_KINDS
#: Parameters trained by graph-level MFT: the new feature MLP and heads, plus the graph decoder.
GRAPH_MFT_RULES = ("^tokenizer/feature_mlp/", "^heads/", "^graph_heads/", "^graph_decoder/")


def _fold_info(ds: GraphClassificationDataset, fi: int, fold: Fold) -> dict:
    """The fold's identity in ``run_info`` (a resume with other folds is refused)."""
    digest = hashlib.sha1()
    for part in fold:
        digest.update(np.asarray(part, np.int64).tobytes() + b"|")
    return {"dataset": ds.name, "num_graphs": len(ds.graphs), "fold": fi,
            "fold_sha1": digest.hexdigest()}  # fmt: skip


def _run_folds(
    workdir, pairs: list[tuple[int, Fold]], train_fold: Callable, resume: bool
) -> tuple[list[dict], bool]:
    """``train_fold(index, fold, sub_workdir) -> row`` for every fold, one sub-workdir each.

    Returns the finished folds' rows and whether the run was preempted. A finished fold's row is
    read back from ``WORKDIR/split_<index>/result.json`` on resume (not trained again); it must
    carry the same ``run`` identity as this call's.
    """
    index = [fi for fi, _ in pairs]
    if workdir is not None and len(set(index)) < len(index):
        raise ValueError(f"folds: fold indices repeat ({index}); each needs its own sub-workdir")
    by_index = dict(pairs)
    rows = run_splits(
        workdir, index, lambda fi, sub: train_fold(fi, by_index[fi], sub), resume=resume
    )
    done = [r for r in rows if not r.get("preempted")]
    return done, len(done) < len(pairs)


def _check_run(row: dict, run: dict, workdir) -> None:
    if row.get("run") != run:
        raise ValueError(
            f"resume: {workdir}/split_{row.get('fold')}/result.json belongs to a run with other "
            f"settings ({row.get('run')} vs {run}); repeat the original run or use a new workdir"
        )


def _row(fi: int, fitted: FitResult, test_accuracy: float, run: dict) -> dict:
    """One fold's row: validation metrics at the selected evaluation, test accuracy there."""
    best = next(r for r in fitted.history if r["step"] == fitted.select.best_step)
    return {
        "fold": fi,
        "val_accuracy": best["val_accuracy"],
        "val_loss": best["val_loss"],
        "test_accuracy": float(test_accuracy),
        "best_epoch": fitted.select.best_epoch,
        "run": run,
    }


def _spine(loss_fn, tx, params) -> tuple[Callable, Callable]:
    """``(create_state, train_step)`` on the one-device mesh; the state is created already
    sharded (as every step returns it), so the step compiles once per batch shape."""
    mesh = default_mesh()
    create = lambda p: TrainState.create(p, tx)
    shardings = state_shardings_for(jax.eval_shape(create, params), mesh)
    step = make_train_step(loss_fn, tx, mesh=mesh, state_shardings=shardings)
    return jax.jit(create, out_shardings=shardings), step


def _selected(fitted: FitResult):
    """The selected parameters, placed like the trained ones (no recompiled evaluation)."""
    return jax.device_put(
        fitted.best_params, jax.tree.map(lambda x: x.sharding, fitted.state.params)
    )


def _summary(rows: list[dict], preempted: bool, **meta) -> dict:
    tests = np.array([r["test_accuracy"] for r in rows])
    return {
        **meta,
        "per_fold": rows,
        "test_accuracy_mean": float(tests.mean()) if tests.size else float("nan"),
        "test_accuracy_std": float(tests.std()) if tests.size else float("nan"),
        "preempted": preempted,
    }


# ---------------------------------------------------------------------------------------------
# Baselines: disjoint-union batches of message-passing GNNs.


def train_graph_baseline(
    ds: GraphClassificationDataset,
    kind: str = "gin",
    *,
    folds=None,
    epochs: int = 100,
    hidden: int = 64,
    depth: int = 4,
    dropout: float = 0.5,
    readout: str = "sum",
    batch_size: int = 32,
    learning_rate: float = 0.01,
    decay_every: int = 50,
    weight_decay: float = 0.0,
    seed: int = 0,
    workdir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log_stream=None,
    progress: bool = False,
) -> dict:
    """Trains :class:`~jaxfm.baselines.GraphClassifier` once per fold (Adam, lr halved every
    ``decay_every`` epochs, as in the GIN paper) and reports test accuracy at the best validation
    epoch.

    Args:
      ds: the graph-classification set.
      kind: message-passing layer (:data:`BASELINE_KINDS`).
      folds: None (the dataset's folds), fold indices, or explicit
        :class:`~jaxfm.data.graph_batches.Fold` s.
      epochs: passes over each fold's training graphs.
      hidden, depth, dropout, readout: the model.
      batch_size: graphs per step (every step has ``batch_size`` graphs but an epoch's last).
      learning_rate, decay_every, weight_decay: the optimiser (no gradient clipping; decay never
        on biases).
      seed: parameter init, dropout and batch order (per fold ``[seed, fold]``).
      workdir: one sub-workdir per fold (``split_<fold>``: checkpoints each epoch,
        ``metrics.jsonl``, ``result.json`` once finished); None: nothing written.
      resume: continue an interrupted run in ``workdir`` (finished folds are read back).
      overwrite: a fresh run may replace an earlier run's checkpoints in ``workdir``.
      log_stream: where per-epoch JSON records go (None: only ``metrics.jsonl``).
      progress: a tqdm bar per fold.

    Returns:
      ``{"model", "dataset", "epochs", "per_fold": [{"fold", "val_accuracy", "val_loss",
      "test_accuracy", "best_epoch"}], "test_accuracy_mean", "test_accuracy_std",
      "preempted"}`` (a preempted run lists only its finished folds).
    """
    if epochs < 1 or batch_size < 1 or decay_every < 1:
        raise ValueError("train_graph_baseline: epochs, batch_size and decay_every must be >= 1")
    if kind not in BASELINE_KINDS:
        raise ValueError(f"kind must be one of {BASELINE_KINDS}, got {kind!r}")
    model = GraphClassifier(
        kind=kind, num_classes=ds.num_classes, hidden=hidden, depth=depth, dropout=dropout,
        readout=readout,
    )  # fmt: skip
    settings = {"trainer": "graph_baseline", "kind": kind, "epochs": epochs, "hidden": hidden,
                "depth": depth, "dropout": dropout, "readout": readout, "batch_size": batch_size,
                "learning_rate": learning_rate, "decay_every": decay_every,
                "weight_decay": weight_decay, "seed": seed}  # fmt: skip

    def loss_fn(params, graph, key, train):
        logits = model.apply(
            {"params": params}, graph, deterministic=not train, rngs={"dropout": key}
        )
        gm = graph_mask(graph)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, graph.globals)
        loss = jnp.sum(jnp.where(gm, ce, 0.0)) / jnp.maximum(gm.sum(), 1)
        return loss, {"graphs": gm.sum().astype(jnp.float32)}

    def hits_and_ce(params, graph):
        logits = model.apply({"params": params}, graph)
        gm = graph_mask(graph)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, graph.globals)
        hit = (logits.argmax(-1) == graph.globals) & gm
        return hit.sum(), jnp.sum(jnp.where(gm, ce, 0.0))

    evaluate = make_eval_step(hits_and_ce)

    def scores(params, batches, size) -> dict:
        hits, ce = np.sum([np.asarray(evaluate(params, b)) for b in batches], axis=0) / size
        return {"accuracy": float(hits), "loss": float(ce)}

    init = jax.jit(lambda k, g: model.init(k, g)["params"])
    steps: dict[int, tuple] = {}  # steps per epoch -> (optimizer, compiled step), for all folds

    def train_fold(fi: int, fold: Fold, sub) -> dict:
        union = GraphUnion(ds, *feature_scaler(ds, fold.train))
        budgets = union_budgets(union, batch_size)
        val, test = ([*union_batches(union, ids, budgets, batch_size)] for ids in fold[1:])
        per_epoch = -(-fold.train.size // batch_size)
        total = epochs * per_epoch
        key = jax.random.key(int(np.random.default_rng([seed, fi]).integers(2**31)))
        fit_key, init_key = jax.random.split(key)
        params = init(init_key, val[0])
        if per_epoch not in steps:
            cfg = OptimizerConfig(
                name="adamw", learning_rate=learning_rate, weight_decay=weight_decay,
                schedule="step_decay", decay_factor=2.0, clip_norm=None,
            ).for_run(total)  # fmt: skip
            every = decay_every * per_epoch
            tx = make_optimizer(cfg, params, boundaries=range(every, total, every))
            steps[per_epoch] = _spine(loss_fn, tx, params)
        create_state, train_step = steps[per_epoch]

        def make_epoch(epoch: int):
            order = np.random.default_rng([seed, fi, epoch]).permutation(fold.train)
            return union_batches(union, order, budgets, batch_size)

        run = {**settings, **_fold_info(ds, fi, fold)}
        fitted = fit(
            create_state(params),
            train_step,
            EpochBatches(make_epoch, per_epoch),
            total_steps=total,
            rng=fit_key,
            steps_per_epoch=per_epoch,
            evaluate=lambda p: scores(p, val, fold.val.size),
            select=Select(metric="accuracy", mode="max"),
            workdir=sub,
            resume=resume,
            overwrite=overwrite,
            run_info=run,
            log_stream=log_stream,
            progress=progress,
            desc=f"{kind} {ds.name} fold {fi}",
        )
        if fitted.preempted:
            return {"fold": fi, "preempted": True}
        test_accuracy = scores(_selected(fitted), test, fold.test.size)["accuracy"]
        return _row(fi, fitted, test_accuracy, run)

    pairs = select_folds(ds, folds)
    rows, preempted = _run_folds(workdir, pairs, train_fold, resume)
    for row, (fi, fold) in zip(rows, pairs, strict=False):
        _check_run(row, {**settings, **_fold_info(ds, fi, fold)}, workdir)
        del row["run"]
    return _summary(rows, preempted, model=kind, dataset=ds.name, epochs=epochs)


# ---------------------------------------------------------------------------------------------
# GraphFM: graph-level MFT of a pretrained model.


def finetune_graphfm_graph(
    model_dir,
    ds: GraphClassificationDataset,
    folds=None,
    epochs: int = 30,
    *,
    batch_graphs: int = 32,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
    workdir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log_stream=None,
    progress: bool = False,
    return_params: bool = False,
) -> dict:
    """Graph-level MFT (GraphFM D.4) of a pretrained GraphFM on every chosen fold.

    Per fold: a fresh feature MLP, graph decoder (unless the checkpoint has one) and graph head;
    the pretrained SignNet, encoder and node decoder are copied in and frozen
    (:func:`~jaxfm.train.optim.make_optimizer` with ``trainable=GRAPH_MFT_RULES``); AdamW at one
    fixed learning rate (no gradient clipping; decay never on biases and norm scales), graph
    cross-entropy (:func:`~jaxfm.graphfm.loss_and_metrics`). The encoder runs its ``bucketed``
    cross-attention layout (one compiled step per size class).

    Args:
      model_dir: ``WORKDIR/model`` written by ``jaxfm pretrain``.
      ds: the graph-classification set (not in the pretraining corpus).
      folds: None (the dataset's folds), fold indices, or explicit
        :class:`~jaxfm.data.graph_batches.Fold` s.
      epochs: passes over each fold's training graphs.
      batch_graphs: graph slots G per packed batch of the small-graph class (the big-graph
        class gets proportionally fewer).
      learning_rate, weight_decay: AdamW.
      seed: init of the new parameters, dropout, batch order.
      workdir, resume, overwrite, log_stream, progress: as :func:`train_graph_baseline`.
      return_params: also return the last fold's selected parameters under ``"params"``.

    Returns:
      ``{"model": "graphfm-mft", "dataset", "epochs", "checkpoint", "fresh_params",
      "per_fold": [...], "test_accuracy_mean", "test_accuracy_std", "preempted"}`` (as
      :func:`train_graph_baseline`; ``fresh_params`` lists the parameter groups not taken from
      the checkpoint).

    Raises:
      ValueError: the checkpoint is not a GraphFM model directory or does not fit (shapes), or
        ``ds`` was in its pretraining corpus.
    """
    from jaxfm.graphfm import GraphFM, loss_and_metrics
    from jaxfm.train.graphfm_finetune import load_pretrained_graphfm, transplant_pretrained

    if epochs < 1 or batch_graphs < 1:
        raise ValueError("finetune_graphfm_graph: epochs and batch_graphs must be >= 1")
    base, pretrained = load_pretrained_graphfm(model_dir)
    if any(s.name == ds.name for s in base.datasets):
        raise ValueError(f"{ds.name} was in the pretraining corpus of {model_dir}")
    packed = PackedGraphs(
        ds, feature_dim=base.feature_dim, pe_dim=base.pe_dim, num_neighbors=base.num_neighbors,
        batch_graphs=batch_graphs, seed=seed,
    )  # fmt: skip
    cfg = dataclasses.replace(base, graph_decoder=True, datasets=(packed.spec,))
    models = [
        GraphFM(dataclasses.replace(cfg, attention="bucketed", bucket_nodes=cap))
        for cap in packed.caps
    ]  # one parameter tree; only the static attention layout differs
    y = np.asarray(ds.y)
    settings = {"trainer": "graphfm_graph_mft", "checkpoint": str(model_dir), "epochs": epochs,
                "batch_graphs": batch_graphs, "learning_rate": learning_rate,
                "weight_decay": weight_decay, "seed": seed}  # fmt: skip

    def loss_fn(params, batch, key, train):
        model = models[packed.size_class(batch)]  # static: from the batch's shapes
        out = model.apply({"params": params}, batch, deterministic=not train, rngs={"dropout": key})
        return loss_and_metrics(out, batch, cfg)

    logits_of = make_eval_step(
        lambda p, b: models[packed.size_class(b)].apply({"params": p}, b)["graph_logits"]
    )

    def scores(params, batches, size) -> dict:
        hits = ce = 0.0
        for _, batch, ids in batches:
            logits = np.asarray(logits_of(params, batch))[: ids.size]
            hits += float((logits.argmax(-1) == y[ids]).sum())
            ce += float(-_log_softmax(logits)[np.arange(ids.size), y[ids]].sum())
        return {"accuracy": hits / size, "loss": ce / size}

    init = jax.jit(lambda k, b: models[-1].init(k, b)["params"])
    spine: dict = {}  # the state maker and compiled step, shared by every fold
    kept: dict = {}  # the last trained fold's selected parameters

    def train_fold(fi: int, fold: Fold, sub, resume_fold: bool = resume) -> dict:
        units = packed.fold_units(y, fold.train, *feature_scaler(ds, fold.train))
        val, test = (packed.batches(units, ids, [seed, 1]) for ids in fold[1:])
        plan = packed.plan(fold.train)

        def make_epoch(epoch: int):
            order = np.random.default_rng([seed, fi, epoch]).permutation(len(plan))
            for b, i in enumerate(order):
                c, chunk = plan[i]
                yield packed.pack(units, c, chunk, [seed, fi, epoch, b])

        key = jax.random.key(int(np.random.default_rng([seed, fi]).integers(2**31)))
        fit_key, init_key = jax.random.split(key)
        params, fresh = transplant_pretrained(
            init(init_key, val[0][1]), pretrained, str(model_dir),
            fresh_if_absent=("graph_decoder/",),
        )  # fmt: skip
        if not spine:
            opt = OptimizerConfig(
                name="adamw", learning_rate=learning_rate, weight_decay=weight_decay,
                clip_norm=None,
            )  # fmt: skip
            tx = make_optimizer(opt.for_run(1), params, trainable=GRAPH_MFT_RULES)
            spine["create"], spine["step"] = _spine(loss_fn, tx, params)
        run = {**settings, **_fold_info(ds, fi, fold)}
        fitted = fit(
            spine["create"](params),
            spine["step"],
            EpochBatches(make_epoch, len(plan)),
            total_steps=epochs * len(plan),
            rng=fit_key,
            steps_per_epoch=len(plan),
            evaluate=lambda p: scores(p, val, fold.val.size),
            select=Select(metric="accuracy", mode="max"),
            workdir=sub,
            resume=resume_fold,
            overwrite=overwrite,
            run_info=run,
            log_stream=log_stream,
            progress=progress,
            desc=f"graphfm {ds.name} fold {fi}",
        )
        if fitted.preempted:
            return {"fold": fi, "preempted": True}
        kept.update(fold=fi, params=fitted.best_params)
        test_accuracy = scores(_selected(fitted), test, fold.test.size)["accuracy"]
        groups = sorted({"/".join(p.split("/")[:2]) for p in fresh})
        return {**_row(fi, fitted, test_accuracy, run), "fresh_params": groups}

    pairs = select_folds(ds, folds)
    rows, preempted = _run_folds(workdir, pairs, train_fold, resume)
    fresh = []
    for row, (fi, fold) in zip(rows, pairs, strict=False):
        _check_run(row, {**settings, **_fold_info(ds, fi, fold)}, workdir)
        del row["run"]
        fresh = row.pop("fresh_params")
    out = _summary(
        rows, preempted, model="graphfm-mft", dataset=ds.name, epochs=epochs,
        checkpoint=str(model_dir), fresh_params=fresh,
    )  # fmt: skip
    if return_params and not preempted:
        fi, fold = pairs[-1]
        if kept.get("fold") != fi:  # read back from result.json: restore its checkpoint
            train_fold(fi, fold, Path(workdir) / f"split_{fi}", resume_fold=True)
        out["params"] = kept["params"]
    return out


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
