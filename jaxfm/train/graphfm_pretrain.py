"""GraphFM multi-graph pretraining: corpus -> packed buckets -> accumulated LAMB steps.

``pretrain(PretrainConfig(...))`` is what ``jaxfm pretrain`` calls. With no data paths it trains on
a built-in corpus of synthetic SBM graphs (the project's main job). Every logged step prints one
JSON line (``step``, ``loss``, ``accuracy``, ``lr``, ``tokens_per_s``...); checkpoints (params,
optimizer state, step, RNG and the data-iterator state) go to ``WORKDIR/checkpoints`` and the
final model to ``WORKDIR/model`` (a model directory: ``params.safetensors`` + ``config.json``,
what ``jaxfm finetune --checkpoint`` and ``jaxfm embed`` read).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxfm.data.graph_dataset import NodeDataset
from jaxfm.graph.packed import PackedBatch
from jaxfm.graphfm import (
    DATASET_SPECIFIC,
    GraphFM,
    GraphFMConfig,
    graphfm_config,
    loss_and_metrics,
)
from jaxfm.model_dir import save_model_dir, write_json_atomic
from jaxfm.train.checkpoint import write_run_json
from jaxfm.train.distributed import is_main_process
from jaxfm.train.optim import OptimizerConfig, make_optimizer, make_schedule
from jaxfm.train.sharding import BATCH_AXES, data_parallel_size, make_mesh
from jaxfm.train.step import (
    BATCH_SPEC,
    TrainState,
    make_train_step,
    stack_batches,
    state_shardings_for,
)
from jaxfm.train.trainer import fit, read_metrics

__all__ = [
    "PretrainConfig",
    "build_pretraining_corpus",
    "dataset_lr_scales",
    "pretrain",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """One pretraining run.

    Attributes:
      model: GraphFM size preset (``small`` / ``medium`` / ``large``).
      model_overrides: :class:`GraphFMConfig` field overrides.
      data: dataset files/folders (folders are scanned recursively); empty = synthetic only.
      synthetic_graphs: number of synthetic SBM graphs added to the corpus.
      synthetic_nodes: node-count range of the synthetic graphs.
      exclude: regexes of dataset names kept out of pretraining (the evaluation graphs).
      corpus: a paper corpus preset (``paper-small`` / ``paper-medium``, GraphFM appendix B.2;
        :mod:`jaxfm.data.corpus_presets`): only its graphs are taken from ``data``, and the ones
        missing there are listed; None: every dataset under ``data``.
      steps: optimizer steps.
      accum: buckets accumulated per step (gradient accumulation).
      devices: buckets per accumulation step, a multiple of the mesh's ``data x fsdp``
        (default: equal to it), so buckets per step = devices x accum (paper C.1).
      mesh: device mesh shape, e.g. ``"data=4,fsdp=2"`` (:func:`jaxfm.train.sharding.parse_mesh`;
        default: every device on ``fsdp``).
      node_budget, graph_budget, target_budget: static packing budgets per bucket.
      neighbors: m, sampled neighbours per target in the node decoder's sequence (the model's
        ``num_neighbors``; a ``model_overrides["num_neighbors"]`` must agree with it).
      optimizer: LAMB with linear warmup then cosine decay by default.
      dataset_lr_scaling: scale the per-dataset MLP/head updates of rarely-seen datasets up
        (appendix A.2), capped at ``max_lr_scale``.
      workdir: checkpoints, logs, final model and summary go here.
      checkpoint_every: save every N steps (and at the end).
      keep: how many of the newest checkpoints are kept in ``workdir`` (older ones are deleted).
      log_every: print a JSON line every N steps.
      eval_every: every N steps (and at the end) measure the accuracy on held-out nodes of the
        pretraining graphs (their validation split; 0: never).
      eval_buckets: packed buckets of held-out nodes per evaluation (a fixed sample, so the
        evaluations are comparable; each costs about ``eval_buckets`` forward passes).
      seed: data order, init and dropout.
      pe_cache_dir: folder of the on-disk Laplacian PE cache, so that a second run over the same
        graphs reads their PEs instead of solving eigenproblems again; ``"auto"``:
        ``$JAXFM_PE_CACHE``, else ``$XDG_CACHE_HOME/jaxfm/pe`` (``~/.cache/jaxfm/pe``); ``"off"``
        or None: memory only (:func:`jaxfm.graph.laplacian.resolve_pe_cache_dir`). Not part of
        the run's identity: a resume may read its PEs from another folder.
    """

    model: str = "small"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    data: tuple[str, ...] = ()
    synthetic_graphs: int = 24
    synthetic_nodes: tuple[int, int] = (64, 1500)
    exclude: tuple[str, ...] = ()
    corpus: str | None = None
    steps: int = 300
    accum: int = 1
    devices: int | None = None
    mesh: str | None = None
    node_budget: int = 2048
    graph_budget: int = 16
    target_budget: int = 256
    neighbors: int = 8
    optimizer: OptimizerConfig = dataclasses.field(
        default_factory=lambda: OptimizerConfig(
            name="lamb",
            learning_rate=2e-3,
            weight_decay=1e-4,
            schedule="warmup_cosine",
            warmup_steps=30,
            total_steps=0,  # the run's steps (OptimizerConfig.for_run)
            end_lr_fraction=0.05,
        )
    )
    dataset_lr_scaling: bool = True
    max_lr_scale: float = 8.0
    workdir: str = "runs/pretrain"
    checkpoint_every: int = 100
    keep: int = 3
    log_every: int = 1
    eval_every: int = 100
    eval_buckets: int = 4
    seed: int = 0
    pe_cache_dir: str | None = "auto"

    def __post_init__(self):
        for name in ("steps", "accum", "node_budget", "graph_budget", "target_budget"):
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.keep < 1:
            raise ValueError("PretrainConfig: checkpoint_every, log_every and keep must be >= 1")
        if self.synthetic_graphs < 0:
            raise ValueError("PretrainConfig.synthetic_graphs must be >= 0")
        if self.eval_every < 0 or self.eval_buckets < 1:
            raise ValueError(
                "PretrainConfig: eval_every must be >= 0 and eval_buckets >= 1, got "
                f"{self.eval_every} / {self.eval_buckets}"
            )
        if self.corpus is not None:
            from jaxfm.data.corpus_presets import CORPUS_PRESETS

            if self.corpus not in CORPUS_PRESETS:
                raise ValueError(
                    f"PretrainConfig.corpus {self.corpus!r} is unknown; choose from "
                    f"{sorted(CORPUS_PRESETS)}"
                )
            if not self.data:
                raise ValueError(
                    f"PretrainConfig.corpus={self.corpus!r} needs the dataset folders in data"
                )
        if not self.data and self.synthetic_graphs == 0:
            raise ValueError("PretrainConfig: no data paths and no synthetic graphs: empty corpus")
        if self.max_lr_scale < 1:
            raise ValueError("PretrainConfig.max_lr_scale must be >= 1")
        if self.devices is not None and self.devices < 1:
            raise ValueError(f"PretrainConfig.devices must be >= 1, got {self.devices}")
        m = self.neighbors
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(f"PretrainConfig.neighbors must be an int >= 0, got {m!r}")
        m = self.model_overrides.get("num_neighbors", self.neighbors)
        if m != self.neighbors:
            raise ValueError(
                f"PretrainConfig: model_overrides num_neighbors={m!r} disagrees with "
                f"neighbors={self.neighbors}; set neighbors only"
            )
        if self.pe_cache_dir is not None and not str(self.pe_cache_dir).strip():
            raise ValueError("PretrainConfig.pe_cache_dir must be a folder, 'auto' or 'off'")

    def buckets_per_accumulation(self, mesh_shape: dict[str, int]) -> int:
        """``devices`` (default: ``data x fsdp``), checked against the mesh."""
        dp = data_parallel_size(mesh_shape)
        devices = dp if self.devices is None else self.devices
        if devices % dp:
            raise ValueError(
                f"PretrainConfig.devices={devices} must be a multiple of the mesh's data x fsdp "
                f"= {dp} (mesh {mesh_shape})"
            )
        return devices


def build_pretraining_corpus(cfg: PretrainConfig, *, log=print) -> list[NodeDataset]:
    """The datasets under ``cfg.data`` (minus ``cfg.exclude``; see
    :func:`jaxfm.data.selection.select_datasets`) plus ``cfg.synthetic_graphs`` SBM graphs."""
    from jaxfm.data.sbm import sbm_corpus
    from jaxfm.data.selection import select_datasets

    datasets = select_datasets(cfg.data, cfg.exclude, preset=cfg.corpus, log=log)
    if cfg.synthetic_graphs:
        datasets.extend(
            sbm_corpus(cfg.synthetic_graphs, seed=cfg.seed, node_range=cfg.synthetic_nodes)
        )
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"pretrain: duplicate dataset names in the corpus: {sorted(names)}")
    return datasets


def dataset_lr_scales(train_nodes: Sequence[int], max_scale: float) -> np.ndarray:
    """Per-dataset update multipliers (appendix A.2): sqrt(mean share / share), in [1, max].

    A dataset whose training nodes are a small share of the corpus is in few buckets, so its own
    MLP and head get few updates; scaling its steps by the square root of how under-represented
    it is keeps it learning at the pace of the shared trunk.
    """
    n = np.maximum(np.asarray(train_nodes, np.float64), 1.0)
    share = n / n.sum()
    return np.clip(np.sqrt(share.mean() / share), 1.0, max_scale).astype(np.float32)


def _make_optimizer(cfg: PretrainConfig, params, scales: np.ndarray):
    opt = cfg.optimizer.for_run(cfg.steps)
    rows = (DATASET_SPECIFIC, scales) if cfg.dataset_lr_scaling else None
    return make_optimizer(opt, params, row_scales=rows), make_schedule(opt)


class _PipelineSteps:
    """The packing pipeline as the trainer's batch source: buckets -> leaves ``[A, D_local]``."""

    def __init__(self, pipeline, accum: int):
        self.pipeline, self.accum = pipeline, accum

    def __iter__(self):
        return self

    def __next__(self) -> PackedBatch:
        return stack_batches(next(self.pipeline), self.accum)

    def get_state(self) -> dict:
        return self.pipeline.get_state()

    def set_state(self, state: dict) -> None:
        self.pipeline.set_state(state)


