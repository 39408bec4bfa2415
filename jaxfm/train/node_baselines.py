"""Full-graph training of the node-classification baselines on a node dataset's splits.

The reference numbers beside GraphFM's finetuning: each baseline is trained on exactly the same
train/val/test masks (the dataset's public splits, or the seeded 60/20/20 ones), model selection
on validation accuracy, test accuracy reported per split and as mean ± std.

Models (``BaselineConfig.model``): the :class:`~jaxfm.baselines.gnn.GNN` stack of every kind of
the one registry :data:`jaxfm.baselines.kinds.KINDS` (``gcn``, ``sage``, ``gat``, ``gin``,
``gps``, and ``mlp``, the no-graph control), on the dataset's symmetrised, deduplicated edges
without self loops (the layers add their own where the method defines them); and ``graphmae``
(self-supervised pretraining once per call, then a linear probe per split, the probe trained for
``epochs`` steps with ``learning_rate`` / ``weight_decay``).

Training runs on jaxfm's spine: one :func:`~jaxfm.train.step.make_train_step` step per epoch
over the whole graph (:class:`~jaxfm.train.trainer.RepeatBatches`, the graph's arrays on the
device as step arguments), :func:`~jaxfm.train.trainer.fit` with
``Select(metric="accuracy", mode="max")`` on validation accuracy (a later epoch must be strictly
better; test accuracy is computed once, at the selected parameters), AdamW from
:func:`~jaxfm.train.optim.make_optimizer` (no decay on biases), and
:func:`~jaxfm.train.trainer.run_splits`: with ``BaselineConfig.workdir`` each split trains in
``WORKDIR/split_<i>`` (checkpoints, ``metrics.jsonl``, ``result.json``) and a run resumed with
``resume=True`` skips the finished splits and continues the unfinished one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp
from jax.experimental import sparse as jsparse
from tqdm.auto import tqdm

from jaxfm.baselines.gcn import gcn_norm
from jaxfm.baselines.gnn import GNN
from jaxfm.baselines.graphmae import GraphMAE
from jaxfm.baselines.kinds import KINDS
from jaxfm.data.graph_dataset import NodeDataset
from jaxfm.train.graphmae import linear_probe, pretrain_graphmae
from jaxfm.train.optim import OptimizerConfig, make_optimizer
from jaxfm.train.step import (
    TrainState,
    default_mesh,
    make_eval_step,
    make_train_step,
    state_shardings_for,
)
from jaxfm.train.trainer import RepeatBatches, Select, fit, run_splits

__all__ = ["MODEL_NAMES", "BaselineConfig", "train_node_baseline"]

MODEL_NAMES = (*KINDS, "graphmae")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaselineConfig:
    """Hyper-parameters of a baseline run (Kipf & Welling's defaults).

    Attributes:
      model: one of :data:`MODEL_NAMES`.
      hidden, depth, dropout: widths / layers / feature dropout of the supervised model.
      learning_rate, weight_decay, epochs: AdamW full-batch training, one step per epoch (for
        ``graphmae``: the linear probe's).
      seed: initialisation / dropout seed (split i uses ``seed * 1000 + i``).
      heads: attention heads of ``gat`` hidden layers, ``gps`` layers and the GraphMAE encoder.
      gps_max_nodes: ``gps`` refuses larger graphs (its full attention is ``O(N^2)``).
      graphmae_epochs, graphmae_hidden, graphmae_mask_rate, graphmae_learning_rate,
        graphmae_weight_decay: GraphMAE pretraining.
      workdir: where the run's checkpoints and logs go (``split_<i>/`` per split, and
        ``graphmae_pretrain/``); None: nothing is written and nothing can be resumed.
    """

    model: str = "gcn"
    hidden: int = 64
    depth: int = 2
    dropout: float = 0.5
    learning_rate: float = 0.01
    weight_decay: float = 5e-4
    epochs: int = 200
    seed: int = 0
    heads: int = 4
    gps_max_nodes: int = 12000
    graphmae_epochs: int = 200
    graphmae_hidden: int = 256
    graphmae_mask_rate: float = 0.5
    graphmae_learning_rate: float = 1e-3
    graphmae_weight_decay: float = 2e-4
    workdir: str | None = None

    def __post_init__(self):
        if self.model not in MODEL_NAMES:
            raise ValueError(
                f"BaselineConfig.model must be one of {MODEL_NAMES}, got {self.model!r}"
            )
        if self.epochs < 1 or self.hidden < 1 or self.depth < 1:
            raise ValueError("BaselineConfig: epochs, hidden and depth must be >= 1")
        if self.heads < 1 or self.gps_max_nodes < 1 or self.graphmae_epochs < 1:
            raise ValueError("BaselineConfig: heads, gps_max_nodes, graphmae_epochs must be >= 1")
        if self.model in ("gat", "gps") and self.hidden % self.heads:
            raise ValueError(
                f"BaselineConfig: hidden ({self.hidden}) must be divisible by heads "
                f"({self.heads}) for model {self.model!r}"
            )
        if self.model == "graphmae" and self.graphmae_hidden % self.heads:
            raise ValueError(
                f"BaselineConfig: graphmae_hidden ({self.graphmae_hidden}) must be divisible "
                f"by heads ({self.heads})"
            )
        if not 0.0 < self.graphmae_mask_rate < 1.0:
            raise ValueError(
                f"BaselineConfig.graphmae_mask_rate must be in (0, 1), got "
                f"{self.graphmae_mask_rate}"
            )


DENSE_LIMIT = 2**26  # feature matrices up to 64M entries (256 MB fp32) are densified


def _features(x):
    """Dense when it fits (XLA:CPU's BCOO matmul is ~50x slower here), else BCOO."""
    if sp.issparse(x) and x.shape[0] * x.shape[1] <= DENSE_LIMIT:
        x = x.toarray()
    if sp.issparse(x):
        x = sp.coo_matrix(x)
        idx = np.stack([x.row, x.col], axis=1).astype(np.int32)
        return jsparse.BCOO((jnp.asarray(x.data, jnp.float32), jnp.asarray(idx)), shape=x.shape)
    return jnp.asarray(x, jnp.float32)


def train_node_baseline(
    ds: NodeDataset,
    cfg: BaselineConfig,
    *,
    splits: list[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Trains ``cfg.model`` once per split and returns per-split and aggregate test accuracy.

    Args:
      ds: a node-classification dataset with splits.
      cfg: the run's settings (``cfg.workdir``: checkpoints and per-split results).
      splits: which splits (default: all).
      resume: continue the run in ``cfg.workdir``: finished splits are read back, not retrained;
        an unfinished one continues from its newest checkpoint.
      overwrite: a fresh run may replace an earlier run's checkpoints in ``cfg.workdir``.
      progress: a progress bar over the splits.

    Returns:
      ``{"model", "dataset", "per_split": [{"split", "val_accuracy", "test_accuracy",
      "best_epoch"}], "test_accuracy_mean", "test_accuracy_std"}``; a run stopped by SIGTERM /
      SIGINT also has ``"preempted": True`` and only the splits it finished.

    Raises:
      ValueError: not a classification dataset, no splits, or a graph too large for ``gps``.
    """
    if ds.task != "classification":
        raise ValueError(f"{ds.name}: baselines here are node classifiers, task is {ds.task!r}")
    if not ds.splits:
        raise ValueError(f"{ds.name}: the dataset has no splits")
    chosen = list(range(len(ds.splits))) if splits is None else list(splits)
    if cfg.model == "gps" and ds.num_nodes > cfg.gps_max_nodes:
        raise ValueError(
            f"{ds.name}: model 'gps' attends over all node pairs; the graph has {ds.num_nodes} "
            f"nodes > BaselineConfig.gps_max_nodes={cfg.gps_max_nodes}"
        )
    s, r, _ = gcn_norm(ds.senders, ds.receivers, ds.num_nodes)
    keep = s != r  # symmetrised and deduplicated, without gcn_norm's self loops
    graph = {
        "x": _features(ds.x),
        "senders": jnp.asarray(s[keep]),
        "receivers": jnp.asarray(r[keep]),
        "y": jnp.asarray(np.maximum(ds.y, 0), jnp.int32),
    }
    graph = jax.device_put(graph)  # step arguments, not constants folded into the program
    bar = tqdm(chosen, desc=f"{cfg.model} {ds.name}", disable=not progress, leave=False)
    if cfg.model == "graphmae":
        results = _graphmae_results(ds, cfg, graph, bar, resume=resume, overwrite=overwrite)
        return _summary(cfg, ds, results)
    model = GNN(
        cfg.model,
        hidden=cfg.hidden,
        num_classes=ds.num_classes,
        depth=cfg.depth,
        dropout=cfg.dropout,
        heads=cfg.heads,
    )

    def init(key):
        return model.init(key, graph["x"], graph["senders"], graph["receivers"])["params"]

    opt = OptimizerConfig(
        name="adamw", learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, clip_norm=None
    )
    tx = make_optimizer(opt.for_run(cfg.epochs), jax.eval_shape(init, jax.random.key(0)))
    create = lambda key: TrainState.create(init(key), tx)
    shardings = state_shardings_for(jax.eval_shape(create, jax.random.key(0)), default_mesh())
    create = jax.jit(create, out_shardings=shardings)  # the state is created sharded
    # One step (one compilation) for every split.
    train_step = make_train_step(_loss_fn(model), tx, state_shardings=shardings)
    accuracy = make_eval_step(_accuracy_fn(model))

    def train_split(i: int, workdir: Path | None) -> dict:
        train_mask, val_mask, test_mask = _split_masks(ds, i)
        rng, init_key = jax.random.split(jax.random.key(cfg.seed * 1000 + i))
        select = Select(metric="accuracy", mode="max")
        fitted = fit(
            create(init_key),
            train_step,
            RepeatBatches({**graph, "mask": train_mask}),
            total_steps=cfg.epochs,
            rng=rng,
            steps_per_epoch=1,
            evaluate=lambda p: {"accuracy": accuracy(p, graph, val_mask)},
            select=select,
            workdir=workdir,
            checkpoint_every=_checkpoint_every(cfg.epochs),
            resume=resume,
            overwrite=overwrite,
            run_info=_run_info(cfg, ds, i),
            log_stream=None,
            progress=False,
            desc=f"{cfg.model} {ds.name} split {i}",
        )
        if fitted.preempted:
            return {"split": i, "preempted": True}
        best = jax.device_put(fitted.best_params, shardings.params)  # as the evaluations saw them
        return {
            "split": i,
            "val_accuracy": float(select.best),
            "test_accuracy": float(accuracy(best, graph, test_mask)),
            "best_epoch": int(select.best_epoch),
        }

    identity = {k: v for k, v in _run_info(cfg, ds, -1).items() if k != "split"}
    results = run_splits(cfg.workdir, bar, train_split, resume=resume, identity=identity)
    return _summary(cfg, ds, results)


def _checkpoint_every(epochs: int) -> int:
    """About ten checkpoints a split: a full-graph step is cheap next to a save."""
    return max(epochs // 10, 1)


def _forward(model: GNN, params, graph, **kw):
    return model.apply({"params": params}, graph["x"], graph["senders"], graph["receivers"], **kw)


def _loss_fn(model: GNN):
    """Mean cross-entropy over the training nodes (``batch["mask"]``) of the whole graph."""

    def loss_fn(params, batch, rng, train):
        logits = _forward(model, params, batch, deterministic=not train, rngs={"dropout": rng})
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])  # [N]
        mask = batch["mask"]
        return jnp.sum(ce * mask) / jnp.maximum(mask.sum(), 1), {}

    return loss_fn


def _accuracy_fn(model: GNN):
    """``(params, graph, mask [N]) -> accuracy`` over the nodes of ``mask`` (deterministic)."""

    def accuracy(params, graph, mask):
        hit = (_forward(model, params, graph).argmax(-1) == graph["y"]).astype(jnp.float32)
        return jnp.sum(hit * mask) / jnp.maximum(mask.sum(), 1)

    return accuracy


def _run_info(cfg: BaselineConfig, ds: NodeDataset, split: int) -> dict:
    """What a resumed split must repeat: the config (not its workdir), the dataset, the split."""
    info = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workdir"}
    return {"baseline": info, "dataset": ds.name, "num_nodes": ds.num_nodes, "split": split}


def _split_masks(ds: NodeDataset, i: int):
    """``[3, N]`` float train / val / test masks of split ``i``, unlabelled nodes excluded."""
    sp_ = ds.splits[i]
    labelled = ds.y >= 0
    return jax.device_put(
        np.stack([sp_.train & labelled, sp_.val & labelled, sp_.test & labelled]).astype(np.float32)
    )


def _graphmae_results(ds, cfg: BaselineConfig, graph, splits, *, resume, overwrite) -> list[dict]:
    """Pretrains GraphMAE once (seed ``cfg.seed``), then one linear probe per split.

    The pretraining (``WORKDIR/graphmae_pretrain``) and the embeddings run only when a split
    still needs its probe.
    """
    x = graph["x"]
    if isinstance(x, jsparse.BCOO):
        x = x.todense()  # the reconstruction target is dense anyway
    model = GraphMAE(
        num_features=x.shape[1],
        hidden=cfg.graphmae_hidden,
        heads=cfg.heads,
        mask_rate=cfg.graphmae_mask_rate,
    )
    s, r = graph["senders"], graph["receivers"]
    cache: dict = {}

    def embeddings():
        if "emb" not in cache:
            params, losses = pretrain_graphmae(
                model,
                x,
                s,
                r,
                epochs=cfg.graphmae_epochs,
                learning_rate=cfg.graphmae_learning_rate,
                weight_decay=cfg.graphmae_weight_decay,
                seed=cfg.seed,
                workdir=None if cfg.workdir is None else Path(cfg.workdir) / "graphmae_pretrain",
                resume=resume,
                overwrite=overwrite,
            )
            if len(losses) < cfg.graphmae_epochs:  # stopped by SIGTERM / SIGINT (saved)
                return None
            encode = jax.jit(lambda p, x, s, r: model.apply(p, x, s, r, method=GraphMAE.encode))
            cache["emb"] = encode(params, x, s, r)
        return cache["emb"]

    def train_split(i: int, workdir: Path | None) -> dict:
        emb = embeddings()
        if emb is None:
            return {"split": i, "preempted": True}
        probe = linear_probe(
            emb,
            graph["y"],
            _split_masks(ds, i),
            ds.num_classes,
            epochs=cfg.epochs,
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed * 1000 + i,
            workdir=workdir,
            resume=resume,
            overwrite=overwrite,
        )
        return {"split": i, **probe}

    return run_splits(cfg.workdir, splits, train_split, resume=resume)


def _summary(cfg: BaselineConfig, ds: NodeDataset, results: list[dict]) -> dict:
    done = [res for res in results if not res.get("preempted")]
    tests = np.array([res["test_accuracy"] for res in done])
    summary = {
        "model": cfg.model,
        "dataset": ds.name,
        "per_split": done,
        "test_accuracy_mean": float(tests.mean()) if done else float("nan"),
        "test_accuracy_std": float(tests.std()) if done else float("nan"),
    }
    if len(done) < len(results):
        summary["preempted"] = True
    return summary
