"""Choosing a corpus: every dataset under some folders, one per graph family, minus exclusions."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from jaxfm.data.corpus_presets import resolve_preset
from jaxfm.data.graph_dataset import GraphClassificationDataset, NodeDataset
from jaxfm.data.registry import find_datasets, load_dataset

__all__ = ["select_datasets"]


def select_datasets(
    paths: Sequence[str], exclude: Sequence[str] = (), *, preset: str | None = None, log=print
) -> list[NodeDataset]:
    """Loads every node-level dataset under ``paths`` (files or folders), minus ``exclude``.

    With ``preset`` (a name of :data:`jaxfm.data.corpus_presets.CORPUS_PRESETS`, e.g. the paper's
    ``paper-small`` corpus), only the preset's graphs are kept, and the paper graphs missing under
    ``paths`` are logged by name.

    One dataset per graph family is kept (the same graph often appears in several collections,
    e.g. Cora in gnn-benchmark, GraphData and Planetoid); ``exclude`` regexes match names and
    families, so excluding ``chameleon`` also drops its filtered/directed and MUSAE copies.
    Graph-classification sets are skipped with a message (the node-level pretraining objective
    does not use them).
    """

    excluded = [re.compile(p) for p in exclude]
    datasets: list[NodeDataset] = []
    families: dict[str, str] = {}
    found = []
    for path in paths:
        refs = find_datasets(path)
        if not refs:
            raise ValueError(f"--data {path}: no dataset in a known format found there")
        found.extend(refs)
    keep = None
    if preset is not None:
        match = resolve_preset(preset, [getattr(r, "family", "") or r.name for r in found])
        log(match.describe())
        if not match.found:
            raise ValueError(f"--corpus {preset}: none of its graphs is under --data {list(paths)}")
        keep = match.families
    for ref in found:
        family = getattr(ref, "family", "") or ref.name
        if keep is not None and family not in keep:
            continue
        if getattr(ref, "skip_reason", ""):
            log(f"corpus: {ref.name} skipped ({ref.skip_reason})")
            continue
        if any(rx.search(ref.name) or rx.search(family) for rx in excluded):
            log(f"corpus: {ref.name} excluded (evaluation graph family {family!r})")
            continue
        if family in families:  # the same graph in another collection or a variant of it
            log(f"corpus: {ref.name} skipped (same graph as {families[family]})")
            continue
        if getattr(ref, "level", "node") == "graph":
            log(f"corpus: {ref.name} skipped (graph classification set)")
            continue
        ds = load_dataset(ref.path)
        if isinstance(ds, GraphClassificationDataset):
            log(f"corpus: {ref.name} skipped (graph classification set)")
            continue
        families[family] = ref.name
        datasets.append(dataclasses.replace(ds, name=ref.name))
    return datasets
