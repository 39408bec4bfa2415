"""Finetuning a pretrained GraphFM on an unseen graph (MFT / NFT) and embedding graphs.

MFT (paper A.3.1): the encoder and node decoder stay frozen; a new feature MLP and a new head for
the graph's label space are trained with AdamW at one fixed learning rate / weight decay for
every dataset. NFT (A.3.2): MFT, plus bottom-up gradual unfreezing of the node decoder: from
epoch ``E0`` on, every ``dE`` epochs one more decoder layer becomes trainable and the learning
rate is divided by 1.5. Which parameters train in each phase is a list of parameter-path regexes
(:func:`unfreeze_epochs` and :func:`jaxfm.train.optim.make_optimizer`), not code branches.

Each step encodes, in one graph slot, the context of its targets and decodes the targets. By
default the context is the whole graph (GraphFM's encoder is O(N K)). With ``context_nodes``, as
in pretraining, a graph of at most that many nodes is its own context and a bigger one is cut:
the context is the subgraph that short random walks from the step's targets reach (the GraphSAINT
sampler with the targets as roots), so a step costs the same on any graph size.
Evaluation decodes every node of a split in the training context (and, with
``test_on_whole_graph``, the test split also with the whole graph as context).

The new graph's feature MLP is not bound to the pretraining corpus, and three of its settings
decide whether the frozen trunk keeps the node's own features (measured in experiments/README.md,
"GraphFM fidelity"): it reads the raw features (``feature_dim=None``, the paper's choice; the SVD
reduction of pretraining removes much of a bag-of-words graph's class signal), its output layer
starts ``feature_init_gain`` times larger than lecun init (the frozen decoder otherwise adds a
vector about 16x the new token's norm at the node's own position, and the final LayerNorm hands
the head mostly neighbour and latent content), and it trains with input dropout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxfm.data.graph_dataset import NodeDataset, Split
from jaxfm.data.whole_graph import WholeGraphBatcher
from jaxfm.graphfm import DATASET_SPECIFIC, GraphFM, GraphFMConfig, loss_and_metrics
from jaxfm.model_dir import load_model_dir, write_json_atomic
from jaxfm.params import TransplantError, flatten, transplant
from jaxfm.train.optim import OptimizerConfig, make_optimizer
from jaxfm.train.step import create_state, make_eval_step, make_train_step
from jaxfm.train.trainer import EpochBatches, Select, fit, run_splits

__all__ = [
    "FinetuneConfig",
    "drop_input_features",
    "embed_graph",
    "finetune",
    "finetune_inputs",
    "load_pretrained_graphfm",
    "scale_new_feature_mlp",
    "splits_for",
    "transplant_pretrained",
    "unfreeze_epochs",
    "write_json_atomic",
]

NEW_PARAMS = DATASET_SPECIFIC  # a new graph gets a fresh feature MLP and head


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """One finetuning run over the splits of one dataset.

    Attributes:
      mode: ``"mft"`` or ``"nft"``.
      checkpoint: pretrained model directory (``WORKDIR/model`` of ``jaxfm pretrain``).
      dataset: dataset file/folder (any format of :mod:`jaxfm.data.registry`).
      splits: split indices to run (None = all public splits, or ``num_random_splits`` seeded
        60/20/20 ones when the dataset has none).
      num_random_splits: how many seeded random 60/20/20 train/val/test splits to make when the
        dataset has no public splits (ignored when it has them).
      epochs: passes over the training nodes; model selection on validation accuracy.
      batch_targets: training nodes decoded per step (256: pretraining's targets per bucket).
      learning_rate, weight_decay: AdamW, the same for every dataset (paper: fixed).
      unfreeze_start, unfreeze_every: NFT's E0 and dE (epochs); NFT needs
        ``unfreeze_start < epochs`` (else it would never unfreeze and equal MFT).
      lr_decay: NFT divides the learning rate by this at each unfreeze.
      feature_dim: input width of the new feature MLP: None feeds the graph's raw features (the
        paper); an int reduces wider graphs to that many SVD components, as pretraining does.
      feature_hidden: hidden width of the new feature MLP (None: the pretrained model's).
      feature_init_gain: the new feature MLP's output layer is initialised this many times larger
        than lecun init, so that the node's own token is not drowned by what the frozen decoder
        adds at its position (1: plain init).
      input_dropout: dropout on the input feature rows during training (0: none).
      context_nodes: None encodes the whole graph at every step. An int encodes a graph with
        more nodes than this, at each step, as the subgraph that 2-step random walks from the
        step's targets reach, at most this many nodes (GraphSAINT's sampler with the targets as
        roots), and a smaller graph whole: pretraining's rule for its units (1,024 there). A step
        then costs the same on any graph (Coauthor-Physics MFT 3.3x faster), at some accuracy:
        Chameleon -2 to -4 points, Amazon-Computers and Physics unchanged
        (experiments/README.md, "Finetuning in pretraining's context"). Must be >=
        ``batch_targets``.
      test_on_whole_graph: with ``context_nodes``, also measure each split's test accuracy with
        the whole graph as context (``test_accuracy_whole_graph``; ``test_accuracy`` keeps the
        training context, in which validation selected the epoch).
      seed: init of the new parameters, batch order and neighbour sampling.
      workdir: one sub-workdir per split (checkpoints, ``metrics.jsonl``, ``result.json``;
        None: nothing is written).
    """

    mode: str = "mft"
    checkpoint: str
    dataset: str
    splits: list[int] | None = None
    num_random_splits: int = 5
    epochs: int = 60
    batch_targets: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-2
    unfreeze_start: int = 20
    unfreeze_every: int = 10
    lr_decay: float = 1.5
    feature_dim: int | None = None
    feature_hidden: int | None = 64
    feature_init_gain: float = 10.0
    input_dropout: float = 0.5
    context_nodes: int | None = None
    test_on_whole_graph: bool = False
    seed: int = 0
    workdir: str | None = "runs/finetune"

    def __post_init__(self):
        if self.mode not in ("mft", "nft"):
            raise ValueError(f"FinetuneConfig.mode must be 'mft' or 'nft', got {self.mode!r}")
        if self.epochs < 1 or self.batch_targets < 1:
            raise ValueError("FinetuneConfig: epochs and batch_targets must be >= 1")
        if self.unfreeze_start < 0 or self.unfreeze_every < 1 or self.lr_decay < 1:
            raise ValueError(
                "FinetuneConfig: bad NFT schedule (start >= 0, every >= 1, decay >= 1)"
            )
        for name in ("feature_dim", "feature_hidden"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"FinetuneConfig.{name} must be None or an int >= 1, got {v!r}")
        c = self.context_nodes
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ValueError(f"FinetuneConfig.context_nodes must be None or an int >= 1, got {c!r}")
        if c is not None and c < self.batch_targets:
            raise ValueError(
                f"FinetuneConfig: context_nodes={c} must be >= batch_targets={self.batch_targets} "
                "(every target is a node of its context)"
            )
        if self.test_on_whole_graph and c is None:
            raise ValueError(
                "FinetuneConfig: test_on_whole_graph needs context_nodes (without it every "
                "evaluation already uses the whole graph)"
            )
        if not self.feature_init_gain > 0:
            raise ValueError(
                f"FinetuneConfig.feature_init_gain must be > 0, got {self.feature_init_gain!r}"
            )
        if not 0 <= self.input_dropout < 1:
            raise ValueError(
                f"FinetuneConfig.input_dropout must be in [0, 1), got {self.input_dropout!r}"
            )
        if self.mode == "nft" and self.unfreeze_start >= self.epochs:
            raise ValueError(
                f"FinetuneConfig: NFT with unfreeze_start={self.unfreeze_start} >= epochs="
                f"{self.epochs} never unfreezes a layer (it would equal MFT); lower "
                "--unfreeze-start or raise --epochs"
            )


def unfreeze_epochs(cfg: FinetuneConfig, decoder_depth: int) -> list[int]:
    """NFT: the epoch at which decoder layer ``k`` starts training (bottom-up), for every layer
    that unfreezes within the run; MFT: none.

    >>> c = FinetuneConfig(mode="nft", checkpoint="m", dataset="d", epochs=10,
    ...                    unfreeze_start=2, unfreeze_every=3)
    >>> unfreeze_epochs(c, 4)
    [2, 5, 8]
    """
    if cfg.mode != "nft":
        return []
    starts = [cfg.unfreeze_start + k * cfg.unfreeze_every for k in range(decoder_depth)]
    return [e for e in starts if e < cfg.epochs]


def load_pretrained_graphfm(path: str | os.PathLike) -> tuple[GraphFMConfig, dict]:
    """Reads a pretrained GraphFM model directory -> ``(config, params)`` (numpy)."""
    from jaxfm.loading import family_of, resolve_model_dir

    path = resolve_model_dir(path)
    params, config = load_model_dir(path)
    if family_of(config, f"{path}/config.json") != "graphfm":
        raise ValueError(
            f"{path}: not a GraphFM model directory (family {config.get('family')!r}; expected "
            "the WORKDIR/model written by `jaxfm pretrain`)"
        )
    return GraphFMConfig.from_dict(config["graphfm"]), params


def transplant_pretrained(
    new_params: dict, pretrained: dict, source: str, *, fresh_if_absent: tuple[str, ...] = ()
) -> tuple[dict, list[str]]:
    """New params with every shared-trunk tensor taken from ``pretrained`` (shapes must match).

    Returns the params and the paths kept fresh: the dataset-specific ones (:data:`NEW_PARAMS`),
    plus those under a ``fresh_if_absent`` prefix that the checkpoint lacks (e.g. a graph decoder
    a node-level pretraining never trained).
    """
    old_flat = flatten(pretrained)
    absent = [
        "^" + re.escape(p) + "$"
        for p in flatten(new_params)
        if p not in old_flat and p.startswith(tuple(fresh_if_absent))
    ]
    try:
        out, report = transplant(
            new_params, old_flat, keep=[*NEW_PARAMS, *absent], what=f"the checkpoint {source}"
        )
    except TransplantError as e:
        raise ValueError(
            f"{source}: the checkpoint does not fit this model config (made with another "
            f"config?); missing: {e.missing[:8]}; shape mismatches: {e.mismatched[:8]}"
        ) from None
    keep_new = list(report.kept)
    return jax.device_put(out), keep_new  # device_put: no per-shape compile


def finetune_inputs(
    ds: NodeDataset, base_cfg: GraphFMConfig, cfg: FinetuneConfig
) -> tuple[WholeGraphBatcher, GraphFMConfig]:
    """The batcher and model config of finetuning ``base_cfg`` on ``ds``: one dataset slot whose
    feature MLP reads ``cfg.feature_dim`` columns (raw when None) through ``cfg.feature_hidden``
    hidden units; the trunk is unchanged."""
    width = ds.x.shape[1] if cfg.feature_dim is None else cfg.feature_dim
    hidden = base_cfg.feature_hidden if cfg.feature_hidden is None else cfg.feature_hidden
    # the pretraining datasets go first: their widths are not this graph's
    base = dataclasses.replace(base_cfg, datasets=(), feature_dim=int(width), feature_hidden=hidden)
    batcher = WholeGraphBatcher.for_model(
        ds, base, cfg.batch_targets, cfg.seed, context_nodes=cfg.context_nodes
    )
    return batcher, dataclasses.replace(base, datasets=(batcher.spec,))


def scale_new_feature_mlp(params: dict, gain: float) -> dict:
    """``params`` with the fresh feature MLP's output kernel multiplied by ``gain``."""
    if gain == 1.0:
        return params
    mlp = params["tokenizer"]["feature_mlp"]
    mlp = {**mlp, "kernel_1": mlp["kernel_1"] * gain}
    return {**params, "tokenizer": {**params["tokenizer"], "feature_mlp": mlp}}


