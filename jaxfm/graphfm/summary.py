"""Parameter counts of a GraphFM config, computed with ``jax.eval_shape`` (nothing allocated).

What is counted as the paper's figure (389K / 18M / 75M, Table A1): the shared trunk (SignNet,
latents, the cross-attention block, the latent self-attention blocks and the node decoder, all with
GEGLU feed-forwards) plus ONE dataset-specific feature MLP for an input of
``PAPER_FEATURE_WIDTH = 8189`` features (BlogCatalog, the widest graph of the paper's corpus,
Table A3). The paper does not say what it counts; this reconstruction matches all three sizes
within 2 % (383.5K / 18.01M / 76.1M), while the trunk alone is 121K / 15.9M / 71.7M (the wide
input MLP dominates the small model). The per-dataset heads and MLPs of a real corpus come on
top and are reported separately.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np

from jaxfm.graphfm.batch import PackedBatch
from jaxfm.graphfm.config import DatasetSpec, GraphFMConfig
from jaxfm.graphfm.model import DATASET_SPECIFIC, GraphFM

__all__ = ["PAPER_COUNTS", "PAPER_FEATURE_WIDTH", "format_summary", "parameter_summary"]

PAPER_FEATURE_WIDTH = 8189
PAPER_COUNTS = {"small": 389_000, "medium": 18_000_000, "large": 75_000_000}


def _count_by_rules(params, patterns) -> dict[str, int]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    hit = other = 0
    for path, leaf in flat:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if any(re.search(p, name) for p in patterns):
            hit += int(np.prod(leaf.shape))
        else:
            other += int(np.prod(leaf.shape))
    return {"dataset_specific": hit, "other": other}


def dummy_batch(config: GraphFMConfig, *, rows=8, graphs=2, targets=2) -> PackedBatch:
    """A shape-only batch for ``init`` / ``eval_shape``."""
    s = len(config.datasets)
    z = np.zeros
    return PackedBatch(
        features=z((rows, config.feature_dim), np.float32),
        pe=z((rows, config.pe_dim), np.float32),
        segment_ids=np.ones(rows, np.int32),
        group_sizes=np.array([rows] + [0] * (s - 1), np.int32),
        graph_dataset=z(graphs, np.int32),
        graph_mask=np.ones(graphs, bool),
        graph_label=np.full(graphs, -1, np.int32),
        target_index=z(targets, np.int32),
        target_mask=np.ones(targets, bool),
        target_graph=z(targets, np.int32),
        target_dataset=z(targets, np.int32),
        target_label=z(targets, np.int32),
        target_value=z(targets, np.float32),
        target_loss_mask=np.ones(targets, bool),
        neighbor_index=z((targets, config.num_neighbors), np.int32),
        neighbor_mask=np.ones((targets, config.num_neighbors), bool),
    )


def _shapes(config: GraphFMConfig):
    model = GraphFM(config)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_batch(config)))["params"]


def parameter_summary(config: GraphFMConfig, *, name: str | None = None) -> dict:
    """Counts: total, shared trunk, dataset-specific, per top-level module, and the paper figure.

    The config's own dataset table is used when it has one; otherwise one placeholder dataset
    with ``feature_dim`` inputs and 2 classes stands in.
    """
    if not config.datasets:
        config = dataclasses.replace(
            config,
            datasets=(DatasetSpec(name="placeholder", num_features=config.feature_dim,
                                  num_classes=2),),
        )  # fmt: skip
    params = _shapes(config)
    groups = _count_by_rules(params, DATASET_SPECIFIC)
    trunk = groups["other"]
    per_module = {k: int(sum(x.size for x in jax.tree.leaves(v))) for k, v in params.items()}
    wide = dataclasses.replace(
        config,
        feature_dim=PAPER_FEATURE_WIDTH,
        datasets=(DatasetSpec(name="blogcatalog", num_features=PAPER_FEATURE_WIDTH,
                              num_classes=6),),
    )  # fmt: skip
    wide_mlp = int(sum(x.size for x in jax.tree.leaves(_shapes(wide)["tokenizer"]["feature_mlp"])))
    out = {
        "config": name,
        "total": int(sum(x.size for x in jax.tree.leaves(params))),
        "shared_trunk": int(trunk),
        "dataset_specific": int(groups["dataset_specific"]),
        "datasets": len(config.datasets),
        "per_module": per_module,
        "paper_comparable": int(trunk + wide_mlp),
    }
    if name in PAPER_COUNTS:
        out["paper"] = PAPER_COUNTS[name]
        out["paper_ratio"] = round(out["paper_comparable"] / PAPER_COUNTS[name], 4)
    return out


def format_summary(summary: dict) -> str:
    """A small text table of :func:`parameter_summary`."""
    rows = [
        ("shared trunk", summary["shared_trunk"]),
        (f"dataset-specific ({summary['datasets']} datasets)", summary["dataset_specific"]),
        ("total", summary["total"]),
        (f"paper-comparable (trunk + one {PAPER_FEATURE_WIDTH}-feature MLP)",
         summary["paper_comparable"]),
    ]  # fmt: skip
    if "paper" in summary:
        rows.append((f"paper ({summary['config']})", summary["paper"]))
    lines = [f"{k:<58} {v:>14,}" for k, v in rows]
    lines += [f"  {k:<56} {v:>14,}" for k, v in summary["per_module"].items()]
    if "paper_ratio" in summary:
        lines.append(f"{'paper-comparable / paper':<58} {summary['paper_ratio']:>14.3f}")
    return "\n".join(lines)
