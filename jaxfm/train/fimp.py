"""Training FIMP on one task: batches, the jitted step, evaluation over whole splits, saving.

``train_fimp(RunConfig(...))`` is what ``jaxfm fimp train`` calls; notebooks and experiments call it
the same way.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from jaxfm.baselines.node_gnn import GNN_KINDS, NodeGNN
from jaxfm.baselines.node_mlp import FILLS, NodeMLP
from jaxfm.fimp import pretrained as P
from jaxfm.fimp.config import VARIANTS, FIMPConfig, fimp_config
from jaxfm.fimp.data import DataOptions, FIMPData, prepare_fimp_data
from jaxfm.fimp.serialization import config_to_dict
from jaxfm.fimp.tasks import FIMPTaskModel, loss_and_metrics
from jaxfm.fimp.variants import data_options_for, load_pretrained_source, pretrained_setup
from jaxfm.graph import (
    NodeBatchSampler,
    batch_graphs,
    edge_mask,
    make_budgets,
    node_mask,
    pad_to_budget,
)
from jaxfm.graph.batching import Budget
from jaxfm.model_dir import save_model_dir, write_json_atomic
from jaxfm.ops import metrics as M
from jaxfm.ops.masking import rank_mask
from jaxfm.train.checkpoint import write_run_json
from jaxfm.train.optim import OptimizerConfig, make_optimizer
from jaxfm.train.sharding import data_parallel_size, make_mesh
from jaxfm.train.step import create_state, default_mesh, make_eval_step, make_train_step
from jaxfm.train.trainer import EpochBatches, Select, fit

__all__ = [
    "GNN_MODELS",
    "MODELS",
    "RunConfig",
    "evaluate_split",
    "run_info",
    "train_fimp",
]

#: ``RunConfig.model`` choices: FIMP, the no-graph MLP and the GNN baselines
#: (:class:`jaxfm.baselines.node_gnn.NodeGNN`).
GNN_MODELS = GNN_KINDS
MODELS = ("fimp", "mlp", *GNN_MODELS)

_MONITOR = {
    "expression": ("mse", "min"),
    "fmri": ("mse", "min"),
    "celltype": ("cross_entropy", "min"),
    "image": ("cross_entropy", "min"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One FIMP training run (``jaxfm fimp train``; every field is a flag of that command).

    Attributes:
      task: ``expression``, ``celltype``, ``image`` or ``fmri``.
      model: ``"fimp"``, ``"mlp"`` (the no-graph baseline :class:`jaxfm.baselines.NodeMLP`) or
        a GNN baseline ``"gcn"``, ``"sage"``, ``"gat"``, ``"gin"``, ``"gps"``
        (:class:`jaxfm.baselines.node_gnn.NodeGNN`; node tasks sample ``baseline_depth`` hops).
      data: dataset path or ``"synthetic"``.
      variant: FIMP size preset (:data:`jaxfm.fimp.config.VARIANTS`).
      overrides: FIMPConfig field overrides (e.g. ``{"num_layers": 2}``); the key
        ``"tokenizer"`` holds a dict of tokenizer field overrides instead (e.g.
        ``{"tokenizer": {"value_hidden": 64}}``), applied to the tokenizer the data implies.
      data_options: how the data becomes graphs.
      optimizer: optax optimizer settings (AdamW, lr 3e-3, weight decay 1e-4).
      epochs: maximum epochs.
      patience: early stopping: stop after this many epochs without a better validation metric.
      batch_size: seed nodes per micro-batch (node tasks).
      recordings_per_batch: recordings per micro-batch (``fmri``).
      max_neighbors: per-hop neighbour sampling cap (``None``: all neighbours).
      mesh: device mesh, e.g. ``"data=2,fsdp=4"`` (None: one device).
      accum: micro-batches accumulated per step (gradient accumulation).
      devices: micro-batches per accumulation step (default: the mesh's ``data x fsdp``). A step
        averages ``accum x devices`` micro-batches, so the same ``devices`` gives the same run on
        any mesh.
      seed: parameter-init / dropout / batch-order seed.
      workdir: checkpoints, ``metrics.jsonl`` and ``run.json`` (None: none are written).
      save_dir: write the best model here (atomic).
      output_json: also write the results (every metric of the run) to this JSON file.
      init: ``"scratch"`` (FIMP-base) or a pretrained variant: ``vit``, ``scgpt``, ``brainlm``
        (``checkpoint`` = a ``jaxfm convert`` output directory) or ``genept`` (``checkpoint`` =
        a gene-embedding table file, see :mod:`jaxfm.fimp.genept`).
      checkpoint: the pretrained source of ``init``.
      freeze_pretrained: keep the grafted pretrained parameters fixed (zero updates).
      pretrained_layers: use only the first k encoder layers as the message creator.
      baseline_hidden, baseline_depth: width and layers (message-passing layers for GNNs) of
        the baselines.
      fill: baselines on ``fmri`` only: how masked patches reach their inputs
        (:data:`jaxfm.baselines.node_mlp.FILLS`: ``zero``, ``noise``, ``mean``, ``interp``).
    """

    task: str
    model: str = "fimp"
    data: str = "synthetic"
    variant: str = "tiny"
    overrides: dict = dataclasses.field(default_factory=dict)
    data_options: DataOptions = dataclasses.field(default_factory=DataOptions)
    optimizer: OptimizerConfig = dataclasses.field(
        default_factory=lambda: OptimizerConfig(name="adamw", learning_rate=3e-3, weight_decay=1e-4)
    )
    epochs: int = 20
    patience: int = 5
    batch_size: int = 128
    recordings_per_batch: int = 4
    max_neighbors: int | None = None
    mesh: str | None = None
    accum: int = 1
    devices: int | None = None
    seed: int = 0
    workdir: str | None = "runs/fimp"
    save_dir: str | None = None
    output_json: str | None = None
    init: str = "scratch"
    checkpoint: str | None = None
    freeze_pretrained: bool = False
    pretrained_layers: int | None = None
    baseline_hidden: int = 128
    baseline_depth: int = 2
    fill: str = "zero"

    def __post_init__(self):
        if self.task not in _MONITOR:
            raise ValueError(f"task must be one of {sorted(_MONITOR)}, got {self.task!r}")
        if self.init not in P.INIT_CHOICES:
            raise ValueError(f"init must be one of {P.INIT_CHOICES}, got {self.init!r}")
        if self.init != "scratch" and not self.checkpoint:
            raise ValueError(f"--init {self.init} needs --checkpoint (a pretrained source)")
        if self.init == "scratch" and (self.checkpoint or self.freeze_pretrained):
            raise ValueError("--checkpoint / --freeze-pretrained need --init other than scratch")
        if self.init != "scratch" and self.model != "fimp":
            raise ValueError("--init applies to FIMP models only (not the baselines)")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.model != "fimp" and self.save_dir:
            raise ValueError("save_dir is supported for FIMP models only")
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {self.fill!r}")
        if self.fill != "zero" and (self.model == "fimp" or self.task != "fmri"):
            raise ValueError(
                f"fill={self.fill!r} applies to the baselines on the fmri task only (FIMP "
                "replaces masked patches with its mask token)"
            )
        if self.baseline_hidden <= 0 or self.baseline_depth <= 0:
            raise ValueError("baseline_hidden and baseline_depth must be positive")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")
        for name in ("epochs", "batch_size", "recordings_per_batch", "patience", "accum"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.devices is not None and self.devices <= 0:
            raise ValueError(f"devices must be positive, got {self.devices}")


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


def _node_budgets(
    graph: jraph.GraphsTuple, batch_size: int, hops: int, max_nb, *, ladder: bool
) -> list[Budget]:
    """Budgets of one k-hop micro-batch: a short ladder, or only its top rung (``ladder=False``:
    micro-batches stacked into one step must share a shape)."""
    n = int(graph.n_node.sum())
    indeg = np.bincount(graph.receivers, minlength=n)
    fan = int(indeg.max()) if max_nb is None else min(int(indeg.max()), max_nb)
    nodes, edges, frontier = batch_size, 0, batch_size
    for _ in range(hops):
        edges += frontier * fan
        frontier *= fan
        nodes += frontier
    nodes, edges = min(nodes, n) + 1, min(edges, int(graph.senders.shape[0]))
    budgets = list(make_budgets(nodes, max(edges, 1), 2, num=4))
    return budgets if ladder else budgets[-1:]


class _Batches:
    """Padded micro-batches of one split: node tasks sample k-hop neighbourhoods of the split's
    nodes; fmri batches whole recordings. ``epoch(e)`` is a pure function of ``(seed, e)``."""

    def __init__(
        self, data: FIMPData, split: str, *, batch_size, hops, max_nb, shuffle, seed, ladder=True
    ):
        self.data, self.split, self.shuffle, self.seed = data, split, shuffle, seed
        idx = data.splits[split]
        if data.task == "fmri":
            self.graphs = [data.graphs[i] for i in idx]
            self.batch_size = batch_size
            v = int(self.graphs[0].n_node[0])
            e = int(self.graphs[0].n_edge[0])
            self.budget = Budget(
                n_node=batch_size * v + 1, n_edge=batch_size * e, n_graph=batch_size + 1
            )
            self.size = -(-len(self.graphs) // batch_size)
        else:
            graph = data.graphs[0]
            self.sampler = NodeBatchSampler(
                graph,
                idx,
                batch_size=batch_size,
                num_hops=hops,
                budgets=_node_budgets(graph, batch_size, hops, max_nb, ladder=ladder),
                shuffle=shuffle,
                seed=seed,
                max_neighbors=max_nb,
            )
            self.size = -(-len(idx) // batch_size)

    def __len__(self) -> int:
        return self.size

    def epoch(self, epoch: int) -> Iterator[jraph.GraphsTuple]:
        if self.data.task != "fmri":
            for b in self.sampler.iter_epoch(epoch):
                yield _to_device(b)
            return
        order = np.arange(len(self.graphs))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        for s in range(0, len(order), self.batch_size):
            chosen = [self.graphs[i] for i in order[s : s + self.batch_size]]
            g = batch_graphs(chosen)
            n = int(g.n_node.sum())
            # graph_index: which recording each node is from (GPS attends within a recording).
            graph_index = np.repeat(np.arange(len(chosen), dtype=np.int32), g.n_node)
            g = g._replace(
                nodes={**g.nodes, "target_mask": np.ones(n, bool), "graph_index": graph_index}
            )
            yield pad_to_budget(g, self.budget)


def _to_device(batch: jraph.GraphsTuple) -> jraph.GraphsTuple:
    nodes = {k: v for k, v in batch.nodes.items() if k != "node_index"}
    return batch._replace(nodes=nodes)


# ----------------------------------------------------------------------------------------------
# Model, loss, steps
# ----------------------------------------------------------------------------------------------


def _random_value_mask(rng, token_mask, rate: float):
    """A fresh mask every step (inside jit), by the one rule of :mod:`jaxfm.ops.masking`."""
    return rank_mask(jax.random.uniform(rng, token_mask.shape), jnp.asarray(token_mask), rate)


def _make_loss_fn(model: FIMPTaskModel, task: str, mask_rate: float, patch_mask_rate: float):
    def loss_fn(params, batch, rng, train: bool):
        nodes = dict(batch.nodes)
        mask_rng, dropout_rng = jax.random.split(rng)
        if train and task == "expression":
            nodes["value_mask"] = _random_value_mask(mask_rng, nodes["token_mask"], mask_rate)
        if train and task == "fmri":
            nodes["patch_mask"] = _random_value_mask(
                mask_rng, jnp.ones_like(nodes["patch_mask"]), patch_mask_rate
            )
        nmask, emask = node_mask(batch), edge_mask(batch)
        out = model.apply(
            {"params": params},
            nodes,
            batch.senders,
            batch.receivers,
            node_mask=nmask,
            edge_mask=emask,
            deterministic=not train,
            rngs={"dropout": dropout_rng},
        )
        loss, _ = loss_and_metrics(task, out, nodes, nmask)
        return loss, {}

    return loss_fn


def _make_predict(model: FIMPTaskModel, mesh=None):
    def predict(params, batch):
        return model.apply(
            {"params": params},
            batch.nodes,
            batch.senders,
            batch.receivers,
            node_mask=node_mask(batch),
            edge_mask=edge_mask(batch),
            deterministic=True,
        )

    return make_eval_step(predict, mesh=mesh)


def evaluate_split(predict, params, batches: _Batches, task: str) -> dict[str, float]:
    """Metrics over a whole split (gathered on the host, so macro-F1 and R² are exact)."""
    preds, targets, masks = [], [], []
    for batch in batches.epoch(0):
        batch = _to_device(batch)
        out = predict(params, batch)
        keep = np.asarray(node_mask(batch)) & np.asarray(batch.nodes["target_mask"])
        p = np.asarray(out["predictions"])[keep]
        nodes = {k: np.asarray(v)[keep] for k, v in batch.nodes.items()}
        if task in ("celltype", "image"):
            preds.append(p), targets.append(nodes["label"]), masks.append(np.ones(len(p), bool))
        elif task == "expression":
            preds.append(p), targets.append(nodes["target_values"])
            masks.append(nodes["value_mask"] & nodes["token_mask"])
        else:
            t = nodes["signal"].reshape(p.shape)
            preds.append(p), targets.append(t), masks.append(nodes["patch_mask"])
    p, t, m = (np.concatenate(x) for x in (preds, targets, masks))
    if task in ("celltype", "image"):
        return {
            "accuracy": float(M.accuracy(p, t, m)),
            "macro_f1": float(M.macro_f1(p, t, m)),
            "cross_entropy": float(M.softmax_cross_entropy(p, t, m)),
            "count": int(m.sum()),
        }
    if task == "fmri":
        m = np.broadcast_to(m[..., None], p.shape)
    return {
        "mse": float(M.masked_mse(p, t, m)),
        "r2": float(M.r2_score(p, t, m)),
        "count": int(m.sum()),
    }


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def build_config(run: RunConfig, data: FIMPData) -> FIMPConfig:
    """The scratch FIMP config of ``run`` for ``data`` (see :func:`pretrained_setup` for
    pretrained variants)."""
    overrides = dict(run.overrides)
    tokenizer = data.tokenizer
    changes = overrides.pop("tokenizer", None)
    if changes is not None:
        if not isinstance(changes, dict):
            raise ValueError(
                f"overrides['tokenizer'] must be a dict of tokenizer fields, got {changes!r}"
            )
        fields = {f.name for f in dataclasses.fields(tokenizer)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(
                f"overrides['tokenizer']: {unknown} are not fields of "
                f"{type(tokenizer).__name__} (expected some of {sorted(fields)})"
            )
        tokenizer = dataclasses.replace(tokenizer, **changes)
    return fimp_config(run.variant, tokenizer=tokenizer, **overrides)


def _model(run: RunConfig, cfg: FIMPConfig, data: FIMPData):
    """The model of ``run.model`` and the neighbourhood hops its batches need."""
    if run.model == "fimp":
        return FIMPTaskModel(cfg, run.task, data.num_classes), cfg.num_layers
    common = dict(
        task=run.task,
        tokenizer=data.tokenizer,
        num_classes=data.num_classes,
        hidden=run.baseline_hidden,
        depth=run.baseline_depth,
        fill=run.fill,
    )
    if run.model == "mlp":
        return NodeMLP(**common), 0
    return NodeGNN(kind=run.model, **common), run.baseline_depth


def run_info(run: RunConfig) -> dict:
    """The JSON identity of a run: what a resume must repeat (everything but output paths)."""
    info = json.loads(json.dumps(dataclasses.asdict(run), default=str))
    for k in ("workdir", "save_dir", "output_json"):
        info.pop(k, None)
    return info


def train_fimp(
    run: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log_stream=sys.stdout,
    progress: bool = True,
    tensorboard: bool = False,
    profile_steps: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Trains on ``run.task`` with early stopping; returns (and optionally writes) results.

    The run is the training spine's (:func:`jaxfm.train.trainer.fit`): checkpoints every epoch
    in ``run.workdir`` (``resume=True`` continues the newest good one; ``overwrite=True``
    replaces an earlier run's), ``metrics.jsonl``, and the state on ``run.mesh``.

    Returns:
      ``{"task", "data", "config", "history", "best_epoch", "val": {...}, "test": {...},
      "num_params", "seconds", "preempted"}``; the test metrics use the best-validation
      parameters.
    """
    t0 = time.perf_counter()
    source = load_pretrained_source(run.init, run.checkpoint)
    opts = data_options_for(source, run.data, run.data_options)
    vocab = getattr(source, "vocab", None) if run.init == "scgpt" else None
    data = prepare_fimp_data(run.task, run.data, opts, gene_vocab=vocab)
    cfg = build_config(run, data)
    pre_tensors, pairs, pre_report = None, [], None
    if source is not None:
        if "dim" in run.overrides and run.init != "genept":
            raise ValueError(f"--dim cannot be set with --init {run.init}: the checkpoint sets it")
        cfg, pre_tensors, pairs, pre_report = pretrained_setup(
            cfg, source, data, num_layers=run.pretrained_layers
        )
    model, hops = _model(run, cfg, data)
    mesh = default_mesh() if run.mesh is None else make_mesh(run.mesh)
    devices = run.devices or data_parallel_size(dict(mesh.shape))
    if devices % data_parallel_size(dict(mesh.shape)):
        raise ValueError(
            f"devices={devices} must be a multiple of the mesh's data x fsdp = "
            f"{data_parallel_size(dict(mesh.shape))} (mesh {dict(mesh.shape)})"
        )
    group = devices * run.accum
    batch_size = run.recordings_per_batch if run.task == "fmri" else run.batch_size
    mk = lambda split, shuffle, ladder=True: _Batches(
        data,
        split,
        batch_size=batch_size,
        hops=hops,
        max_nb=run.max_neighbors,
        shuffle=shuffle,
        seed=run.seed,
        ladder=ladder,
    )
    train_b = mk("train", True, ladder=group == 1)
    val_b, test_b = mk("val", False), mk("test", False)

    rng = jax.random.key(run.seed)
    init_rng, rng = jax.random.split(rng)
    first = next(iter(train_b.epoch(0)))
    params = model.init(
        init_rng,
        first.nodes,
        first.senders,
        first.receivers,
        node_mask=node_mask(first),
        edge_mask=edge_mask(first),
    )["params"]
    if pre_tensors is not None:
        params, graft_report = P.graft(params, pre_tensors, pairs)
        pre_report = {**pre_report, **graft_report.summary(), "frozen": run.freeze_pretrained}
    num_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    micro = len(train_b)
    batches = EpochBatches(train_b.epoch, micro, accum=run.accum, devices=devices)
    steps_per_epoch = batches.steps_per_epoch
    total = steps_per_epoch * run.epochs
    frozen = P.pretrained_path_rules(pairs) if run.freeze_pretrained else ()
    optimizer = make_optimizer(run.optimizer.for_run(total), params, frozen=frozen)

    state, shardings = create_state(params, optimizer, mesh)
    train_step = make_train_step(
        _make_loss_fn(model, run.task, opts.mask_rate, opts.patch_mask_rate),
        optimizer,
        mesh=mesh,
        state_shardings=shardings,
    )
    predict = _make_predict(model, mesh)
    metric, mode = _MONITOR[run.task]
    select = Select(metric=metric, mode=mode, patience=run.patience)
    record = {
        "fimp_train": run_info(run),
        "outputs": {"save_dir": run.save_dir, "output_json": run.output_json},
    }
    if run.workdir is not None:
        Path(run.workdir).mkdir(parents=True, exist_ok=True)
        if overwrite or not (Path(run.workdir) / "run.json").exists():
            write_run_json(run.workdir, record)  # before training: a killed run resumes from it
    fitted = fit(
        state,
        train_step,
        batches,
        total_steps=total,
        rng=rng,
        steps_per_epoch=steps_per_epoch,
        evaluate=lambda p: evaluate_split(predict, p, val_b, run.task),
        select=select,
        workdir=run.workdir,
        resume=resume,
        overwrite=overwrite,
        run_info=run_info(run),
        log_stream=log_stream,
        progress=progress,
        desc=f"fimp {run.task}",
        tensorboard=tensorboard,
        profile_steps=profile_steps,
    )
    if run.workdir is not None:
        write_run_json(run.workdir, record)
    best = fitted.best_params
    results = {
        "task": run.task,
        "model": run.model,
        "baseline": None
        if run.model == "fimp"
        else {"hidden": run.baseline_hidden, "depth": run.baseline_depth, "fill": run.fill},
        "data": run.data,
        "dataset": data.metadata.get("dataset"),
        "variant": run.variant,
        "init": run.init,
        "pretrained": pre_report,
        "config": config_to_dict(cfg),
        "num_params": num_params,
        "num_nodes": int(sum(int(g.n_node.sum()) for g in data.graphs)),
        "num_edges": int(sum(int(g.n_edge.sum()) for g in data.graphs)),
        "split_sizes": {k: len(v) for k, v in data.splits.items()},
        "mesh": dict(mesh.shape),
        "micro_batches_per_step": group,
        "steps": total,
        "best_epoch": select.best_epoch,
        "val": evaluate_split(predict, best, val_b, run.task),
        "test": evaluate_split(predict, best, test_b, run.task),
        "history": fitted.history,
        "preempted": fitted.preempted,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if fitted.preempted:
        return results
    if run.save_dir:
        save_model_dir(
            run.save_dir,
            best,
            {
                "family": "fimp",
                "task": run.task,
                "num_classes": data.num_classes,
                "fimp": config_to_dict(cfg),
                "metadata": data.metadata,
                "data": run.data,
                "data_options": dataclasses.asdict(opts),
            },
        )
    if run.output_json:
        path = Path(run.output_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, results)
    return results
