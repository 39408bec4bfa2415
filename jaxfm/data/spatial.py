"""Spatial transcriptomics datasets for FIMP: loading, normalisation, gene-token sampling, splits.

A cell is a node; its tokens are a sample of its *expressed* genes (FIMP, App. A: "We sample
nonzero expressed genes in each cell ... and mask out 80% of the gene expression values").
Expression is preprocessed the standard scRNA-seq way the paper follows: per-cell total-count
normalisation to 1e4, then ``log1p``. Edges come from the file's neighbour matrix (``obsp``) when
there is one, else a k-nearest-neighbour graph over the cell coordinates.

Graph orientation everywhere in this module: ``adjacency[i, j] != 0`` means *j is a neighbour of i*,
so ``j`` sends a message to ``i`` (row = receiving cell, column = sending neighbour).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp

from jaxfm.data.anndata import AnnDataLike, MissingKeyError, read_anndata_like
from jaxfm.graph.neighbors import knn_graph

__all__ = [
    "SpatialDataset",
    "load_spatial",
    "normalize_total_log1p",
    "to_graph_arrays",
]

# Auto-detected metadata, first match wins (common AnnData / loom spellings).
_CELL_TYPE_KEYS = ("cell_type", "celltype", "cell_types", "CellType", "ClusterName", "cluster")
_COORDS_OBSM_KEYS = ("spatial", "X_spatial", "spatial_coords")
_COORDS_OBS_KEYS = (("X", "Y"), ("x", "y"), ("x_centroid", "y_centroid"), ("sdimx", "sdimy"))


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class SpatialDataset:
    """One spatial transcriptomics section: cells with expression, positions, types and a graph.

    Shapes:
        expression: ``[N, G]`` float32, normalised (``log1p`` of counts per 1e4 unless loaded with
            ``normalize=False``). Dense: spatial panels are tens to a few thousand genes.
        gene_names: ``[G]`` str.
        coords: ``[N, S]`` float32, S = 2 (or 3), in the file's units.
        labels: ``[N]`` int32 in ``[0, len(label_names))``, or ``None``.
        adjacency: ``[N, N]`` CSR, ``adjacency[i, j] != 0`` iff j -> i is an edge; or ``None``.
        cell_names: ``[N]`` str or ``None``.

    Raises:
        ValueError: from ``__post_init__`` when shapes or label ranges disagree.
    """

    expression: np.ndarray
    gene_names: np.ndarray
    coords: np.ndarray
    labels: np.ndarray | None = None
    label_names: tuple[str, ...] | None = None
    adjacency: sp.csr_matrix | None = None
    cell_names: np.ndarray | None = None
    name: str = "spatial"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # canonical dtypes on a frozen class
        set_("expression", np.asarray(self.expression, np.float32))
        set_("gene_names", np.asarray(self.gene_names).astype(str))
        set_("coords", np.asarray(self.coords, np.float32))
        if self.expression.ndim != 2:
            raise ValueError(f"{self.name}: expression must be [N, G], got {self.expression.shape}")
        n, g = self.expression.shape
        if self.gene_names.shape != (g,):
            raise ValueError(f"{self.name}: gene_names {self.gene_names.shape} != [{g}] genes")
        if self.coords.ndim != 2 or self.coords.shape[0] != n or self.coords.shape[1] not in (2, 3):
            raise ValueError(f"{self.name}: coords must be [{n}, 2 or 3], got {self.coords.shape}")
        if (self.labels is None) != (self.label_names is None):
            raise ValueError(f"{self.name}: labels and label_names must be given together")
        if self.labels is not None:
            set_("labels", np.asarray(self.labels, np.int32))
            set_("label_names", tuple(str(x) for x in self.label_names))
            if self.labels.shape != (n,):
                raise ValueError(f"{self.name}: labels {self.labels.shape} != [{n}] cells")
            if n and (self.labels.min() < 0 or self.labels.max() >= len(self.label_names)):
                raise ValueError(
                    f"{self.name}: labels must lie in [0, {len(self.label_names)}), got "
                    f"[{self.labels.min()}, {self.labels.max()}]"
                )
        if self.adjacency is not None:
            set_("adjacency", sp.csr_matrix(self.adjacency))
            if self.adjacency.shape != (n, n):
                raise ValueError(f"{self.name}: adjacency {self.adjacency.shape} != [{n}, {n}]")
        if self.cell_names is not None:
            set_("cell_names", np.asarray(self.cell_names).astype(str))
            if self.cell_names.shape != (n,):
                raise ValueError(f"{self.name}: cell_names {self.cell_names.shape} != [{n}]")

    @property
    def num_cells(self) -> int:
        return self.expression.shape[0]

    @property
    def num_genes(self) -> int:
        return self.expression.shape[1]

    @property
    def num_classes(self) -> int:
        return 0 if self.label_names is None else len(self.label_names)

    def subset(self, indices: np.ndarray) -> SpatialDataset:
        """The induced sub-dataset on ``indices`` (edges to cells outside it are dropped)."""
        idx = np.asarray(indices)
        return dataclasses.replace(
            self,
            expression=self.expression[idx],
            coords=self.coords[idx],
            labels=None if self.labels is None else self.labels[idx],
            adjacency=None if self.adjacency is None else self.adjacency[idx][:, idx],
            cell_names=None if self.cell_names is None else self.cell_names[idx],
        )


# --------------------------------------------------------------------------------------------------
# Graph


def _knn_adjacency(coords: np.ndarray, k: int) -> sp.csr_matrix:
    """Directed kNN: row i lists i's k nearest other cells (each cell receives exactly k messages).

    ``k`` is capped at N - 1 (a graph with a single cell has no edges).
    """
    n = coords.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return sp.csr_matrix((n, n), dtype=np.float32)
    senders, receivers = knn_graph(coords, k)  # neighbour -> cell
    ones = np.ones(senders.shape[0], np.float32)
    return sp.csr_matrix((ones, (receivers, senders)), shape=(n, n))


def to_graph_arrays(
    data: SpatialDataset | sp.spmatrix, *, self_loops: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Edge lists for message passing, sorted by receiver then sender.

    Args:
        data: a ``SpatialDataset`` (its ``adjacency``) or an ``[N, N]`` sparse adjacency.
        self_loops: add the edge i -> i for every cell that lacks one (FIMP treats self-loops as
            ordinary edges).

    Returns:
        ``(senders, receivers)``, each ``[E]`` int32; edge e goes neighbour ``senders[e]`` -> cell
        ``receivers[e]`` (``adjacency[receivers[e], senders[e]] != 0``).

    Raises:
        ValueError: the dataset has no adjacency.
    """
    adj = data.adjacency if isinstance(data, SpatialDataset) else data
    if adj is None:
        raise ValueError(f"{data.name}: dataset has no adjacency; load it with graph='file'/'knn'")
    adj = sp.csr_matrix(adj, copy=True)
    if self_loops:
        missing = (adj.diagonal() == 0).astype(adj.dtype)
        adj = sp.csr_matrix(adj + sp.diags(missing, format="csr"))
    adj.eliminate_zeros()
    adj.sort_indices()
    coo = adj.tocoo()
    return coo.col.astype(np.int32), coo.row.astype(np.int32)


