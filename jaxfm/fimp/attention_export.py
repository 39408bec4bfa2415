"""``jaxfm fimp attention-map``: a trained FIMP model's neighbour attention, by node group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxfm.fimp.attention_map import group_attention_maps, plot_group_maps
from jaxfm.fimp.data import DataOptions, prepare_fimp_data

__all__ = ["export_attention_map"]


def _region_groups(coords: np.ndarray, k: int = 7, seed: int = 0) -> np.ndarray:
    """k spatial clusters of region coordinates (k-means), a stand-in for functional networks."""
    from scipy.cluster.vq import kmeans2

    _, labels = kmeans2(coords.astype(np.float64), k, seed=seed, minit="++")
    return labels.astype(np.int64)


def export_attention_map(
    model_dir,
    out_dir,
    *,
    data: str | None = None,
    group_by: str = "label",
    layer: int = 0,
    max_edges: int | None = None,
    progress: bool = True,
) -> dict:
    """Loads a trained FIMP model and writes ``attention_map.npz`` + ``attention_map.png``.

    Args:
      model_dir: from ``jaxfm fimp train --save``.
      out_dir: output directory (created).
      data: dataset (default: the one recorded in the model directory).
      group_by: ``"label"`` (cell types / image classes) or ``"region"`` (fMRI: 7 k-means clusters
        of region coordinates).
      layer: FIMP hop whose message-creator attention is exported.
      max_edges: cap on edges per graph.

    Returns:
      a summary dict (paths, shapes, the group pairs drawn).
    """
    model, params, config = load_fimp(model_dir)
    if not 0 <= layer < model.config.num_layers:
        raise ValueError(f"--layer must be in [0, {model.config.num_layers}), got {layer}")
    opts = DataOptions(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in config["data_options"].items()}
    )
    fd = prepare_fimp_data(config["task"], data or config["data"], opts)
    meta = config.get("metadata", {})
    if fd.task == "fmri":
        graphs = [fd.graphs[i] for i in fd.splits["test"]]
    else:
        graphs = fd.graphs
    if group_by == "label":
        if "label" not in graphs[0].nodes:
            raise ValueError(f"--group-by label: the {fd.task} data has no node labels")
        groups = [np.asarray(gr.nodes["label"]) for gr in graphs]
        names = meta.get("label_names") or [str(i) for i in range(int(groups[0].max()) + 1)]
    elif group_by == "region":
        if fd.task != "fmri":
            raise ValueError("--group-by region applies to fmri models")
        grp = _region_groups(np.asarray(graphs[0].nodes["xyz"]))
        groups = [grp for _ in graphs]
        names = [f"region group {i}" for i in range(7)]
    else:
        raise ValueError(f"--group-by must be 'label' or 'region', got {group_by!r}")
    if "gene_ids" in graphs[0].nodes:
        token_ids = [np.asarray(gr.nodes["gene_ids"]) for gr in graphs]
        token_names = meta.get("gene_names") or []
        num_ids = len(token_names)
    else:
        n, L = graphs[0].n_node.sum(), model.config.tokenizer.num_patches
        token_ids = [np.broadcast_to(np.arange(L), (int(n), L)) for _ in graphs]
        token_names, num_ids = [f"patch {i}" for i in range(L)], L
    sums, counts = group_attention_maps(
        model,
        params,
        graphs,
        groups=groups,
        num_groups=len(names),
        token_ids=token_ids,
        num_token_ids=num_ids,
        layer=layer,
        max_edges=max_edges,
        progress=progress,
    )
    mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "attention_map.npz",
        mean=mean.astype(np.float32),
        counts=counts.astype(np.int64),
        group_names=np.array(names),
        token_names=np.array(token_names),
    )
    pairs = plot_group_maps(
        mean, counts, out / "attention_map.png", group_names=names, token_names=token_names
    )
    summary = {
        "npz": str(out / "attention_map.npz"),
        "png": str(out / "attention_map.png"),
        "shape": list(mean.shape),
        "pairs_drawn": [[names[a], names[b]] for a, b in pairs],
        "edges_used_token_pairs": int(counts.sum()),
    }
    (out / "attention_map.json").write_text(json.dumps(summary, indent=2))
    return summary


def load_fimp(path) -> tuple[Any, dict, dict]:
    """A FIMP model directory (``jaxfm fimp train --save``) -> ``(model, params, config)``."""
    from jaxfm.loading import load_model

    model, config, params = load_model(path)
    if config.get("family") != "fimp":
        raise ValueError(f"{path}: not a FIMP model directory (family={config.get('family')!r})")
    return model, params, config