def drop_input_features(batch, key, rate: float):
    """Inverted dropout on ``batch.features`` (training only)."""
    if rate == 0:
        return batch
    keep = jax.random.bernoulli(key, 1 - rate, batch.features.shape)
    dropped = jnp.where(keep, batch.features / (1 - rate), jnp.zeros((), batch.features.dtype))
    return dataclasses.replace(batch, features=dropped)


def splits_for(ds: NodeDataset, chosen: list[int] | None = None) -> list[tuple[int, Split]]:
    """``(index, split)`` pairs of the dataset's splits: its public ones, else the seeded
    fallback :func:`jaxfm.data.splits.seeded_node_splits` made when it was loaded (pass
    ``num_random_splits`` to ``load_dataset``), the same masks the baselines see."""
    splits = list(ds.splits)
    if not splits:
        raise ValueError(f"{ds.name}: the dataset has no splits (load it with num_random_splits)")
    chosen = range(len(splits)) if chosen is None else chosen
    for i in chosen:
        if not 0 <= i < len(splits):
            raise ValueError(f"--splits: {ds.name} has {len(splits)} splits, index {i} is invalid")
    return [(i, splits[i]) for i in chosen]


def finetune(
    cfg: FinetuneConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log_stream=None,
    tensorboard: bool = False,
    profile_steps: tuple[int, int] | None = None,
) -> dict:
    """MFT/NFT on every chosen split; returns the result dict (see ``jaxfm finetune``).

    Each split is one run of the training spine (:func:`jaxfm.train.trainer.fit`) in
    ``WORKDIR/split_<i>``: MFT trains only the new feature MLP and head
    (:data:`NEW_PARAMS`); NFT also unfreezes decoder layer ``k`` at epoch
    ``unfreeze_epochs(cfg)[k]`` with the learning rate divided by ``lr_decay`` each time.
    Selection is on validation accuracy; test accuracy is reported at the selected epoch only.
    With ``resume``, finished splits are read back and an interrupted one continues.
    """
    from jaxfm.data.registry import load_dataset

    base_cfg, pretrained = load_pretrained_graphfm(cfg.checkpoint)
    ds = load_dataset(cfg.dataset, num_random_splits=cfg.num_random_splits)
    if not isinstance(ds, NodeDataset) or ds.task != "classification":
        raise ValueError(f"--dataset {cfg.dataset}: finetuning needs a node-classification graph")
    if any(s.name == ds.name for s in base_cfg.datasets):
        raise ValueError(
            f"--dataset {cfg.dataset}: '{ds.name}' was in the pretraining corpus; evaluate on "
            "unseen graphs only"
        )
    batcher, model_cfg = finetune_inputs(ds, base_cfg, cfg)
    model = GraphFM(model_cfg)
    y = np.asarray(ds.y)

    def loss_fn(params, batch, key, train):
        key, drop_key = jax.random.split(key)
        if train:
            batch = drop_input_features(batch, drop_key, cfg.input_dropout)
        out = model.apply({"params": params}, batch, deterministic=not train, rngs={"dropout": key})
        return loss_and_metrics(out, batch, model_cfg)[0], {}

    predict = make_eval_step(
        lambda params, batch: jnp.argmax(model.apply({"params": params}, batch)["logits"], -1)
    )

    batch_of = batcher.batch if cfg.context_nodes is None else batcher.batch_around

    def accuracy(params, mask: np.ndarray, seed, whole: bool = False) -> float:
        nodes = np.flatnonzero(mask & (y >= 0))
        hits = 0
        for s in range(0, len(nodes), cfg.batch_targets):
            make = batcher.batch if whole else batch_of
            batch, ids = make(nodes[s : s + cfg.batch_targets], [seed, s])
            pred = np.asarray(predict(params, batch))[np.asarray(batch.target_mask)]
            hits += int((pred == y[ids]).sum())
        return hits / max(len(nodes), 1)

    chosen = splits_for(ds, cfg.splits)
    by_index = dict(chosen)
    position = {i: k + 1 for k, (i, _) in enumerate(chosen)}
    if len(chosen) * cfg.epochs >= 200:  # with or without a progress bar
        print(
            f"{cfg.mode}: {len(chosen)} splits x {cfg.epochs} epochs on {ds.name} "
            f"({ds.num_nodes:,} nodes): a long run",
            file=sys.stderr,
        )

    def train_split(split_index: int, workdir) -> dict:
        split = by_index[split_index]
        key = jax.random.key(cfg.seed * 1009 + split_index)
        key, init_key = jax.random.split(key)
        train_nodes = np.flatnonzero(split.train & (y >= 0))
        if len(train_nodes) == 0:
            raise ValueError(f"{ds.name} split {split_index}: no labelled training node")
        example, _ = batch_of(train_nodes[:1], 0)
        fresh = jax.jit(lambda k, b: model.init(k, b)["params"])(init_key, example)
        params, _ = transplant_pretrained(fresh, pretrained, cfg.checkpoint)
        params = scale_new_feature_mlp(params, cfg.feature_init_gain)

        def epoch_batches(epoch):
            order = np.random.default_rng([cfg.seed, split_index, epoch]).permutation(train_nodes)
            for s in range(0, len(order), cfg.batch_targets):
                yield batch_of(order[s : s + cfg.batch_targets], [cfg.seed, epoch, s])[0]

        micro = -(-len(train_nodes) // cfg.batch_targets)
        data = EpochBatches(epoch_batches, micro)
        spe = data.steps_per_epoch
        unfreeze = unfreeze_epochs(cfg, model_cfg.decoder_depth)
        opt = OptimizerConfig(
            name="adamw",
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            schedule="step_decay" if unfreeze else "constant",
            decay_factor=cfg.lr_decay,
            clip_norm=None,
        )
        optimizer = make_optimizer(
            opt,
            params,
            trainable=list(NEW_PARAMS),
            unfreeze=[(f"^decoder/layer_{k}/", e * spe) for k, e in enumerate(unfreeze)],
            boundaries=[e * spe for e in unfreeze],
        )
        desc = (
            f"{cfg.mode} {ds.name} split {split_index} ({position[split_index]} of "
            f"{len(chosen)}, {cfg.epochs} epochs)"
        )
        if unfreeze:  # the schedule up front, then each unfreeze as it happens
            print(
                f"{desc}: decoder layers 0..{len(unfreeze) - 1} unfreeze at epochs {unfreeze} "
                f"(lr / {cfg.lr_decay} each)",
                file=sys.stderr,
            )
        unfreeze_at = {e * spe: (k, e) for k, e in enumerate(unfreeze)}

        def announce_unfreeze(step: int, host: dict, seconds: float) -> dict:
            """At the first step that trains decoder layer k: a line, and a field of the record."""
            del host, seconds
            if step not in unfreeze_at:
                return {}
            k, epoch = unfreeze_at[step]
            lr = cfg.learning_rate / cfg.lr_decay ** (k + 1)
            tqdm.write(
                f"{desc}: epoch {epoch}: decoder layer {k} unfrozen, lr {lr:.3g}", file=sys.stderr
            )
            return {"unfrozen": f"decoder/layer_{k}"}

        state, shardings = create_state(params, optimizer)
        select = Select(metric="accuracy", mode="max")
        fitted = fit(
            state,
            make_train_step(loss_fn, optimizer, state_shardings=shardings),
            data,
            total_steps=spe * cfg.epochs,
            rng=key,
            steps_per_epoch=spe,
            evaluate=lambda p: {"accuracy": accuracy(p, split.val, 1)},
            select=select,
            workdir=workdir,
            resume=resume,
            overwrite=overwrite,
            run_info={**json.loads(json.dumps(dataclasses.asdict(cfg))), "split": split_index},
            step_record=announce_unfreeze if unfreeze else None,
            log_stream=log_stream,
            progress=progress,
            desc=desc,
            tensorboard=tensorboard,
            profile_steps=profile_steps,
        )
        return {
            "split": split_index,
            "val_accuracy": select.best,
            "test_accuracy": accuracy(fitted.best_params, split.test, 2),
            "best_epoch": select.best_epoch,
            "preempted": fitted.preempted,
            **(
                {"test_accuracy_whole_graph": accuracy(fitted.best_params, split.test, 2, True)}
                if cfg.test_on_whole_graph
                else {}
            ),
        }

    workdir = None if cfg.workdir is None else Path(cfg.workdir)
    identity = {  # what a finished split must share with a resume (more splits may be added)
        k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("splits", "workdir")
    }
    per_split = run_splits(
        workdir, [i for i, _ in chosen], train_split, resume=resume, identity=identity
    )
    preempted = any(r.get("preempted") for r in per_split)
    tests = np.array([r["test_accuracy"] for r in per_split])
    whole = {}
    if cfg.test_on_whole_graph and per_split:
        w = np.array([r["test_accuracy_whole_graph"] for r in per_split])
        whole = {
            "test_accuracy_whole_graph_mean": float(w.mean()),
            "test_accuracy_whole_graph_std": float(w.std()),
        }
    return {
        "dataset": ds.name,
        "mode": cfg.mode,
        "checkpoint": str(cfg.checkpoint),
        "test_accuracy_mean": float(tests.mean()),
        "test_accuracy_std": float(tests.std()),
        **whole,
        "per_split": per_split,
        "preempted": preempted,
        "config": dataclasses.asdict(cfg),
    }


def embed_graph(checkpoint: str, dataset: str, out: str, *, chunk: int = 512) -> dict:
    """Writes ``[N, D]`` node embeddings of ``dataset`` from a pretrained model to ``out`` (.npy).

    A dataset of the pretraining corpus uses its own trained feature MLP; an unseen dataset gets
    a freshly initialised one (seed 0) on the pretraining feature reduction (``feature_dim`` SVD
    columns, plain init), not MFT's raw-feature path. Written atomically.
    """
    from jaxfm.data.registry import load_dataset
    from jaxfm.model_dir import check_output_file, write_npy_atomic

    out_path = check_output_file(out, what="--out")  # before the computation, not after it
    base_cfg, pretrained = load_pretrained_graphfm(checkpoint)
    ds = load_dataset(dataset)
    if not isinstance(ds, NodeDataset):
        raise ValueError(f"--dataset {dataset}: embedding needs a node-level graph")
    batcher = WholeGraphBatcher.for_model(ds, base_cfg, chunk, 0)
    names = [s.name for s in base_cfg.datasets]
    if ds.name in names:
        model_cfg, index = base_cfg, names.index(ds.name)
        params = jax.tree.map(jnp.asarray, pretrained)
    else:
        model_cfg, index, params = dataclasses.replace(base_cfg, datasets=(batcher.spec,)), 0, None
    model = GraphFM(model_cfg)
    embed = jax.jit(lambda p, b: model.apply({"params": p}, b, method=GraphFM.embed))
    emb = np.zeros((ds.num_nodes, model_cfg.dim), np.float32)
    for s in tqdm(range(0, ds.num_nodes, chunk), desc="embed", file=sys.stderr, leave=False):
        batch, ids = batcher.batch(
            np.arange(s, min(s + chunk, ds.num_nodes)),
            s,
            dataset=index,
            num_datasets=len(model_cfg.datasets),
        )
        if params is None:
            fresh = jax.jit(lambda k, b: model.init(k, b)["params"])(jax.random.key(0), batch)
            params, _ = transplant_pretrained(fresh, pretrained, checkpoint)
        emb[ids] = np.asarray(embed(params, batch))[np.asarray(batch.target_mask)]
    write_npy_atomic(out_path, emb)  # atomic, umask honoured, no temp file left on failure
    return {"dataset": ds.name, "embeddings": str(out_path), "shape": list(emb.shape)}
