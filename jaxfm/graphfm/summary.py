"""Parameter counts of a GraphFM config, computed with ``jax.eval_shape`` (nothing allocated).

What is counted (``jaxfm graphfm summary --config NAME`` prints these rows):

* ``shared_trunk``: every parameter whose path matches none of
  :data:`~jaxfm.graphfm.model.DATASET_SPECIFIC` (``^tokenizer/feature_mlp/``, ``^heads/``,
  ``^graph_heads/``): SignNet (``tokenizer/signnet``), the latents, the cross-attention block,
  the latent self-attention blocks and final norm (``encoder/*``), the node decoder
  (``decoder/*``: type embeddings, blocks, norm) and, when enabled, the graph decoder. It does
  not depend on the dataset table.
* ``dataset_specific``: the stacked per-dataset feature MLPs and heads of the config's table.
* ``paper_comparable``: how the paper's figures (Table A1: 389K / 18M / 75M) are reproduced:
  the shared trunk plus ONE dataset's feature MLP for an input of
  :data:`PAPER_FEATURE_WIDTH` = 8189 features (BlogCatalog, the widest graph of the paper's
  small-scale corpus, Table A3), i.e. the model as instantiated for one wide dataset. The paper
  does not say what it counts; this reading matches all three sizes within 2 %
  (383.5K / 18.01M / 76.11M), while the shared trunk alone is 121K / 15.86M / 71.72M: with Table
  A1's widths no shared trunk reaches 389K for ``small`` (seven D=32 blocks are ~17K each), so
  the paper's small figure must include an input MLP.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np

from jaxfm.graph.packed import PackedBatch
from jaxfm.graphfm.config import DatasetSpec, GraphFMConfig
from jaxfm.graphfm.model import DATASET_SPECIFIC, GraphFM

__all__ = [
    "PAPER_COUNTS",
    "PAPER_FEATURE_WIDTH",
    "dummy_batch",
    "format_summary",
    "parameter_shapes",
    "parameter_summary",
]

PAPER_FEATURE_WIDTH = 8189
PAPER_COUNTS = {"small": 389_000, "medium": 18_000_000, "large": 75_000_000}


def _path(keys) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in keys)


def _size(tree) -> int:
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)))


def dummy_batch(config: GraphFMConfig, *, rows=8, graphs=2, targets=2) -> PackedBatch:
    """A tiny well-formed batch for ``init`` / ``eval_shape`` (parameter shapes do not depend on
    T, G or Q)."""
    s = max(len(config.datasets), 1)
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


def _with_placeholder(config: GraphFMConfig) -> GraphFMConfig:
    if config.datasets:
        return config
    spec = DatasetSpec(name="placeholder", num_features=config.feature_dim, num_classes=2)
    return dataclasses.replace(config, datasets=(spec,))


def parameter_shapes(config: GraphFMConfig):
    """The parameter tree of ``GraphFM(config)`` as ``jax.ShapeDtypeStruct`` leaves (no memory).

    A config without a dataset table gets one placeholder dataset (``feature_dim`` inputs, two
    classes).
    """
    config = _with_placeholder(config)
    model = GraphFM(config)
    init = lambda: model.init(jax.random.key(0), dummy_batch(config))
    return jax.eval_shape(init)["params"]


def parameter_summary(config: GraphFMConfig, *, name: str | None = None) -> dict:
    """Parameter counts (see the module docstring for what each entry counts).

    Args:
      config: the model config (its dataset table is used; none -> one placeholder dataset).
      name: the preset name; for ``small``/``medium``/``large`` the paper figure and the ratio
        ``paper_comparable / paper`` are added.

    Returns:
      ``{"config", "total", "shared_trunk", "dataset_specific", "datasets", "per_module",
      "trunk_modules", "paper_comparable"[, "paper", "paper_ratio"]}``; ``per_module`` counts
      each top-level module (``tokenizer``, ``encoder``, ``decoder``, ``heads``...) and
      ``trunk_modules`` the trunk's parts (``tokenizer/signnet``, ``encoder/latents``,
      ``encoder/cross_attention``, ``encoder/layer_i``..., ``decoder/...``).
    """
    config = _with_placeholder(config)
    params = parameter_shapes(config)
    patterns = [re.compile(p) for p in DATASET_SPECIFIC]
    specific = trunk = 0
    trunk_modules: dict[str, int] = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path, n = _path(keys), int(np.prod(leaf.shape))
        if any(p.search(path) for p in patterns):
            specific += n
            continue
        trunk += n
        part = "/".join(path.split("/")[:2])
        trunk_modules[part] = trunk_modules.get(part, 0) + n
    wide = dataclasses.replace(
        config,
        feature_dim=PAPER_FEATURE_WIDTH,
        datasets=(DatasetSpec(name="blogcatalog", num_features=PAPER_FEATURE_WIDTH,
                              num_classes=39),),
    )  # fmt: skip
    wide_mlp = _size(parameter_shapes(wide)["tokenizer"]["feature_mlp"])
    out = {
        "config": name,
        "total": _size(params),
        "shared_trunk": trunk,
        "dataset_specific": specific,
        "datasets": len(config.datasets),
        "per_module": {k: _size(v) for k, v in params.items()},
        "trunk_modules": trunk_modules,
        "paper_comparable": trunk + wide_mlp,
    }
    if name in PAPER_COUNTS:
        out["paper"] = PAPER_COUNTS[name]
        out["paper_ratio"] = round(out["paper_comparable"] / PAPER_COUNTS[name], 4)
    return out


def format_summary(summary: dict) -> str:
    """A Markdown table of :func:`parameter_summary` (what ``jaxfm graphfm summary`` prints)."""
    rows = [
        ("shared trunk (all but feature MLPs and heads)", summary["shared_trunk"]),
        (f"dataset-specific ({summary['datasets']} datasets)", summary["dataset_specific"]),
        ("total", summary["total"]),
        (f"paper-comparable (trunk + one {PAPER_FEATURE_WIDTH}-feature MLP)",
         summary["paper_comparable"]),
    ]  # fmt: skip
    if "paper" in summary:
        rows.append((f"paper, Table A1 ({summary['config']})", summary["paper"]))
    rows += [(f"  module {k}", v) for k, v in summary["per_module"].items()]
    rows += [(f"  trunk {k}", v) for k, v in summary["trunk_modules"].items()]
    lines = ["| parameters | count |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in rows]
    if "paper_ratio" in summary:
        lines.append(f"| paper-comparable / paper | {summary['paper_ratio']:.3f} |")
    return "\n".join(lines)