# --------------------------------------------------------------------------------------------------
# Loading


def normalize_total_log1p(counts: np.ndarray | sp.spmatrix, target_sum: float = 1e4):
    """``log1p(counts / total_per_cell * target_sum)``, the standard scRNA-seq preprocessing.

    Shapes:
        counts: ``[N, G]`` dense or sparse, non-negative, every row with a positive total.
        returns: same shape and kind (CSR stays CSR), float32.

    Raises:
        ValueError: a cell has zero total counts.
    """
    totals = np.asarray(counts.sum(axis=1), np.float64).ravel()
    if np.any(totals <= 0):
        raise ValueError(f"cell {int(np.argmax(totals <= 0))} has zero total counts")
    scale = target_sum / totals
    if sp.issparse(counts):
        out = sp.csr_matrix(counts, dtype=np.float64, copy=True)
        out.data *= np.repeat(scale, np.diff(out.indptr))
        np.log1p(out.data, out=out.data)
        return out.astype(np.float32)
    return np.log1p(np.asarray(counts, np.float64) * scale[:, None]).astype(np.float32)


def _find_coords(ad: AnnDataLike, coords_key: str | Sequence[str] | None) -> np.ndarray:
    if isinstance(coords_key, str):
        coords = ad.obsm_entry(coords_key)
    elif coords_key is not None:
        coords = np.stack([ad.obs_column(c) for c in coords_key], axis=1)
    else:
        key = next((k for k in _COORDS_OBSM_KEYS if k in ad.obsm), None)
        pair = next((p for p in _COORDS_OBS_KEYS if all(c in ad.obs for c in p)), None)
        if key is not None:
            coords = ad.obsm[key]
        elif pair is not None:
            coords = np.stack([ad.obs[c] for c in pair], axis=1)
        else:
            raise MissingKeyError(
                f"{ad.path}: no spatial coordinates found (looked for obsm {_COORDS_OBSM_KEYS} and "
                f"obs column pairs {_COORDS_OBS_KEYS}); obsm keys: {list(ad.obsm)}, obs columns: "
                f"{list(ad.obs)}; pass coords_key="
            )
    coords = np.asarray(coords.toarray() if sp.issparse(coords) else coords, np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"{ad.path}: coordinates must be [N, 2+], got {coords.shape}")
    return coords[:, :3] if coords.shape[1] == 3 else coords[:, :2]


