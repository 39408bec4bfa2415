"""Readers for AnnData (``.h5ad``) and loom files, written against their on-disk HDF5 layouts.

Why not ``anndata``/``loompy``: both pull in pandas and a long dependency tail for what is, on disk,
a handful of HDF5 datasets. FIMP needs the count matrix, the cell metadata, the spatial coordinates
and (optionally) the neighbour matrix; this module reads exactly those into numpy / scipy objects.

Supported AnnData layouts (``encoding-type`` attributes, anndata >= 0.7, plus the older ones still
found in the wild):

- ``X`` and ``layers/<name>``: dense datasets, or ``csr_matrix`` / ``csc_matrix`` groups
  (``data``, ``indices``, ``indptr`` and a ``shape`` attribute); the pre-0.7 ``h5sparse_format`` /
  ``h5sparse_shape`` attributes are accepted too. Sparse matrices are returned as CSR.
- ``obs`` / ``var``: ``dataframe`` groups (index dataset named by the ``_index`` attribute, columns
  in ``column-order``); columns may be numeric or string arrays, ``categorical`` groups (``codes`` +
  ``categories``), the older layout with integer codes in the column and the categories in
  ``__categories/<column>``, ``nullable-integer`` / ``nullable-boolean`` / ``nullable-string-array``
  groups (returned as ``numpy.ma.MaskedArray``), and the anndata < 0.7 compound-dataset dataframe.
- ``obsm`` / ``varm``: dense arrays or sparse matrices (dataframes come back as column dicts).
- ``obsp``: sparse (or dense) ``[n_obs, n_obs]`` matrices, e.g. ``spatial_connectivities``.
- ``uns`` and ``raw`` are not read.

Categorical columns are decoded to their values; a missing value (code ``-1``) becomes ``""`` for
string categories and ``NaN`` for numeric ones. The category order is kept in
``AnnDataLike.obs_categories``.
"""

from __future__ import annotations

import dataclasses
import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import scipy.sparse as sp

__all__ = [
    "AnnDataLike",
    "FileFormatError",
    "MissingKeyError",
    "detect_format",
    "read_anndata_like",
    "read_h5ad",
    "read_loom",
]

Matrix = np.ndarray | sp.csr_matrix
PathLike = str | os.PathLike

# Columns naming cells / genes in loom files (loompy's convention, then anndata's `write_loom`).
_LOOM_OBS_NAME_KEYS = ("CellID", "obs_names", "cell_names")
_LOOM_VAR_NAME_KEYS = ("Gene", "var_names", "gene_names", "Accession")


class FileFormatError(ValueError):
    """A file is not HDF5, is truncated, or does not follow the layout it claims to have."""


