"""FIMP task inputs: a dataset (a file or built-in synthetic data) turned into graphs of tokenized
nodes, with splits. One function per modality; :func:`prepare_fimp_data` dispatches by task.

Node tasks (``expression``, ``celltype``, ``image``) live on one graph whose nodes are split into
train/val/test; ``fmri`` has one graph per recording (the 424 A424 regions, kNN over their
coordinates) and splits recordings.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path
from typing import Any

import jraph
import numpy as np
import scipy.sparse as sp

from jaxfm.data import (
    GeoImageDataset,
    SpatialDataset,
    load_spatial,
    map_gene_symbols,
    mask_values,
    read_a424_coordinates,
    sample_expressed_genes,
    split_nodes,
    synthetic_fmri,
    synthetic_images,
    synthetic_spatial,
    to_graph_arrays,
)
from jaxfm.fimp.config import FMRITokenizerConfig, GeneTokenizerConfig, ImageTokenizerConfig
from jaxfm.graph import (
    add_self_loops,
    haversine_radius_graph,
    knn_graph,
    latlon_to_unit_vectors,
    validate_graph,
)

__all__ = ["DataOptions", "FIMPData", "prepare_fimp_data"]

SYNTHETIC = "synthetic"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataOptions:
    """How a dataset becomes FIMP inputs.

    Attributes:
      max_genes: gene tokens per cell (a sample of its expressed genes).
      knn: neighbours per node when the graph is built from coordinates.
      radius_miles: image networks: connect images within this great-circle distance instead of
        kNN (``None``: kNN).
      graph: ``"file"`` (the file's neighbour matrix, else kNN), ``"knn"``, or ``"none"`` (self
        loops only: the no-graph ablation).
      mask_rate: fraction of a cell's sampled genes whose values are masked (``expression``;
        FIMP paper: 80 %).
      patch_mask_rate: fraction of each region's fMRI patches masked (``fmri``; 50 %).
      num_timepoints: fMRI timepoints per recording (multiple of 20) for synthetic recordings.
      num_recordings: synthetic fMRI recordings.
      num_nodes: synthetic node count (cells / images).
      image_size: side of synthetic images (``None``: 16; a pretrained ViT needs its own size).
      fmri_patch_size: timepoints per fMRI token (a pretrained BrainLM needs its own).
      split: train/val/test fractions.
      seed: data seed (sampling, masks, splits).
    """

    max_genes: int = 64
    knn: int = 6
    radius_miles: float | None = None
    graph: str = "file"
    mask_rate: float = 0.8
    patch_mask_rate: float = 0.5
    num_timepoints: int = 160
    num_recordings: int = 60
    num_nodes: int = 1200
    image_size: int | None = None
    fmri_patch_size: int = 20
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 0

    def __post_init__(self):
        if self.graph not in ("file", "knn", "none"):
            raise ValueError(f"graph must be 'file', 'knn' or 'none', got {self.graph!r}")
        for name in ("mask_rate", "patch_mask_rate"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.image_size is not None and self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        for name in (
            "max_genes",
            "knn",
            "num_timepoints",
            "num_recordings",
            "num_nodes",
            "fmri_patch_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class FIMPData:
    """Tokenized graphs and splits for one task.

    Attributes:
      task: the FIMP task.
      tokenizer: the tokenizer config matching the data (gene count, image size, ...).
      graphs: one graph (node tasks) or one per recording (fmri); ``nodes`` dicts of numpy arrays.
      splits: ``{"train"|"val"|"test": indices}`` into the nodes of ``graphs[0]`` (node tasks) or
        into ``graphs`` (fmri).
      num_classes: classification tasks only.
      metadata: names (genes, classes, regions) carried into saved models and attention maps.
    """

    task: str
    tokenizer: Any
    graphs: list[jraph.GraphsTuple]
    splits: dict[str, np.ndarray]
    num_classes: int | None = None
    metadata: dict = dataclasses.field(default_factory=dict)


def _graph(nodes: dict, senders, receivers, num_nodes: int, name: str) -> jraph.GraphsTuple:
    senders, receivers = add_self_loops(senders, receivers, num_nodes)  # FIMP: self-loops are edges
    g = jraph.GraphsTuple(
        nodes=nodes,
        edges=None,
        senders=senders.astype(np.int32),
        receivers=receivers.astype(np.int32),
        n_node=np.array([num_nodes], np.int32),
        n_edge=np.array([senders.shape[0]], np.int32),
        globals=None,
    )
    validate_graph(g, name=name)
    return g


def _edges_from_adjacency(adjacency: sp.spmatrix | None, coords, opts: DataOptions):
    n = coords.shape[0]
    if opts.graph == "none":
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    if opts.graph == "file" and adjacency is not None:
        return to_graph_arrays(adjacency)
    return knn_graph(coords, min(opts.knn, n - 1))


def _restrict_to_vocab(ds: SpatialDataset, vocab, synthetic: bool) -> tuple[SpatialDataset, dict]:
    """Keeps the genes a checkpoint vocabulary knows (scGPT); returns the mapping report.

    Unmapped genes are dropped from the expression matrix, hence from every cell's token set.
    Synthetic genes (``gene_000``, ...) take the names of the vocabulary's first gene symbols (not
    ``<special>`` tokens), so the built-in data can exercise a pretrained gene table.
    """
    genes = [str(g) for g in ds.gene_names]
    if synthetic:
        symbols = sorted((s for s in vocab if not s.startswith("<")), key=lambda s: vocab[s])
        if len(symbols) < len(genes):
            raise ValueError(f"the vocabulary has {len(symbols)} genes, fewer than {len(genes)}")
        genes = symbols[: len(genes)]
    ids, unmapped = map_gene_symbols(genes, vocab, missing_id=-1)
    keep = ids >= 0
    if not keep.any():
        raise ValueError(
            f"{ds.name}: none of its {len(genes)} genes is in the checkpoint vocabulary "
            f"(e.g. {genes[:3]})"
        )
    expression = ds.expression[:, keep]
    empty = int((expression.sum(axis=1) <= 0).sum())
    if empty:
        raise ValueError(
            f"{ds.name}: {empty} cells express none of the {int(keep.sum())} genes in the "
            f"checkpoint vocabulary ({len(unmapped)} unmapped genes dropped)"
        )
    report = {
        "genes": len(genes),
        "mapped": int(keep.sum()),
        "unmapped": len(unmapped),
        "unmapped_genes": unmapped[:20],
        "unmapped_policy": "dropped from the token set",
    }
    kept_names = np.asarray(genes)[keep]
    ds = dataclasses.replace(ds, expression=expression, gene_names=kept_names)
    return ds, {"gene_vocab_ids": [int(i) for i in ids[keep]], "gene_mapping": report}


def _spatial(task: str, data: str, opts: DataOptions, gene_vocab=None) -> FIMPData:
    if data == SYNTHETIC:
        ds = synthetic_spatial(num_cells=opts.num_nodes, seed=opts.seed, k=opts.knn)
    else:
        ds = load_spatial(data, graph="knn" if opts.graph == "knn" else "file", k=opts.knn)
    vocab_meta = {}
    if gene_vocab is not None:
        ds, vocab_meta = _restrict_to_vocab(ds, gene_vocab, synthetic=data == SYNTHETIC)
    rng = np.random.default_rng(opts.seed)
    gene_ids, values, token_mask = sample_expressed_genes(ds.expression, opts.max_genes, rng=rng)
    width = int(token_mask.sum(1).max())  # L: no all-padding token columns (e.g. 33-gene panels)
    gene_ids, values, token_mask = gene_ids[:, :width], values[:, :width], token_mask[:, :width]
    # Fixed masks for evaluation; training re-draws them every step (jaxfm.train.fimp).
    value_mask = mask_values(token_mask, opts.mask_rate, rng=rng)
    nodes = {
        "gene_ids": gene_ids,
        "values": values,
        "target_values": values,
        "token_mask": token_mask,
        "value_mask": value_mask if task == "expression" else np.zeros_like(token_mask),
    }
    num_classes = None
    if ds.labels is not None:  # also kept for expression: attention maps group by cell type
        nodes["label"] = ds.labels.astype(np.int32)
    if task == "celltype":
        if ds.labels is None:
            raise ValueError(f"{data}: task 'celltype' needs cell-type labels; none were found")
        num_classes = len(ds.label_names)
    senders, receivers = _edges_from_adjacency(ds.adjacency, ds.coords, opts)
    graph = _graph(nodes, senders, receivers, ds.num_cells, name=f"{ds.name} graph")
    stratify = ds.labels if task == "celltype" else None
    train, val, test = split_nodes(ds.num_cells, opts.split, seed=opts.seed, stratify=stratify)
    tokenizer = GeneTokenizerConfig(num_genes=ds.num_genes)
    meta = {
        "dataset": ds.name,
        "gene_names": [str(g) for g in ds.gene_names],
        "label_names": [str(x) for x in ds.label_names] if ds.label_names is not None else None,
        "num_edges": int(graph.senders.shape[0]),
        **vocab_meta,
    }
    return FIMPData(
        task=task,
        tokenizer=tokenizer,
        graphs=[graph],
        splits={"train": train, "val": val, "test": test},
        num_classes=num_classes,
        metadata=meta,
    )


def _load_image_npz(path: str) -> GeoImageDataset:
    from jaxfm.data.graph_formats_io import read_plain_npz
    from jaxfm.data.labels import class_labels

    f = read_plain_npz(path)  # a clear error for a non-.npz file (not numpy's pickle advice)
    missing = {"images", "latlon", "labels"} - set(f)
    if missing:
        raise ValueError(
            f"{path}: image networks need arrays images [N,H,W,C], latlon [N,2], labels [N]; "
            f"missing {sorted(missing)}"
        )
    images, latlon = f["images"], f["latlon"]
    declared = f["class_names"].size if "class_names" in f else None
    labels, num_classes = class_labels(f["labels"], path, declared)  # negative: unlabelled
    n = labels.shape[0]
    if images.ndim != 4 or images.shape[0] != n or latlon.shape != (n, 2):
        raise ValueError(
            f"{path}: images {images.shape} and latlon {latlon.shape} must be [N,H,W,C] and "
            f"[N,2] for N={n} labels"
        )
    if not np.isfinite(latlon).all():
        raise ValueError(f"{path}: latlon contains {int((~np.isfinite(latlon)).sum())} NaN/inf")
    if declared is not None:
        names = tuple(str(x) for x in f["class_names"].ravel())
    else:
        names = tuple(str(i) for i in range(num_classes))
    return GeoImageDataset(
        images=images.astype(np.float32),
        coords=latlon.astype(np.float32),
        labels=labels.astype(np.int32),
        class_names=names,
        adjacency=sp.csr_matrix((n, n), dtype=np.float32),
        name=Path(path).stem,
    )


def _images(data: str, opts: DataOptions) -> FIMPData:
    if data == SYNTHETIC:
        size = {} if opts.image_size is None else {"image_size": opts.image_size}
        ds = synthetic_images(num_nodes=opts.num_nodes, seed=opts.seed, k=opts.knn, **size)
    else:
        ds = _load_image_npz(data)
    if not np.isfinite(ds.images).all():
        raise ValueError(f"{ds.name}: images contain NaN/inf")
    if opts.graph == "none":
        senders, receivers = np.zeros(0, np.int32), np.zeros(0, np.int32)
    elif opts.radius_miles is not None:
        senders, receivers = haversine_radius_graph(ds.coords, opts.radius_miles, unit="mi")
    elif opts.graph == "file" and ds.adjacency.nnz:
        senders, receivers = to_graph_arrays(ds.adjacency)
    else:
        senders, receivers = _great_circle_knn(ds.coords, opts.knn)
    nodes = {"image": ds.images, "label": ds.labels}
    graph = _graph(nodes, senders, receivers, ds.num_nodes, name=f"{ds.name} graph")
    train, val, test = split_nodes(ds.num_nodes, opts.split, seed=opts.seed, stratify=ds.labels)
    h, w, c = ds.images.shape[1:]
    if h != w:
        raise ValueError(f"{ds.name}: images must be square, got {h}x{w}")
    patch = 4 if h % 4 == 0 else 1
    return FIMPData(
        task="image",
        tokenizer=ImageTokenizerConfig(image_size=h, patch_size=patch, channels=c),
        graphs=[graph],
        splits={"train": train, "val": val, "test": test},
        num_classes=ds.num_classes,
        metadata={"dataset": ds.name, "label_names": list(ds.class_names)},
    )


def _great_circle_knn(latlon: np.ndarray, k: int):
    return knn_graph(latlon_to_unit_vectors(latlon), min(k, latlon.shape[0] - 1))


def _a424_path() -> Path:
    """The A424 atlas coordinates shipped with jaxfm (package data, Apache-2.0, from BrainLM)."""
    path = Path(str(importlib.resources.files("jaxfm.data") / "atlases" / "A424_Coordinates.dat"))
    if not path.is_file():
        raise FileNotFoundError(f"the A424 atlas package data is missing ({path}); reinstall jaxfm")
    return path


def _fmri(data: str, opts: DataOptions) -> FIMPData:
    if data == SYNTHETIC:
        coords = read_a424_coordinates(_a424_path())
        signals = synthetic_fmri(
            coords, opts.num_recordings, num_timepoints=opts.num_timepoints, seed=opts.seed
        )
        name = "synthetic_fmri_a424"
    else:
        from jaxfm.data.graph_formats_io import read_plain_npz

        f = read_plain_npz(data)  # a clear error for a non-.npz file
        if "signals" not in f or "coords" not in f:
            raise ValueError(f"{data}: fMRI data needs arrays signals [R, V, T] and coords [V, 3]")
        signals, coords = f["signals"].astype(np.float32), f["coords"].astype(np.float32)
        name = Path(data).stem
        if signals.ndim != 3:
            raise ValueError(f"{data}: signals must be [R, V, T], got shape {signals.shape}")
    r, v, t = signals.shape
    p = opts.fmri_patch_size
    if coords.shape != (v, 3):
        raise ValueError(f"{name}: coords must be [{v}, 3] to match signals {signals.shape}")
    if t % p:
        raise ValueError(f"{name}: timepoints per recording must be a multiple of {p}, got {t}")
    if not np.isfinite(signals).all():
        raise ValueError(f"{name}: signals contain NaN/inf")
    if r < 3:  # one recording each for train, validation and test
        raise ValueError(
            f"{name if data == SYNTHETIC else data}: fMRI data needs at least 3 recordings "
            f"(one each for train, validation and test), got {r}"
        )
    tok = FMRITokenizerConfig(patch_size=p, num_patches=t // p)
    rng = np.random.default_rng(opts.seed)
    if opts.graph == "none":
        senders, receivers = np.zeros(0, np.int32), np.zeros(0, np.int32)
    else:
        senders, receivers = knn_graph(coords, opts.knn)
    graphs = []
    for i in range(r):
        patch_mask = mask_values(np.ones((v, t // p), bool), opts.patch_mask_rate, rng=rng)
        nodes = {
            "signal": signals[i],
            "xyz": np.broadcast_to(coords, (v, 3)).astype(np.float32),
            "patch_mask": patch_mask,
        }
        graphs.append(_graph(nodes, senders, receivers, v, name=f"{name} recording {i}"))
    train, val, test = split_nodes(r, opts.split, seed=opts.seed)
    return FIMPData(
        task="fmri",
        tokenizer=tok,
        graphs=graphs,
        splits={"train": train, "val": val, "test": test},
        metadata={"dataset": name, "num_regions": v},
    )


def prepare_fimp_data(
    task: str, data: str, opts: DataOptions | None = None, *, gene_vocab=None
) -> FIMPData:
    """Loads ``data`` (a file path or ``"synthetic"``) for FIMP ``task``.

    Args:
      task: ``expression`` / ``celltype`` (spatial transcriptomics: ``.h5ad`` or ``.loom``),
        ``image`` (``.npz`` with ``images [N,H,W,C]``, ``latlon [N,2]``, ``labels [N]``), or
        ``fmri`` (``.npz`` with ``signals [R,V,T]``, ``coords [V,3]``).
      data: path, or ``"synthetic"`` for the built-in generators.
      opts: see :class:`DataOptions`.
      gene_vocab: gene symbol -> id of a pretrained checkpoint (scGPT): genes it lacks are
        dropped; ``metadata`` gets ``gene_vocab_ids`` (kept gene -> vocabulary id) and the
        ``gene_mapping`` counts.

    Raises:
      FileNotFoundError / ValueError: naming the file and what was expected.
    """
    opts = opts or DataOptions()
    if data != SYNTHETIC and not Path(data).exists():
        raise FileNotFoundError(f"--data {data}: no such file (or pass 'synthetic')")
    if task in ("expression", "celltype"):
        return _spatial(task, data, opts, gene_vocab)
    if task == "image":
        return _images(data, opts)
    if task == "fmri":
        return _fmri(data, opts)
    raise ValueError(f"unknown FIMP task {task!r}; expected expression, celltype, image or fmri")