def _local_block(mesh, devices: int) -> tuple[int, int]:
    """``(block index, block count)`` of this process's data-parallel slots along ``D``."""
    sharding = NamedSharding(mesh, P(BATCH_AXES))
    rows = set()
    for index in sharding.addressable_devices_indices_map((devices,)).values():
        rows.update(range(*index[0].indices(devices)))
    lo, n = min(rows), len(rows)
    if rows != set(range(lo, lo + n)) or devices % n or lo % n:
        raise ValueError(
            f"pretrain: this process's devices hold data-parallel slots {sorted(rows)} of "
            f"{devices}, not one contiguous block; use a mesh whose model axis stays within a host"
        )
    return lo // n, devices // n


def _to_host(tree):
    """Replicated (or fully addressable) arrays -> numpy, also with several processes."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def held_out_corpus(corpus):
    """The corpus with each graph's validation nodes as its targets (train/test unused)."""
    from jaxfm.data.graph_dataset import Split

    graphs = tuple(
        dataclasses.replace(
            g,
            split=Split(train=g.split.val, val=np.zeros_like(g.split.val), test=g.split.test),
        )
        for g in corpus.graphs
    )
    return dataclasses.replace(corpus, graphs=graphs)


def _held_out_evaluator(corpus, budget, cfg: PretrainConfig, loss_fn, mesh, names):
    """``params -> {"accuracy", "accuracy/<dataset>"...}`` on a fixed sample of held-out nodes.

    The sample (``cfg.eval_buckets`` packed buckets of validation nodes) is built once; every
    process evaluates the same buckets on replicated parameters, so the result is the same
    everywhere.
    """
    from jaxfm.data.pipeline import PackedPipeline

    pipeline = PackedPipeline(
        held_out_corpus(corpus), budget=budget, num_buckets=cfg.eval_buckets, seed=cfg.seed + 1
    )
    buckets = next(pipeline)
    buckets = buckets if isinstance(buckets, list) else [buckets]
    replicated = NamedSharding(mesh, P())
    gather = jax.jit(lambda p: p, out_shardings=replicated)
    metrics_of = jax.jit(
        lambda p, b: loss_fn(p, b, jax.random.key(0), False)[1], out_shardings=replicated
    )

    def evaluate(params) -> dict[str, float]:
        full = gather(params)
        correct = np.zeros(len(names))
        count = np.zeros(len(names))
        for b in buckets:
            m = _to_host(metrics_of(full, b))
            correct += m["dataset_correct"]
            count += m["dataset_count"]
        out = {"accuracy": float(correct.sum() / max(count.sum(), 1))}
        out.update(
            {f"accuracy/{n}": v for n, v in _per_dataset_table(names, correct, count).items()}
        )
        return out

    return evaluate


