"""Full-graph training of the node-classification baselines on a node dataset's splits.

The reference numbers beside GraphFM's finetuning: each baseline is trained on exactly the same
train/val/test masks (the dataset's public splits, or the seeded 60/20/20 ones), model selection
on validation accuracy, test accuracy reported per split and as mean ± std.

Models (``BaselineConfig.model``): ``gcn`` (the :class:`GCN` module with precomputed
:func:`gcn_norm` weights, unchanged so earlier numbers reproduce), ``mlp`` (no graph), the
:class:`GNN` stacks ``sage``, ``gat``, ``gin``, ``gps`` (on the symmetrised edges of
:func:`gcn_norm` without its self loops; the layers add their own where the method defines them),
and ``graphmae`` (self-supervised pretraining once per call, then a linear probe per split, the
probe trained for ``epochs`` steps with ``learning_rate`` / ``weight_decay``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp
from jax.experimental import sparse as jsparse
from tqdm.auto import tqdm

from jaxfm.baselines.gcn import GCN, FeatureMLP, gcn_norm
from jaxfm.baselines.gnn import GNN
from jaxfm.baselines.graphmae import GraphMAE, linear_probe, pretrain_graphmae
from jaxfm.data.graph_dataset import NodeDataset

__all__ = ["MODEL_NAMES", "BaselineConfig", "train_node_baseline"]

MODELS = {"gcn": GCN, "mlp": FeatureMLP}  # the modules called with gcn_norm weights
MODEL_NAMES = ("gcn", "sage", "gat", "gin", "gps", "mlp", "graphmae")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaselineConfig:
    """Hyper-parameters of a baseline run (Kipf & Welling's defaults).

    Attributes:
      model: one of :data:`MODEL_NAMES`.
      hidden, depth, dropout: widths / layers / feature dropout of the supervised model.
      learning_rate, weight_decay, epochs: AdamW full-batch training (for ``graphmae``: the
        linear probe's).
      seed: initialisation / dropout seed (split i uses ``seed * 1000 + i``).
      heads: attention heads of ``gat`` hidden layers, ``gps`` layers and the GraphMAE encoder.
      gps_max_nodes: ``gps`` refuses larger graphs (its full attention is ``O(N^2)``).
      graphmae_epochs, graphmae_hidden, graphmae_mask_rate, graphmae_learning_rate,
        graphmae_weight_decay: GraphMAE pretraining.
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
    ds: NodeDataset, cfg: BaselineConfig, *, splits: list[int] | None = None, progress=True
) -> dict:
    """Trains ``cfg.model`` once per split and returns per-split and aggregate test accuracy.

    Returns:
      ``{"model", "dataset", "per_split": [{"split", "val_accuracy", "test_accuracy",
      "best_epoch"}], "test_accuracy_mean", "test_accuracy_std"}``.
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
    x = _features(ds.x)
    s, r, w = gcn_norm(ds.senders, ds.receivers, ds.num_nodes)
    legacy = cfg.model in MODELS
    if not legacy:  # symmetrised edges, without gcn_norm's self loops
        keep = s != r
        s, r, w = s[keep], r[keep], w[keep]
    s, r, w = (jnp.asarray(a) for a in (s, r, w))
    y = jnp.asarray(np.maximum(ds.y, 0), jnp.int32)
    all_masks = {i: _split_masks(ds, i) for i in chosen}
    if cfg.model == "graphmae":
        results = _graphmae_results(ds, cfg, x, s, r, y, all_masks, progress)
        return _summary(cfg, ds, results)
    if legacy:
        model = MODELS[cfg.model](
            hidden=cfg.hidden, num_classes=ds.num_classes, depth=cfg.depth, dropout=cfg.dropout
        )
    else:
        model = GNN(
            cfg.model,
            hidden=cfg.hidden,
            num_classes=ds.num_classes,
            depth=cfg.depth,
            dropout=cfg.dropout,
            heads=cfg.heads,
        )
    tx = optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)

    graph = (x, s, r, w, y)  # jit arguments, not closure constants (XLA would fold them)

    def forward(params, graph, **kw):
        x, s, r, w, _ = graph
        if legacy:
            return model.apply(params, x, s, r, w, **kw)
        return model.apply(params, x, s, r, **kw)

    def loss_fn(params, mask, key, graph):
        logits = forward(params, graph, deterministic=False, rngs={"dropout": key})
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, graph[-1])
        return jnp.sum(ce * mask) / jnp.maximum(mask.sum(), 1)

    @jax.jit
    def step(params, opt_state, mask, key, graph):
        loss, g = jax.value_and_grad(loss_fn)(params, mask, key, graph)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracies(params, masks, graph):
        pred = forward(params, graph).argmax(-1)
        hit = (pred == graph[-1]).astype(jnp.float32)
        return (masks * hit).sum(-1) / jnp.maximum(masks.sum(-1), 1)

    results = []
    for i in tqdm(chosen, desc=f"{cfg.model} {ds.name}", disable=not progress, leave=False):
        masks = all_masks[i]
        key = jax.random.key(cfg.seed * 1000 + i)
        key, init_key = jax.random.split(key)
        params = model.init(init_key, x, s, r, w) if legacy else model.init(init_key, x, s, r)
        opt_state = tx.init(params)
        best = (-1.0, 0.0, -1)
        for epoch in range(cfg.epochs):
            key, k = jax.random.split(key)
            params, opt_state, _ = step(params, opt_state, masks[0], k, graph)
            _, val, test = (float(a) for a in accuracies(params, masks, graph))
            if val > best[0]:
                best = (val, test, epoch)
        results.append(
            {"split": i, "val_accuracy": best[0], "test_accuracy": best[1], "best_epoch": best[2]}
        )
    return _summary(cfg, ds, results)


def _split_masks(ds: NodeDataset, i: int):
    """``[3, N]`` float train / val / test masks of split ``i``, unlabelled nodes excluded."""
    sp_ = ds.splits[i]
    labelled = ds.y >= 0
    return jnp.asarray(
        np.stack([sp_.train & labelled, sp_.val & labelled, sp_.test & labelled]), jnp.float32
    )


def _graphmae_results(ds, cfg: BaselineConfig, x, s, r, y, all_masks, progress) -> list[dict]:
    """Pretrains GraphMAE once (seed ``cfg.seed``), then one linear probe per split."""
    if isinstance(x, jsparse.BCOO):
        x = x.todense()  # the reconstruction target is dense anyway
    model = GraphMAE(
        num_features=x.shape[1],
        hidden=cfg.graphmae_hidden,
        heads=cfg.heads,
        mask_rate=cfg.graphmae_mask_rate,
    )
    params, _ = pretrain_graphmae(
        model,
        x,
        s,
        r,
        epochs=cfg.graphmae_epochs,
        learning_rate=cfg.graphmae_learning_rate,
        weight_decay=cfg.graphmae_weight_decay,
        seed=cfg.seed,
    )
    emb = jax.jit(lambda p, x, s, r: model.apply(p, x, s, r, method=GraphMAE.encode))(
        params, x, s, r
    )
    results = []
    for i, masks in tqdm(all_masks.items(), desc=f"probe {ds.name}", disable=not progress):
        probe = linear_probe(
            emb,
            y,
            masks,
            ds.num_classes,
            epochs=cfg.epochs,
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed * 1000 + i,
        )
        results.append({"split": i, **probe})
    return results


def _summary(cfg: BaselineConfig, ds: NodeDataset, results: list[dict]) -> dict:
    tests = np.array([res["test_accuracy"] for res in results])
    return {
        "model": cfg.model,
        "dataset": ds.name,
        "per_split": results,
        "test_accuracy_mean": float(tests.mean()),
        "test_accuracy_std": float(tests.std()),
    }