def _label_strings(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (labels as str, missing mask) for str / numeric / masked columns."""
    missing = (
        np.ma.getmaskarray(values) if np.ma.isMaskedArray(values) else np.zeros(len(values), bool)
    )
    values = np.ma.getdata(values)
    if values.dtype.kind == "f":
        missing = missing | np.isnan(values)
        values = np.where(missing, 0, values)
        if np.all(values == np.round(values)):
            values = values.astype(np.int64)
    strings = values.astype(str)
    if values.dtype.kind == "U":
        missing = missing | (strings == "")
    return strings, missing


def _check_counts(
    X: np.ndarray | sp.csr_matrix, rows: np.ndarray, names: np.ndarray, path: str, normalize: bool
) -> None:
    """Checks the kept cells' values; ``rows`` / ``names`` are the file row and name of each."""
    data = X.data if sp.issparse(X) else X
    bad = ~np.isfinite(data)
    if bad.any():
        i = (
            int(np.searchsorted(X.indptr, np.argmax(bad), side="right") - 1)
            if sp.issparse(X)
            else int(np.argmax(bad.any(axis=1)))
        )
        raise ValueError(
            f"{path}: cell {str(names[i])!r} (row {rows[i]}) has NaN/inf values "
            f"({int(bad.sum())} non-finite entries in all)"
        )
    if normalize:
        if data.size and data.min() < 0:
            raise ValueError(
                f"{path}: negative values found (min {data.min()}); normalize=True expects raw "
                "counts: pass layer='counts' or normalize=False"
            )
        if data.size and not np.all(data == np.round(data)):
            warnings.warn(
                f"{path}: expression values are not integer counts; they look already normalised "
                "(normalize=True normalises again); pass normalize=False or a counts layer",
                stacklevel=3,
            )


def load_spatial(
    path: str | os.PathLike,
    *,
    layer: str | None = None,
    cell_type_key: str | None = None,
    coords_key: str | Sequence[str] | None = None,
    graph: Literal["file", "knn", "none"] = "file",
    graph_key: str = "spatial_connectivities",
    k: int = 6,
    normalize: bool = True,
    target_sum: float = 1e4,
    drop_labels: Sequence[str] = ("Excluded",),
    valid_key: str | None = "Valid",
    drop_empty_cells: bool = False,
    name: str | None = None,
) -> SpatialDataset:
    """Loads a spatial transcriptomics ``.h5ad`` or ``.loom`` file into a ``SpatialDataset``.

    Cells are filtered in this order: ``obs[valid_key]`` false (when the column exists; osmFISH's
    ``Valid``), cell type in ``drop_labels`` or missing, then (only with ``drop_empty_cells``) cells
    without any nonzero value. The file's neighbour matrix is restricted to the kept cells.

    Args:
        path: ``.h5ad`` or ``.loom`` file (told apart by content).
        layer: read counts from this layer instead of ``X`` / ``matrix``.
        cell_type_key: ``obs`` column with cell types; ``None`` tries ``cell_type``, ``celltype``,
            ``cell_types``, ``CellType``, ``ClusterName``, ``cluster`` and leaves ``labels=None``
            when none exists. A key that is given but absent is an error.
        coords_key: an ``obsm`` key (``str``) or 2-3 ``obs`` column names; ``None`` tries obsm
            ``spatial``, ``X_spatial``, ``spatial_coords`` then obs ``X``/``Y``, ``x``/``y``, ...
        graph: ``"file"``: ``obsp[graph_key]`` (loom: ``col_graphs``) when present, else kNN;
            ``"knn"``: always kNN over the coordinates; ``"none"``: no adjacency.
        graph_key: the ``obsp`` key of the neighbour matrix.
        k: neighbours per cell for the kNN graph (directed: cell i receives from its k nearest).
        normalize: total-count normalise to ``target_sum`` then ``log1p``; expects raw counts.
        target_sum: counts per cell after normalisation.
        drop_labels: cell types whose cells are removed.
        valid_key: boolean ``obs`` column marking usable cells (ignored when absent).
        drop_empty_cells: drop cells with no counts (with a warning giving the number) instead of
            raising.
        name: dataset name; defaults to the file stem.

    Returns:
        A ``SpatialDataset`` (labels ordered like the file's categories, else sorted).

    Raises:
        FileNotFoundError, FileFormatError: unreadable file (see ``read_h5ad`` / ``read_loom``).
        MissingKeyError: a given layer / cell-type column / coordinates key is absent.
        ValueError: NaN/inf values, negative counts with ``normalize``, or an empty cell (named,
            with the file) when ``drop_empty_cells`` is false.

    Example:
        >>> path = "osmFISH_SScortex_mouse_all_cells.loom"
        >>> ds = load_spatial(path, graph="knn", k=6)  # doctest: +SKIP
        >>> ds.expression.shape, ds.num_classes  # doctest: +SKIP
        ((4839, 33), 31)
    """
    if graph not in ("file", "knn", "none"):
        raise ValueError(f"graph must be 'file', 'knn' or 'none', got {graph!r}")
    ad = read_anndata_like(path, layer=layer)
    where = str(path)
    n = ad.n_obs
    keep = np.ones(n, bool)
    if valid_key is not None and valid_key in ad.obs:
        keep &= np.ma.filled(ad.obs[valid_key], 0).astype(bool)

    label_strings = None
    key = cell_type_key or next((c for c in _CELL_TYPE_KEYS if c in ad.obs), None)
    if key is not None:
        label_strings, missing = _label_strings(ad.obs_column(key))
        keep &= ~missing & ~np.isin(label_strings, list(drop_labels))

    coords = _find_coords(ad, coords_key)
    if not np.isfinite(coords[keep]).all():
        row = int(np.flatnonzero(keep & ~np.isfinite(coords).all(axis=1))[0])
        raise ValueError(
            f"{where}: cell {str(ad.obs_names[row])!r} (row {row}) has non-finite coordinates"
        )

    X = ad.X.astype(np.float64) if sp.issparse(ad.X) else np.asarray(ad.X, np.float64)
    _check_counts(X[keep], np.flatnonzero(keep), ad.obs_names[keep], where, normalize)
    nnz = (X != 0).sum(axis=1)
    empty = np.asarray(nnz).ravel() == 0
    if np.any(empty & keep):
        bad = np.flatnonzero(empty & keep)
        if not drop_empty_cells:
            raise ValueError(
                f"{where}: cell {str(ad.obs_names[bad[0]])!r} (row {bad[0]}) has zero total counts "
                f"({len(bad)} such cells after filtering); pass drop_empty_cells=True to drop them"
            )
        warnings.warn(f"{where}: dropped {len(bad)} cells with zero total counts", stacklevel=2)
        keep &= ~empty

    idx = np.flatnonzero(keep)
    X = X[idx]
    if normalize:
        X = normalize_total_log1p(X, target_sum)
    expression = X.toarray() if sp.issparse(X) else X

    labels = label_names = None
    if label_strings is not None:
        kept = label_strings[idx]
        present = set(kept.tolist())
        cats = ad.obs_categories.get(key)
        if cats is not None:
            order = [str(c) for c in cats if str(c) in present]  # the file's category order
        else:  # numeric ids sort as numbers ("2" before "10"), names alphabetically
            numeric = all(c.lstrip("-").isdigit() for c in present)
            order = sorted(present, key=int if numeric else None)
        lookup = {c: i for i, c in enumerate(order)}
        labels = np.array([lookup[c] for c in kept], np.int32)
        label_names = tuple(order)

    coords32 = coords[idx].astype(np.float32)
    adjacency = None
    if graph == "file" and graph_key in ad.obsp:
        adjacency = sp.csr_matrix(ad.obsp[graph_key])[idx][:, idx]
        adjacency.eliminate_zeros()
    elif graph in ("file", "knn"):
        adjacency = _knn_adjacency(coords32, k)

    return SpatialDataset(
        expression=expression,
        gene_names=ad.var_names,
        coords=coords32,
        labels=labels,
        label_names=label_names,
        adjacency=adjacency,
        cell_names=ad.obs_names[idx],
        name=name or Path(path).stem,
    )
