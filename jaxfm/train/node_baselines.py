"""Full-graph training of the GCN / MLP baselines on a node dataset's splits.

The reference numbers beside GraphFM's finetuning: each baseline is trained on exactly the same
train/val/test masks (the dataset's public splits, or the seeded 60/20/20 ones), model selection
on validation accuracy, test accuracy reported per split and as mean ± std.
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
from jaxfm.data.graph_dataset import NodeDataset

__all__ = ["BaselineConfig", "train_node_baseline"]

MODELS = {"gcn": GCN, "mlp": FeatureMLP}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaselineConfig:
    """Hyper-parameters of a baseline run (Kipf & Welling's defaults)."""

    model: str = "gcn"
    hidden: int = 64
    depth: int = 2
    dropout: float = 0.5
    learning_rate: float = 0.01
    weight_decay: float = 5e-4
    epochs: int = 200
    seed: int = 0

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"BaselineConfig.model must be one of {sorted(MODELS)}")
        if self.epochs < 1 or self.hidden < 1 or self.depth < 1:
            raise ValueError("BaselineConfig: epochs, hidden and depth must be >= 1")


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
    x = _features(ds.x)
    s, r, w = (jnp.asarray(a) for a in gcn_norm(ds.senders, ds.receivers, ds.num_nodes))
    y = jnp.asarray(np.maximum(ds.y, 0), jnp.int32)
    model = MODELS[cfg.model](
        hidden=cfg.hidden, num_classes=ds.num_classes, depth=cfg.depth, dropout=cfg.dropout
    )
    tx = optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)

    graph = (x, s, r, w, y)  # jit arguments, not closure constants (XLA would fold them)

    def loss_fn(params, mask, key, graph):
        x, s, r, w, y = graph
        logits = model.apply(params, x, s, r, w, deterministic=False, rngs={"dropout": key})
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(ce * mask) / jnp.maximum(mask.sum(), 1)

    @jax.jit
    def step(params, opt_state, mask, key, graph):
        loss, g = jax.value_and_grad(loss_fn)(params, mask, key, graph)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracies(params, masks, graph):
        x, s, r, w, y = graph
        pred = model.apply(params, x, s, r, w).argmax(-1)
        hit = (pred == y).astype(jnp.float32)
        return (masks * hit).sum(-1) / jnp.maximum(masks.sum(-1), 1)

    results = []
    for i in tqdm(chosen, desc=f"{cfg.model} {ds.name}", disable=not progress, leave=False):
        sp_ = ds.splits[i]
        labelled = ds.y >= 0
        masks = jnp.asarray(
            np.stack([sp_.train & labelled, sp_.val & labelled, sp_.test & labelled]),
            jnp.float32,
        )
        key = jax.random.key(cfg.seed * 1000 + i)
        key, init_key = jax.random.split(key)
        params = model.init(init_key, x, s, r, w)
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
    tests = np.array([res["test_accuracy"] for res in results])
    return {
        "model": cfg.model,
        "dataset": ds.name,
        "per_split": results,
        "test_accuracy_mean": float(tests.mean()),
        "test_accuracy_std": float(tests.std()),
    }
