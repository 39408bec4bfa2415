"""Zero-shot FIMP node embeddings from a pretrained foundation model (no graph training).

``embed_zero_shot("fimp-vit", checkpoint, data=...)`` tokenizes every node with the pretrained
embedding layer, runs every pretrained encoder layer in cross-node form over the node graph
(self-loops included, messages averaged over incoming edges), applies the foundation's final
LayerNorm (ViT, BrainLM) and mean-pools each node's tokens (:class:`jaxfm.fimp.ZeroShotEncoder`).
This is what ``jaxfm fimp embed`` calls.

Node tasks embed the whole graph in one pass (every layer is one hop, so a batch would need the
k-hop neighbourhood of depth = number of layers anyway); fMRI embeds one recording (graph over
regions) at a time.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfm.fimp.config import fimp_config
from jaxfm.fimp.data import DataOptions, prepare_fimp_data
from jaxfm.fimp.model import ZeroShotEncoder
from jaxfm.fimp.pretrained import graft
from jaxfm.fimp.variants import data_options_for, load_pretrained_source, pretrained_setup

__all__ = ["ZERO_SHOT_MODELS", "embed_zero_shot"]

#: ``--model`` -> (pretrained family, FIMP task whose data loader reads the nodes).
ZERO_SHOT_MODELS = {
    "fimp-vit": ("vit", "image"),
    "fimp-scgpt": ("scgpt", "expression"),
    "fimp-brainlm": ("brainlm", "fmri"),
}


def embed_zero_shot(
    model: str,
    checkpoint: str,
    *,
    data: str = "synthetic",
    data_options: DataOptions | None = None,
    out: str | None = None,
    edge_chunk_size: int | None = None,
) -> dict[str, Any]:
    """Zero-shot node embeddings.

    Args:
      model: a key of :data:`ZERO_SHOT_MODELS`.
      checkpoint: a ``jaxfm convert`` output directory of that family.
      data: dataset path or ``"synthetic"`` (as ``jaxfm fimp train``).
      data_options: graph construction and data options (``graph="none"``: self-loops only,
        i.e. the foundation model applied to each node alone).
      out: write the embeddings here (``.npy``, atomic) and a ``.json`` summary beside it.
      edge_chunk_size: edges per attention chunk (memory bound).

    Returns:
      ``{"embeddings": [N, D] (node tasks) or [R, V, D] (fMRI recordings x regions), "summary":
      {...}}``.

    Raises:
      ValueError / FileNotFoundError: unknown model, wrong checkpoint family, data that does not
        fit the checkpoint (named).
    """
    if model not in ZERO_SHOT_MODELS:
        raise ValueError(f"--model must be one of {sorted(ZERO_SHOT_MODELS)}, got {model!r}")
    if out is not None:  # refuse a bad --out before the whole computation, not after it
        _check_out(out)
    t0 = time.perf_counter()
    family, task = ZERO_SHOT_MODELS[model]
    source = load_pretrained_source(family, checkpoint)
    opts = data_options_for(source, data, data_options or DataOptions())
    fdata = prepare_fimp_data(task, data, opts, gene_vocab=getattr(source, "vocab", None))
    base = fimp_config("tiny", tokenizer=fdata.tokenizer, edge_chunk_size=edge_chunk_size)
    cfg, tensors, pairs, report = pretrained_setup(base, source, fdata, zero_shot=True)
    encoder = ZeroShotEncoder(cfg)

    def nodes_of(graph):
        keep = ("image",) if task == "image" else ("signal", "xyz")
        if task == "expression":
            keep = ("gene_ids", "values", "token_mask")
        return {k: jnp.asarray(graph.nodes[k]) for k in keep}

    first = fdata.graphs[0]
    params = encoder.init(
        jax.random.key(0), nodes_of(first), first.senders[:1], first.receivers[:1]
    )["params"]
    params, graft_report = graft(params, tensors, pairs)
    params = jax.tree.map(jnp.asarray, params)
    apply = jax.jit(lambda p, nodes, s, r: encoder.apply({"params": p}, nodes, s, r))
    embeddings = np.stack(
        [
            np.asarray(apply(params, nodes_of(g), g.senders, g.receivers)["node_embedding"])
            for g in fdata.graphs
        ]
    )  # [R, V, D]
    if task != "fmri":
        embeddings = embeddings[0]  # [N, D]
    summary = {
        "model": model,
        "checkpoint": str(checkpoint),
        "data": data,
        "dataset": fdata.metadata.get("dataset"),
        "shape": list(embeddings.shape),
        "num_edges": int(sum(int(g.n_edge.sum()) for g in fdata.graphs)),
        "graph": opts.graph,
        "pretrained": {**report, **graft_report.summary()},
        "data_options": dataclasses.asdict(opts),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if out is not None:
        _save(out, embeddings, summary)
    return {"embeddings": embeddings, "summary": summary}


def _check_out(out: str) -> Path:
    from jaxfm.model_dir import check_output_file

    path = check_output_file(out, what="--out")
    if path.suffix != ".npy":
        raise ValueError(f"--out {out}: expected a .npy file name")
    check_output_file(path.with_suffix(".json"), what="--out's summary")
    return path


def _save(out: str, embeddings: np.ndarray, summary: dict) -> None:
    """Writes the embeddings and the summary atomically (umask honoured, no temp file left)."""
    from jaxfm.model_dir import write_json_atomic, write_npy_atomic

    path = _check_out(out)
    write_npy_atomic(path, embeddings.astype(np.float32))
    write_json_atomic(path.with_suffix(".json"), summary)
