"""Pretrained FIMP variants: read a foundation checkpoint (or gene table) and assemble the FIMP
config and graft pairs that reuse it (FIMP-ViT, FIMP-scGPT, FIMP-GenePT, FIMP-BrainLM)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxfm.fimp import pretrained as P
from jaxfm.fimp.config import FIMPConfig, PretrainedConfig
from jaxfm.fimp.data import DataOptions, FIMPData
from jaxfm.fimp.genept import GeneTable, match_gene_table, read_gene_table

__all__ = ["data_options_for", "load_pretrained_source", "pretrained_setup"]


def load_pretrained_source(init: str, checkpoint: str | None):
    """``None`` (scratch), a :class:`~jaxfm.fimp.pretrained.FoundationCheckpoint` or a
    :class:`~jaxfm.fimp.genept.GeneTable`."""
    if init == "scratch":
        return None
    if init == "genept":
        return read_gene_table(checkpoint)
    source = P.load_foundation(checkpoint, family=init)
    if init == "scgpt" and source.vocab is None:
        raise ValueError(
            f"--checkpoint {checkpoint}: an scGPT model directory needs its vocab.json (written "
            "by `jaxfm convert scgpt`) to map the dataset's gene symbols"
        )
    return source


def data_options_for(source, data: str, opts: DataOptions) -> DataOptions:
    """Adapts synthetic-data options to a checkpoint (ViT image size, BrainLM patch length)."""
    if isinstance(source, P.FoundationCheckpoint) and source.family == "vit":
        h, w = source.config.image_size
        if data == "synthetic" and opts.image_size is None and h == w:
            opts = dataclasses.replace(opts, image_size=h)
    if isinstance(source, P.FoundationCheckpoint) and source.family == "brainlm":
        p = source.config.timepoint_patching_size
        opts = dataclasses.replace(opts, fmri_patch_size=p)
        if data == "synthetic" and opts.num_timepoints % p:
            step = np.lcm(20, p)  # synthetic recordings come in multiples of 20 timepoints
            opts = dataclasses.replace(
                opts, num_timepoints=int(step * -(-opts.num_timepoints // step))
            )
    return opts


def pretrained_setup(
    base: FIMPConfig,
    source,
    data: FIMPData,
    *,
    num_layers: int | None = None,
    zero_shot: bool = False,
) -> tuple[FIMPConfig, dict[str, Any], list[tuple[str, str]], dict[str, Any]]:
    """The pretrained variant of ``base`` and what to graft into it.

    Args:
      base: the scratch config (its tokenizer is the data's).
      source: from :func:`load_pretrained_source` (not ``None``).
      data: the prepared data (gene names / vocabulary ids in its metadata).
      num_layers: message-creator layers (default: all encoder layers).
      zero_shot: pairs for :class:`~jaxfm.fimp.model.ZeroShotEncoder` instead of the task model.

    Returns:
      ``(config, flat pretrained tensors, graft pairs, report)``.
    """
    if isinstance(source, GeneTable):
        P.check_tokenizer(PretrainedConfig(family="genept"), base.tokenizer)
        match = match_gene_table(source, data.metadata["gene_names"])
        tokenizer = dataclasses.replace(base.tokenizer, gene_embedding_dim=source.dim)
        cfg = dataclasses.replace(
            base,
            tokenizer=tokenizer,
            pretrained=PretrainedConfig(family="genept", source=source.path),
        )
        pairs = P.graft_pairs("genept", tokenizer="fimp/tokenizer")
        report = {"family": "genept", "checkpoint": source.path, "genes": match.report()}
        return cfg, {"gene_embedding/embedding": match.table}, pairs, report
    vocab_ids = data.metadata.get("gene_vocab_ids") if source.family == "scgpt" else None
    pre = PretrainedConfig(
        family=source.family,
        foundation=source.config,
        gene_vocab_ids=None if vocab_ids is None else tuple(vocab_ids),
        source=source.path,
    )
    cfg = P.pretrained_fimp_config(base, pre, num_message_layers=num_layers)
    n = cfg.message.num_layers
    if zero_shot:
        spec = P.FAMILY_SPECS[source.family]
        norm = "final_norm" if spec.final_norm_eps(source.config) is not None else None
        pairs = P.graft_pairs(source.family, creators=["message"], num_layers=n, final_norm=norm)
    else:
        creators = [f"fimp/layers_{i}/message" for i in range(cfg.num_layers)]
        if cfg.separate_self:
            creators += [f"fimp/layers_{i}/self_message" for i in range(cfg.num_layers)]
        pairs = P.graft_pairs(
            source.family, tokenizer="fimp/tokenizer", creators=creators, num_layers=n
        )
    report = {"family": source.family, "checkpoint": source.path, "message_layers": n}
    if "gene_mapping" in data.metadata:
        report["genes"] = data.metadata["gene_mapping"]
    return cfg, source.params, pairs, report