class MissingKeyError(KeyError):
    """A named layer / column / matrix is absent; the message lists the available ones."""

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message.
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class AnnDataLike:
    """The parts of an AnnData / loom file that jaxfm uses, as numpy and scipy objects.

    Shapes:
        X: ``[n_obs, n_vars]`` (cells x genes), ``numpy.ndarray`` or ``scipy.sparse.csr_matrix``.
        obs: column -> ``[n_obs]`` (or ``[n_obs, ...]``) array. var: column -> ``[n_vars]`` array.
        obs_names: ``[n_obs]`` str. var_names: ``[n_vars]`` str.
        obsm: key -> ``[n_obs, ...]``. varm: key -> ``[n_vars, ...]``.
        obsp: key -> ``[n_obs, n_obs]`` CSR (or dense) matrix.
        layers: name -> ``[n_obs, n_vars]`` like ``X``.

    Attributes:
        obs_categories: category order of each categorical ``obs`` column.
        path: the file this was read from (used in error messages).
        format: ``"h5ad"`` or ``"loom"``.
        layer: the layer ``X`` was taken from (``None`` for the main matrix).

    Raises:
        FileFormatError: from ``__post_init__`` when the parts disagree in shape.
    """

    X: Matrix
    obs: dict[str, np.ndarray]
    var: dict[str, np.ndarray]
    obs_names: np.ndarray
    var_names: np.ndarray
    obsm: dict[str, Any] = dataclasses.field(default_factory=dict)
    varm: dict[str, Any] = dataclasses.field(default_factory=dict)
    obsp: dict[str, Matrix] = dataclasses.field(default_factory=dict)
    layers: dict[str, Matrix] = dataclasses.field(default_factory=dict)
    obs_categories: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    path: str = ""
    format: Literal["h5ad", "loom"] = "h5ad"
    layer: str | None = None

    def __post_init__(self) -> None:
        n_obs, n_vars = len(self.obs_names), len(self.var_names)
        where = self.path or "<in memory>"

        def check(name: str, shape: tuple[int, ...], want: tuple[int | None, ...]) -> None:
            ok = len(shape) >= len(want) and all(
                w is None or s == w for s, w in zip(shape, want, strict=False)
            )
            if not ok:
                want_s = ", ".join("*" if w is None else str(w) for w in want)
                raise FileFormatError(
                    f"{where}: {name} has shape {tuple(shape)}, expected [{want_s}] "
                    f"(n_obs={n_obs} from the obs index, n_vars={n_vars} from the var index)"
                )

        if self.X.ndim != 2:
            raise FileFormatError(f"{where}: X must be 2-D, got shape {self.X.shape}")
        check("X", self.X.shape, (n_obs, n_vars))
        for key, value in self.layers.items():
            check(f"layers/{key}", value.shape, (n_obs, n_vars))
        for key, value in self.obs.items():
            check(f"obs/{key}", np.shape(value), (n_obs,))
        for key, value in self.var.items():
            check(f"var/{key}", np.shape(value), (n_vars,))
        for key, value in self.obsm.items():
            check(f"obsm/{key}", _elem_shape(value), (n_obs,))
        for key, value in self.varm.items():
            check(f"varm/{key}", _elem_shape(value), (n_vars,))
        for key, value in self.obsp.items():
            check(f"obsp/{key}", value.shape, (n_obs, n_obs))

    @property
    def n_obs(self) -> int:
        return len(self.obs_names)

    @property
    def n_vars(self) -> int:
        return len(self.var_names)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_obs, self.n_vars)

    def obs_column(self, key: str) -> np.ndarray:
        """Returns ``obs[key]``; raises ``MissingKeyError`` listing the available columns."""
        return _lookup(self.obs, key, f"{self.path}: obs column")

    def obsm_entry(self, key: str) -> Any:
        """Returns ``obsm[key]``; raises ``MissingKeyError`` listing the available keys."""
        return _lookup(self.obsm, key, f"{self.path}: obsm key")

    def obsp_entry(self, key: str) -> Matrix:
        """Returns ``obsp[key]``; raises ``MissingKeyError`` listing the available keys."""
        return _lookup(self.obsp, key, f"{self.path}: obsp key")


def _lookup(table: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in table:
        available = ", ".join(repr(k) for k in table) or "none"
        raise MissingKeyError(f"{what} {key!r} not found; available: {available}")
    return table[key]


def _elem_shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, dict):  # a dataframe in obsm: every column has n_obs rows
        lengths = {len(v) for v in value.values()}
        return (lengths.pop(),) if len(lengths) == 1 else ()
    return tuple(np.shape(value)) if not sp.issparse(value) else value.shape


# --------------------------------------------------------------------------------------------------
# Opening files