def _per_dataset_table(names, correct, count) -> dict[str, float]:
    """Accuracy per dataset over the recent window (every dataset, NaN-free: unseen ones absent)."""
    return {n: float(c / k) for n, c, k in zip(names, correct, count, strict=True) if k > 0}


# settings a resume may change: they shape the logs, checkpoints and evaluations, not the steps
RESUMABLE_OUTPUTS = ("checkpoint_every", "keep", "log_every", "mesh", "eval_every", "eval_buckets")


def run_info(cfg: PretrainConfig, model_cfg: GraphFMConfig, *, identity: bool = False) -> dict:
    """The run's config (minus output settings) and corpus, as ``run.json`` records it.

    With ``identity``, what a resume must repeat: the same without the run's length (``steps``
    and the schedule's ``total_steps``), since a resume may extend a run (the learning-rate
    schedule then follows the new length).
    """
    info = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    for k in ("workdir", "pe_cache_dir", *RESUMABLE_OUTPUTS):  # where files go, not the run
        info.pop(k, None)
    if identity:
        info.pop("steps", None)
        info.get("optimizer", {}).pop("total_steps", None)
    info["datasets"] = [s.name for s in model_cfg.datasets]
    return info


def pretrain(
    cfg: PretrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log_stream=sys.stdout,
    progress=True,
    tensorboard: bool = False,
    profile_steps: tuple[int, int] | None = None,
):
    """Runs (or resumes) pretraining and returns the summary dict (also ``WORKDIR/summary.json``).

    The train state lives on a device mesh (``cfg.mesh``, :mod:`jaxfm.train.sharding`): created
    directly sharded, updated by the spine's step (:func:`jaxfm.train.step.make_train_step`), and
    checkpointed shard by shard (every process writes its own). Only process 0 prints metric
    lines and writes the summary and the final model. A SIGTERM makes the loop save a checkpoint
    after the current step and return early with ``summary["preempted"] = True``.

    Args:
      cfg: the run.
      resume: continue from the newest good checkpoint in ``WORKDIR/checkpoints`` (fresh start
        if there is none); the mesh may differ from the one that saved it.
      overwrite: start afresh in a workdir that holds an earlier run's checkpoints.
      log_stream: where JSON metric lines go (None: silent).
      progress: tqdm progress bar on stderr.
      tensorboard: also write TensorBoard events into ``WORKDIR/tensorboard``
        (:func:`jaxfm.train.trainer.fit`; needs ``jaxfm[tensorboard]``).
      profile_steps: ``(A, B)``: a ``jax.profiler`` trace of steps A..B in ``WORKDIR/profile``.
    """
    from jaxfm.data.corpus import build_corpus
    from jaxfm.data.packing import PackingBudget
    from jaxfm.data.pipeline import PackedPipeline
    from jaxfm.graph.laplacian import resolve_pe_cache_dir

    main = is_main_process()
    mesh = make_mesh(cfg.mesh)
    mesh_shape = dict(mesh.shape)
    devices = cfg.buckets_per_accumulation(mesh_shape)
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    say = (lambda m: print(m, file=sys.stderr)) if progress and main else (lambda m: None)
    log_stream = log_stream if main else None
    t_start = time.perf_counter()

    datasets = build_pretraining_corpus(cfg, log=say)
    base = graphfm_config(cfg.model, **{**cfg.model_overrides, "num_neighbors": cfg.neighbors})
    corpus = build_corpus(
        datasets,
        feature_dim=base.feature_dim,
        pe_dim=base.pe_dim,
        node_budget=cfg.node_budget,
        seed=cfg.seed,
        pe_cache_dir=resolve_pe_cache_dir(cfg.pe_cache_dir),
    )
    model_cfg: GraphFMConfig = dataclasses.replace(base, datasets=tuple(corpus.dataset_specs))
    budget = PackingBudget(
        nodes=cfg.node_budget,
        graphs=cfg.graph_budget,
        targets=cfg.target_budget,
        neighbors=model_cfg.num_neighbors,
    )
    block, blocks = _local_block(mesh, devices)
    pipeline = PackedPipeline(
        corpus,
        budget=budget,
        num_buckets=devices * cfg.accum,
        seed=cfg.seed,
        process_index=block,
        process_count=blocks,
    )
    names = [s.name for s in model_cfg.datasets]
    say(
        f"pretrain: {len(datasets)} graphs, {sum(d.num_nodes for d in datasets):,} nodes, "
        f"{devices} x {cfg.accum} buckets/step of {cfg.node_budget} node rows, mesh {mesh_shape}"
    )

    model = GraphFM(model_cfg)
    rng = jax.random.key(cfg.seed)
    init_rng, rng = jax.random.split(rng)
    example = jax.tree.map(lambda x: x[0, 0], stack_batches(pipeline.peek(), cfg.accum))
    scales = dataset_lr_scales(corpus.train_nodes_per_dataset(), cfg.max_lr_scale)
    abstract_params = jax.eval_shape(lambda k: model.init(k, example)["params"], init_rng)
    optimizer, lr_schedule = _make_optimizer(cfg, abstract_params, scales)

    def init_state(key):
        return TrainState.create(model.init(key, example)["params"], optimizer)

    # Created directly sharded: shapes first, then an init jitted with the state's shardings.
    state_shardings = state_shardings_for(jax.eval_shape(init_state, init_rng), mesh)
    state = jax.jit(init_state, out_shardings=state_shardings)(init_rng)

    def loss_fn(params, batch, key, train):
        out = model.apply({"params": params}, batch, deterministic=not train, rngs={"dropout": key})
        loss, metrics = loss_and_metrics(out, batch, model_cfg)
        return loss, {**metrics, "rows": batch.group_sizes.sum().astype(jnp.float32)}

    train_step = make_train_step(loss_fn, optimizer, mesh=mesh, state_shardings=state_shardings)
    batch_sharding = NamedSharding(mesh, BATCH_SPEC)
    global_lead = (cfg.accum, devices)

    def put(local: PackedBatch) -> PackedBatch:
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(
                batch_sharding, x, global_lead + x.shape[2:]
            ),
            local,
        )

    window: collections.deque = collections.deque(maxlen=50)

    def step_record(step, host, seconds):
        window.append((host["dataset_correct"], host["dataset_count"]))
        return {
            "accuracy": float(host["correct"] / max(host["count"], 1)),
            "lr": float(lr_schedule(step)),
            "tokens_per_s": round(float(host["rows"]) / max(seconds, 1e-9), 1),
        }

    record = {
        "pretrain": run_info(cfg, model_cfg),
        "outputs": {k: getattr(cfg, k) for k in RESUMABLE_OUTPUTS},
    }
    if main and (overwrite or not (workdir / "run.json").exists()):
        write_run_json(workdir, record)  # before training: a killed run can be resumed from it
    evaluate = None
    if cfg.eval_every:
        evaluate = _held_out_evaluator(corpus, budget, cfg, loss_fn, mesh, names)
    fitted = fit(
        state,
        train_step,
        _PipelineSteps(pipeline, cfg.accum),
        total_steps=cfg.steps,
        rng=rng,
        evaluate=evaluate,
        eval_every=cfg.eval_every or None,
        workdir=workdir,
        checkpoint_every=cfg.checkpoint_every,
        keep=cfg.keep,
        resume=resume,
        overwrite=overwrite,
        run_info=run_info(cfg, model_cfg, identity=True),
        log_every=cfg.log_every,
        step_record=step_record,
        put=put,
        log_stream=log_stream,
        progress=progress,
        desc="pretrain",
        main=main,
        tensorboard=tensorboard,
        profile_steps=profile_steps,
    )
    state, preempted = fitted.state, fitted.preempted
    if main:
        write_run_json(workdir, record)
    history = [r for r in read_metrics(workdir) if "loss" in r] if main else fitted.steps
    if window:
        correct = np.sum([c for c, _ in window], axis=0)
        count = np.sum([k for _, k in window], axis=0)
    else:
        correct = count = np.zeros(len(names))

    last_eval = fitted.history[-1] if fitted.history else {}
    held_out = {
        k.removeprefix("val_accuracy/"): v
        for k, v in last_eval.items()
        if k.startswith("val_accuracy/")
    }
    replicated = NamedSharding(mesh, P())
    params_np = _to_host(jax.jit(lambda p: p, out_shardings=replicated)(state.params))
    summary = {
        "model": cfg.model,
        "steps": cfg.steps,
        "last_step": int(_to_host(state.step)),
        "preempted": preempted,
        "mesh": mesh_shape,
        "processes": jax.process_count(),
        "buckets_per_step": devices * cfg.accum,
        "datasets": len(names),
        "corpus_nodes": int(sum(d.num_nodes for d in datasets)),
        "final_loss": history[-1]["loss"] if history else None,
        "mean_loss_last_10": float(np.mean([h["loss"] for h in history[-10:]]))
        if history
        else None,
        "train_accuracy_per_dataset": _per_dataset_table(names, correct, count),
        "train_accuracy_window_steps": len(window),
        "heldout_accuracy_per_dataset": held_out,
        "heldout_accuracy_step": fitted.history[-1]["step"] if fitted.history else None,
        "signal": fitted.signal,
        "parameters": int(sum(x.size for x in jax.tree.leaves(params_np))),
        "seconds": round(time.perf_counter() - t_start, 1),
        "model_dir": str(workdir / "model"),
    }
    if main and not preempted:
        save_model_dir(
            workdir / "model", params_np, {"family": "graphfm", "graphfm": model_cfg.to_dict()}
        )
    if main:
        write_json_atomic(workdir / "summary.json", summary)
    return summary