def _open(path: PathLike) -> h5py.File:
    """Opens an HDF5 file read-only with errors that name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise FileFormatError(f"{path}: is a directory, expected an HDF5 file (.h5ad / .loom)")
    if not h5py.is_hdf5(path):
        with open(path, "rb") as fh:
            head = fh.read(8)
        raise FileFormatError(
            f"{path}: not an HDF5 file (starts with {head!r}); expected an AnnData .h5ad or a "
            ".loom file (both are HDF5)"
        )
    try:
        return h5py.File(path, "r")
    except OSError as err:  # truncated or corrupt files pass is_hdf5 and fail here
        raise FileFormatError(
            f"{path}: cannot be opened as HDF5 (truncated or corrupt?): {err}"
        ) from err


def detect_format(path: PathLike) -> Literal["h5ad", "loom"]:
    """Tells an AnnData file from a loom file by content (both are HDF5).

    A loom file has a ``matrix`` dataset and ``col_attrs``; an AnnData file has ``obs`` and ``var``.

    Raises:
        FileNotFoundError, FileFormatError: missing / non-HDF5 file, or neither layout.
    """
    with _open(path) as f:
        return _detect(f, path)


def _detect(f: h5py.File, path: PathLike) -> Literal["h5ad", "loom"]:
    if isinstance(f.get("matrix"), h5py.Dataset) and "col_attrs" in f:
        return "loom"
    if "obs" in f and "var" in f:
        return "h5ad"
    keys = ", ".join(f.keys()) or "none"
    raise FileFormatError(
        f"{path}: HDF5 file is neither AnnData (needs 'obs' and 'var') nor loom (needs 'matrix' "
        f"and 'col_attrs'); top-level keys: {keys}"
    )


def read_anndata_like(path: PathLike, *, layer: str | None = None) -> AnnDataLike:
    """Reads an ``.h5ad`` or ``.loom`` file, whichever it is (see ``detect_format``)."""
    fmt = detect_format(path)
    return read_loom(path, layer=layer) if fmt == "loom" else read_h5ad(path, layer=layer)


# --------------------------------------------------------------------------------------------------
# Element decoding (shared by both formats)


def _attr_str(obj: h5py.HLObject, name: str) -> str | None:
    value = obj.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8")
    return str(value)


def _attr_strings(obj: h5py.HLObject, name: str) -> list[str]:
    value = obj.attrs.get(name)
    if value is None:
        return []
    arr = np.atleast_1d(np.asarray(value))
    if arr.size == 0:  # anndata writes an empty float array for "no columns"
        return []
    return [v.decode("utf-8") if isinstance(v, bytes | np.bytes_) else str(v) for v in arr.ravel()]


def _decode_strings(arr: np.ndarray, *, unescape: bool = False) -> np.ndarray:
    """bytes / object arrays -> numpy unicode arrays (loom strings are XML-escaped ASCII)."""
    out = [
        (x.decode("utf-8", "replace") if isinstance(x, bytes | np.bytes_) else str(x))
        for x in arr.ravel()
    ]
    if unescape:
        out = [html.unescape(x) if "&" in x else x for x in out]
    return np.array(out, dtype=str).reshape(arr.shape)


def _read_array(ds: h5py.Dataset, *, unescape: bool = False) -> np.ndarray:
    arr = ds[()]
    if not isinstance(arr, np.ndarray):  # scalar dataset
        arr = np.asarray(arr)
    if arr.dtype.kind in "SO":
        return _decode_strings(arr, unescape=unescape)
    return arr


def _read_sparse(g: h5py.Group, where: str, path: PathLike) -> sp.csr_matrix:
    fmt = _attr_str(g, "encoding-type") or _attr_str(g, "h5sparse_format")
    fmt = {"csr": "csr_matrix", "csc": "csc_matrix"}.get(fmt or "", fmt)
    shape_attr = g.attrs.get("shape", g.attrs.get("h5sparse_shape"))
    missing = [k for k in ("data", "indices", "indptr") if k not in g]
    if fmt not in ("csr_matrix", "csc_matrix") or shape_attr is None or missing:
        raise FileFormatError(
            f"{path}: {where} is not a valid sparse matrix (encoding {fmt!r}, shape attr "
            f"{shape_attr!r}, missing datasets {missing})"
        )
    shape = tuple(int(s) for s in np.asarray(shape_attr).ravel())
    data, indices, indptr = g["data"][()], g["indices"][()], g["indptr"][()]
    major, minor = (shape[0], shape[1]) if fmt == "csr_matrix" else (shape[1], shape[0])
    problems = []
    if len(shape) != 2:
        problems.append(f"shape attribute {shape} is not 2-D")
    elif len(indptr) != major + 1:
        problems.append(f"indptr has {len(indptr)} entries, expected {major + 1}")
    elif len(data) != len(indices) or (len(indptr) and indptr[-1] != len(data)):
        problems.append(f"data/indices/indptr[-1] lengths {len(data)}/{len(indices)}/{indptr[-1]}")
    elif len(indices) and (indices.min() < 0 or indices.max() >= minor):
        problems.append(f"indices outside [0, {minor})")
    elif len(indptr) and np.any(np.diff(indptr) < 0):
        problems.append("indptr is not non-decreasing")
    if problems:
        raise FileFormatError(f"{path}: {where} ({fmt}, shape {shape}): {problems[0]}")
    cls = sp.csr_matrix if fmt == "csr_matrix" else sp.csc_matrix
    return cls((data, indices, indptr), shape=shape).tocsr()


def _read_matrix(obj: h5py.HLObject, where: str, path: PathLike) -> Matrix:
    if isinstance(obj, h5py.Dataset):
        return _read_array(obj)
    return _read_sparse(obj, where, path)


def _decode_categorical(codes: np.ndarray, categories: np.ndarray, where: str, path: PathLike):
    codes = np.asarray(codes).astype(np.int64)
    if codes.size and codes.max(initial=-1) >= len(categories):
        raise FileFormatError(
            f"{path}: {where} has category code {codes.max()} but only {len(categories)} categories"
        )
    missing = codes < 0
    if not len(categories):  # only possible when every value is missing
        return np.full(codes.shape, "", dtype=str)
    values = categories[np.where(missing, 0, codes)]
    if missing.any():
        if values.dtype.kind == "U":
            values = np.where(missing, "", values)
        else:
            values = values.astype(np.float64)
            values[missing] = np.nan
    return values


def _read_column(
    g: h5py.Group, name: str, legacy_categories: h5py.Group | None, where: str, path: PathLike
) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns (values, categories or None) for one dataframe column."""
    obj = g[name]
    col_where = f"{where}/{name}"
    if isinstance(obj, h5py.Dataset):
        values = _read_array(obj)
        if legacy_categories is not None and name in legacy_categories:
            categories = _read_array(legacy_categories[name])
            return _decode_categorical(values, categories, col_where, path), categories
        return values, None
    enc = _attr_str(obj, "encoding-type")
    if enc == "categorical":
        categories = _read_array(obj["categories"])
        return _decode_categorical(obj["codes"][()], categories, col_where, path), categories
    if enc in ("nullable-integer", "nullable-boolean", "nullable-string-array"):
        values = _read_array(obj["values"])
        return np.ma.masked_array(values, mask=obj["mask"][()].astype(bool)), None
    raise FileFormatError(f"{path}: {col_where}: unsupported column encoding {enc!r}")


def _read_dataframe(
    obj: h5py.HLObject, where: str, path: PathLike, *, index_fallback: int | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Reads an AnnData dataframe -> (columns, index, categories of categorical columns)."""
    if isinstance(obj, h5py.Dataset):  # anndata < 0.7: one compound dataset with an 'index' field
        arr = obj[()]
        names = arr.dtype.names or ()
        columns = {
            n: (_decode_strings(arr[n]) if arr[n].dtype.kind in "SO" else np.asarray(arr[n]))
            for n in names
        }
        index = columns.pop("index", None)
        if index is None:
            raise FileFormatError(
                f"{path}: {where} (legacy compound dataframe) has no 'index' field"
            )
        return columns, index, {}
    index_key = _attr_str(obj, "_index") or ("_index" if "_index" in obj else None)
    if index_key is None or index_key not in obj:
        raise FileFormatError(
            f"{path}: {where} has no index (attribute '_index' -> {index_key!r}); keys: "
            f"{', '.join(obj.keys()) or 'none'}"
        )
    index = _read_array(obj[index_key])
    legacy = obj.get("__categories")
    order = _attr_strings(obj, "column-order")
    order += [k for k in obj.keys() if k not in order and k not in (index_key, "__categories")]
    columns: dict[str, np.ndarray] = {}
    categories: dict[str, np.ndarray] = {}
    for name in order:
        if name not in obj:
            raise FileFormatError(f"{path}: {where}: column {name!r} in column-order is missing")
        values, cats = _read_column(obj, name, legacy, where, path)
        columns[name] = values
        if cats is not None:
            categories[name] = cats
    return columns, index, categories


def _read_mapping(g: h5py.Group | None, where: str, path: PathLike) -> dict[str, Any]:
    """obsm / varm / obsp / layers: name -> dense array, CSR matrix, or dataframe dict."""
    out: dict[str, Any] = {}
    if g is None:
        return out
    if isinstance(g, h5py.Dataset):  # anndata < 0.7 stored obsm as one compound dataset
        arr = g[()]
        return {n: np.asarray(arr[n]) for n in (arr.dtype.names or ())}
    for key, obj in g.items():
        sub = f"{where}/{key}"
        if isinstance(obj, h5py.Group) and _attr_str(obj, "encoding-type") == "dataframe":
            out[key] = _read_dataframe(obj, sub, path)[0]
        else:
            out[key] = _read_matrix(obj, sub, path)
    return out


def _select_layer(
    main: Matrix | None, layers: dict[str, Matrix], layer: str | None, path: PathLike, what: str
) -> Matrix:
    if layer is None:
        if main is None:
            raise FileFormatError(
                f"{path}: has no {what}; pass layer= one of: {', '.join(layers) or 'none'}"
            )
        return main
    return _lookup(layers, layer, f"{path}: layer")


# --------------------------------------------------------------------------------------------------
# h5ad


def read_h5ad(path: PathLike, *, layer: str | None = None) -> AnnDataLike:
    """Reads an AnnData ``.h5ad`` file into an ``AnnDataLike``.

    Args:
        path: the ``.h5ad`` file.
        layer: take ``X`` from ``layers/<layer>`` instead of the main ``X`` (e.g. ``"counts"``).

    Returns:
        ``AnnDataLike`` with ``X`` as a dense array or CSR matrix (CSC on disk is converted).

    Raises:
        FileNotFoundError: the file does not exist.
        FileFormatError: not HDF5, truncated, not AnnData, or inconsistent shapes.
        MissingKeyError: ``layer`` is not in the file (the message lists the available layers).

    Example:
        >>> ad = read_h5ad("cells.h5ad")  # doctest: +SKIP
        >>> ad.X.shape, list(ad.obsm)  # doctest: +SKIP
        ((12, 7), ['X_spatial', 'spatial'])
    """
    with _open(path) as f:
        if _detect(f, path) != "h5ad":
            raise FileFormatError(f"{path}: is a loom file, not AnnData; use read_loom")
        try:
            obs, obs_names, obs_categories = _read_dataframe(f["obs"], "obs", path)
            var, var_names, _ = _read_dataframe(f["var"], "var", path)
            layers = _read_mapping(f.get("layers"), "layers", path)
            main = _read_matrix(f["X"], "X", path) if "X" in f else None
            X = _select_layer(main, layers, layer, path, "X")
            obsm = _read_mapping(f.get("obsm"), "obsm", path)
            varm = _read_mapping(f.get("varm"), "varm", path)
            obsp = _read_mapping(f.get("obsp"), "obsp", path)
        except OSError as err:  # truncated data blocks surface only when read
            raise FileFormatError(f"{path}: read failed (truncated or corrupt?): {err}") from err
    return AnnDataLike(
        X=X,
        obs=obs,
        var=var,
        obs_names=obs_names,
        var_names=var_names,
        obsm=obsm,
        varm=varm,
        obsp=obsp,
        layers=layers,
        obs_categories=obs_categories,
        path=str(path),
        format="h5ad",
        layer=layer,
    )


# --------------------------------------------------------------------------------------------------
# loom


def _read_loom_attrs(
    g: h5py.Group | None, n: int, where: str, path: PathLike
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """1-D attributes -> columns; multi-dimensional ``[n, ...]`` ones -> the ``*m`` mapping."""
    columns: dict[str, np.ndarray] = {}
    multi: dict[str, np.ndarray] = {}
    if g is None:
        return columns, multi
    for key, ds in g.items():
        if not isinstance(ds, h5py.Dataset):
            continue
        arr = _read_array(ds, unescape=True)
        if arr.ndim == 0 or arr.shape[0] != n:
            raise FileFormatError(
                f"{path}: {where}/{key} has shape {arr.shape}, expected first dimension {n}"
            )
        (columns if arr.ndim == 1 else multi)[key] = arr
    return columns, multi


def _read_loom_graphs(f: h5py.File, n: int, path: PathLike) -> dict[str, sp.csr_matrix]:
    """Loom ``col_graphs`` (loom >= 2) and legacy ``col_edges``: COO triplets a -> b, weights w."""
    out: dict[str, sp.csr_matrix] = {}
    for group_name in ("col_graphs", "col_edges"):
        for key, g in (f.get(group_name) or {}).items():
            if not isinstance(g, h5py.Group) or key in out or not {"a", "b"} <= set(g.keys()):
                continue
            a, b = g["a"][()].astype(np.int64), g["b"][()].astype(np.int64)
            w = g["w"][()] if "w" in g else np.ones(len(a), np.float32)
            if len(a) and (max(a.max(), b.max()) >= n or min(a.min(), b.min()) < 0):
                raise FileFormatError(f"{path}: {group_name}/{key} has node ids outside [0, {n})")
            out[key] = sp.csr_matrix((w, (a, b)), shape=(n, n))
    return out


def read_loom(path: PathLike, *, layer: str | None = None) -> AnnDataLike:
    """Reads a loom file into an ``AnnDataLike`` (cells x genes, i.e. ``matrix`` transposed).

    ``col_attrs`` become ``obs`` (1-D) / ``obsm`` (multi-dimensional), ``row_attrs`` become
    ``var`` / ``varm``; cell names come from ``CellID`` (or ``obs_names``), gene names from
    ``Gene`` (or ``var_names``), falling back to ``"0", "1", ...``. ``col_graphs`` become
    ``obsp``.

    Args:
        path: the ``.loom`` file.
        layer: take ``X`` from ``layers/<layer>`` instead of ``matrix``.

    Raises:
        FileNotFoundError, FileFormatError, MissingKeyError: as ``read_h5ad``.
    """
    with _open(path) as f:
        if _detect(f, path) != "loom":
            raise FileFormatError(f"{path}: is an AnnData file, not loom; use read_h5ad")
        try:
            mat = f["matrix"]
            if mat.ndim != 2:
                raise FileFormatError(
                    f"{path}: matrix must be 2-D (genes x cells), got {mat.shape}"
                )
            n_genes, n_cells = mat.shape
            layers = {
                key: np.ascontiguousarray(_read_array(ds).T)
                for key, ds in (f.get("layers") or {}).items()
                if isinstance(ds, h5py.Dataset)
            }
            main = np.ascontiguousarray(mat[()].T)  # [cells, genes]
            X = _select_layer(main, layers, layer, path, "matrix")
            obs, obsm = _read_loom_attrs(f.get("col_attrs"), n_cells, "col_attrs", path)
            var, varm = _read_loom_attrs(f.get("row_attrs"), n_genes, "row_attrs", path)
            obsp = _read_loom_graphs(f, n_cells, path)
        except OSError as err:
            raise FileFormatError(f"{path}: read failed (truncated or corrupt?): {err}") from err
    obs_names = next((obs[k] for k in _LOOM_OBS_NAME_KEYS if k in obs), None)
    var_names = next((var[k] for k in _LOOM_VAR_NAME_KEYS if k in var), None)
    return AnnDataLike(
        X=X,
        obs=obs,
        var=var,
        obs_names=np.arange(n_cells).astype(str) if obs_names is None else obs_names.astype(str),
        var_names=np.arange(n_genes).astype(str) if var_names is None else var_names.astype(str),
        obsm=obsm,
        varm=varm,
        obsp=obsp,
        layers=layers,
        path=str(path),
        format="loom",
        layer=layer,
    )
