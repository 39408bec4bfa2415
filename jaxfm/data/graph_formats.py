"""Readers for the binary graph formats: ``.npz`` (GraphData / gnn-benchmark, heterophilous-graphs),
Planetoid ``ind.*`` pickles, facebook100 ``.mat`` and LINKX ``*-splits.npy``; plus the helpers
every reader shares (edge normalisation, labels, default splits).

Conventions of every reader (text formats live in :mod:`jaxfm.data.graph_formats_text`):

- Edges are returned as an undirected simple graph: both directions, no duplicates, no self
  loops, sorted by ``(sender, receiver)``. The only exception are the heterophilous-graphs
  ``*_directed.npz`` files, whose point is the direction (kept as stored, deduplicated).
- Classification labels are ``int32`` in ``[0, C)`` with ``-1`` for unlabelled nodes; integer
  labels that are not ``0..C-1`` with every class present (e.g. BlogCatalog's ``1..6``) are
  renumbered in sorted order.
- ``splits`` are the source's public splits when it has them, else ``num_random_splits`` seeded
  60/20/20 splits of the labelled nodes (stratified by class; seeds ``seed, seed+1, ...``).
- Graphs without node features get :func:`jaxfm.data.structural.structural_features` and
  ``structural_features=True``.
- Every problem raises :class:`~jaxfm.data.graph_validate.DatasetFormatError` naming the file.

Pickled members (GraphData ``adj_matrix`` / ``node_attr``, Planetoid files, LINKX splits) are
read with the restricted unpickler of :mod:`jaxfm.data.graph_formats_io`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from jaxfm.data.graph_dataset import NodeDataset, Split
from jaxfm.data.graph_formats_io import (
    load_restricted_pickle,
    read_npy_bytes,
    read_npz,
)
from jaxfm.data.graph_validate import (
    DatasetFormatError,
    check_edges,
    masks_to_splits,
    validate_node_dataset,
)
from jaxfm.data.labels import UNLABELLED, class_labels
from jaxfm.data.splits import seeded_node_splits
from jaxfm.data.structural import structural_features

__all__ = [
    "NUM_RANDOM_SPLITS",
    "encode_labels",
    "finish_node_dataset",
    "planetoid_missing",
    "read_facebook100_mat",
    "read_heterophilous_npz",
    "read_linkx_splits",
    "read_npz_graph",
    "read_planetoid",
    "simple_edges",
]

PathLike = str | os.PathLike
NUM_RANDOM_SPLITS = 10

# ---------------------------------------------------------------------------------------------
# Shared helpers.


def simple_edges(
    senders, receivers, num_nodes: int, *, directed: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Deduplicated, self-loop-free edges sorted by ``(sender, receiver)`` as ``int32``.

    Undirected (default): both directions of every pair. Directed: the stored directions only.
    """
    s, r = np.asarray(senders, np.int64).ravel(), np.asarray(receivers, np.int64).ravel()
    if not directed:
        s, r = np.concatenate([s, r]), np.concatenate([r, s])
    keep = s != r
    key = np.sort(s[keep] * num_nodes + r[keep])
    key = key[np.concatenate([[True], key[1:] != key[:-1]])] if key.size else key
    return (key // num_nodes).astype(np.int32), (key % num_nodes).astype(np.int32)


def encode_labels(
    values, where: str, num_classes: int | None = None, *, categorical: bool = False
) -> tuple[np.ndarray, int]:
    """Class ids ``int32 [N]`` and ``C`` from integer, bool or string labels.

    Negative numbers mean unlabelled (-1; see :mod:`jaxfm.data.labels`): never a class. With a
    declared ``num_classes`` (e.g. from a file's ``class_names``) the labels are kept and must
    be ``< num_classes``. Otherwise integer labels ``0..C-1`` with every class present are kept
    and anything else is renumbered in sorted order of the distinct labelled values.
    ``categorical=True`` is for formats whose values are category codes in which a negative
    value is a category (TU graph labels are -1 / 1): every distinct value is then a class.

    Raises:
      DatasetFormatError: no labels, non-integer numeric labels, labels out of range.
    """
    v = np.asarray(values).ravel()
    if v.size == 0:
        raise DatasetFormatError(f"{where}: no labels")
    if not categorical and (v.dtype.kind in "biuf" or num_classes is not None):
        y, c = class_labels(v, where, num_classes)
        if num_classes is not None:
            return y, c
        labelled = y >= 0
        uniq, inv = np.unique(y[labelled], return_inverse=True)
        if uniq[0] == 0 and uniq[-1] == uniq.size - 1:
            return y, int(uniq.size)
        out = np.full(y.shape, UNLABELLED, np.int32)
        out[labelled] = inv.ravel()
        return out, int(uniq.size)
    if categorical and v.dtype.kind == "f":
        if not np.isfinite(v).all() or not np.array_equal(v, np.round(v)):
            raise DatasetFormatError(f"{where}: class labels must be integers")
    uniq, inv = np.unique(v, return_inverse=True)
    if categorical and v.dtype.kind in "iu" and uniq[0] == 0 and uniq[-1] == uniq.size - 1:
        return v.astype(np.int32), int(uniq.size)
    return inv.astype(np.int32).ravel(), int(uniq.size)


def finish_node_dataset(
    *,
    name: str,
    source: PathLike,
    senders,
    receivers,
    num_nodes: int,
    x,
    y,
    num_classes: int,
    task: str = "classification",
    splits: tuple[Split, ...] = (),
    directed: bool = False,
    num_random_splits: int = NUM_RANDOM_SPLITS,
    seed: int = 0,
) -> NodeDataset:
    """Normalises edges, fills structural features / random splits, validates, returns.

    Args:
      x: features, or ``None`` for structural features.
      splits: public splits (empty -> ``num_random_splits`` seeded 60/20/20 splits).

    Raises:
      DatasetFormatError: see :func:`~jaxfm.data.graph_validate.validate_node_dataset`.
    """
    source = str(source)
    check_edges(np.asarray(senders), np.asarray(receivers), num_nodes, source)
    s, r = simple_edges(senders, receivers, num_nodes, directed=directed)
    structural = x is None
    if structural:
        x = structural_features(s, r, num_nodes)
    elif sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32)
        x.sum_duplicates()
    else:
        x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32 if task == "regression" else np.int32)
    if not splits and num_random_splits:
        splits = seeded_node_splits(y, task, num_random_splits, seed)
    elif task == "classification":  # unlabelled nodes never enter a loss or metric
        splits = tuple(_labelled_only(split, y >= 0) for split in splits)
    ds = NodeDataset(
        name=name,
        senders=s,
        receivers=r,
        num_nodes=int(num_nodes),
        x=x,
        y=y,
        num_classes=int(num_classes) if task == "classification" else 0,
        task=task,
        splits=tuple(splits),
        structural_features=structural,
        source=source,
    )
    return validate_node_dataset(ds)


def _labelled_only(split: Split, labelled: np.ndarray) -> Split:
    """``split`` without unlabelled nodes (masks of another shape are left to the validator)."""
    parts = [np.asarray(getattr(split, p)) for p in ("train", "val", "test")]
    if any(m.shape != labelled.shape or m.dtype != np.bool_ for m in parts):
        return split
    return Split(*(m & labelled for m in parts))


def _need(arrays: dict, key: str, path: PathLike) -> np.ndarray:
    if key not in arrays:
        raise DatasetFormatError(f"{path}: missing key {key!r} (has {sorted(arrays)})")
    return arrays[key]


def _unwrap(a, what: str, path: PathLike):
    """A 0-d object array holding a matrix -> the matrix."""
    if isinstance(a, np.ndarray) and a.dtype == object:
        if a.shape != ():
            raise DatasetFormatError(f"{path}: {what} is an object array of shape {a.shape}")
        a = a.item()
    if a is not None and not (sp.issparse(a) or isinstance(a, np.ndarray)):
        raise DatasetFormatError(f"{path}: {what} is a {type(a).__name__}, expected a matrix")
    return a


def _csr_from_parts(arrays: dict, prefix: str, path: PathLike) -> sp.csr_matrix:
    try:
        return sp.csr_matrix(
            (
                arrays[f"{prefix}_data"],
                arrays[f"{prefix}_indices"],
                arrays[f"{prefix}_indptr"],
            ),
            shape=tuple(int(v) for v in arrays[f"{prefix}_shape"]),
        )
    except (ValueError, TypeError) as e:
        raise DatasetFormatError(f"{path}: inconsistent {prefix}_* CSR arrays ({e})") from e


def _declared_classes(arrays: dict, path: PathLike) -> int | None:
    """``len(class_names)`` from a ``class_names`` array or the GraphData ``metadata`` dict."""
    names = arrays.get("class_names")
    meta = arrays.get("metadata")
    if names is None and isinstance(meta, np.ndarray) and meta.dtype == object and meta.shape == ():
        meta = meta.item()
        names = meta.get("class_names") if isinstance(meta, dict) else None
    return None if names is None else int(np.asarray(names).size)


def _stem(path: PathLike) -> str:
    return Path(path).name.split(".")[0]


# ---------------------------------------------------------------------------------------------
# Readers.


def read_npz_graph(path: PathLike, *, name: str | None = None, **kw) -> NodeDataset:
    """GraphData (``adj_matrix`` / ``node_attr`` / ``node_label``, pickled CSR) or gnn-benchmark
    (``adj_data`` / ``adj_indices`` / ``adj_indptr`` / ``adj_shape``, ``attr_*`` or
    ``attr_matrix``, ``labels``) ``.npz``. No public splits.

    Args:
      path: the ``.npz`` file.
      name: dataset name (default: the file stem).
      **kw: ``num_random_splits`` / ``seed`` of :func:`finish_node_dataset`.
    """
    arrays = read_npz(path)
    if "adj_matrix" in arrays:
        adj = _unwrap(arrays["adj_matrix"], "adj_matrix", path)
        attr = _unwrap(arrays["node_attr"], "node_attr", path) if "node_attr" in arrays else None
        labels = _need(arrays, "node_label", path)
    elif "adj_data" in arrays:
        adj = _csr_from_parts(arrays, "adj", path)
        if "attr_data" in arrays:
            attr = _csr_from_parts(arrays, "attr", path)
        else:
            attr = arrays.get("attr_matrix")
        if "labels" not in arrays:
            raise DatasetFormatError(
                f"{path}: no 'labels' array (multi-label CSR labels are not supported)"
            )
        labels = arrays["labels"]
    else:
        raise DatasetFormatError(
            f"{path}: unknown .npz graph layout, keys {sorted(arrays)} (expected adj_matrix or "
            "adj_data/adj_indices/adj_indptr/adj_shape)"
        )
    if adj is None or adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        shape = getattr(adj, "shape", None)
        raise DatasetFormatError(f"{path}: adjacency must be a square matrix, got {shape}")
    n = int(adj.shape[0])
    coo = sp.coo_matrix(adj)
    labels = np.asarray(labels).ravel()
    if labels.shape != (n,):
        raise DatasetFormatError(f"{path}: {labels.shape[0]} labels for {n} nodes")
    y, c = encode_labels(labels, str(path), _declared_classes(arrays, path))
    return finish_node_dataset(
        name=name or _stem(path),
        source=path,
        senders=coo.row,
        receivers=coo.col,
        num_nodes=n,
        x=attr,
        y=y,
        num_classes=c,
        **kw,
    )


def read_heterophilous_npz(path: PathLike, *, name: str | None = None, **kw) -> NodeDataset:
    """heterophilous-graphs ``.npz``: ``node_features``, ``node_labels``, ``edges [E, 2]`` and the
    public ``train/val/test_masks [S, N]`` (10 splits). ``*directed*`` files keep edge direction.
    """
    arrays = read_npz(path)
    x = np.asarray(_need(arrays, "node_features", path))
    labels = np.asarray(_need(arrays, "node_labels", path)).ravel()
    edges = np.asarray(_need(arrays, "edges", path))
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise DatasetFormatError(f"{path}: edges must be [E, 2], got {edges.shape}")
    n = int(labels.shape[0])
    if x.ndim != 2 or x.shape[0] != n:
        raise DatasetFormatError(f"{path}: node_features {x.shape} for {n} labels")
    y, c = encode_labels(labels, str(path))
    masks = [np.asarray(_need(arrays, f"{p}_masks", path)) for p in ("train", "val", "test")]
    for p, m in zip(("train", "val", "test"), masks, strict=True):
        if m.ndim not in (1, 2) or m.shape[-1] != n:
            raise DatasetFormatError(f"{path}: {p}_masks has shape {m.shape}, expected [S, {n}]")
    splits = masks_to_splits(*masks)
    return finish_node_dataset(
        name=name or _stem(path),
        source=path,
        senders=edges[:, 0],
        receivers=edges[:, 1],
        num_nodes=n,
        x=x,
        y=y,
        num_classes=c,
        splits=splits,
        directed="directed" in _stem(path),
        **kw,
    )


def _planetoid_files(folder: Path, ds: str) -> dict[str, Path]:
    return {k: folder / f"ind.{ds}.{k}" for k in ("x", "y", "tx", "ty", "allx", "ally", "graph")}


def planetoid_missing(folder: PathLike, ds: str) -> list[str]:
    """Names of the Planetoid ``ind.<ds>.*`` files absent from ``folder``."""
    folder = Path(folder)
    files = [*_planetoid_files(folder, ds).values(), folder / f"ind.{ds}.test.index"]
    return [f.name for f in files if not f.is_file()]


def read_planetoid(folder: PathLike, ds: str, *, name: str | None = None, **kw) -> NodeDataset:
    """Planetoid ``ind.<ds>.{x,y,tx,ty,allx,ally,graph,test.index}`` with its public split
    (train = the ``x`` rows, val = the next 500 nodes, test = ``test.index``).

    Test nodes listed in the index range but absent from ``test.index`` (CiteSeer's isolated
    nodes) get zero features and label -1, as in the usual loader.
    """
    folder = Path(folder)
    missing = planetoid_missing(folder, ds)
    if missing:
        raise DatasetFormatError(f"{folder}: Planetoid {ds!r} is incomplete, missing {missing}")
    parts = {}
    for k, f in _planetoid_files(folder, ds).items():
        parts[k] = load_restricted_pickle(f.read_bytes(), str(f))
    try:
        test_index = np.loadtxt(folder / f"ind.{ds}.test.index", dtype=np.int64, ndmin=1)
    except ValueError as e:
        raise DatasetFormatError(f"{folder / f'ind.{ds}.test.index'}: not a list of ints") from e
    tx, allx = (sp.csr_matrix(parts[k]) for k in ("tx", "allx"))
    y, ty, ally = (np.asarray(parts[k]) for k in ("y", "ty", "ally"))
    graph = parts["graph"]
    if not isinstance(graph, dict):
        raise DatasetFormatError(f"{folder}: ind.{ds}.graph is not an adjacency dict")
    if tx.shape[0] != test_index.size or ty.shape[0] != test_index.size:
        raise DatasetFormatError(f"{folder}: {ds} tx/ty rows != test.index length")
    heads = [int(k) for k in graph]
    tails = [int(v) for k in graph for v in graph[k]]
    n = max(allx.shape[0], int(test_index.max()) + 1, max(heads) + 1, max(tails, default=0) + 1)
    feats = sp.lil_matrix((n, allx.shape[1]), dtype=np.float32)
    feats[: allx.shape[0]] = allx
    feats[test_index] = tx
    onehot = np.zeros((n, ally.shape[1]), np.float32)
    onehot[: ally.shape[0]] = ally
    onehot[test_index] = ty
    labels = np.where(onehot.sum(1) > 0, onehot.argmax(1), -1).astype(np.int32)
    masks = [np.zeros(n, bool) for _ in range(3)]
    masks[0][: y.shape[0]] = True
    masks[1][y.shape[0] : min(y.shape[0] + 500, allx.shape[0])] = True  # Kipf's 500
    masks[2][test_index] = True
    for m in masks:
        m &= labels >= 0
    senders = np.repeat(heads, [len(graph[k]) for k in graph])
    return finish_node_dataset(
        name=name or ds,
        source=folder / f"ind.{ds}.graph",
        senders=senders,
        receivers=np.asarray(tails, np.int64),
        num_nodes=n,
        x=feats.tocsr(),
        y=labels,
        num_classes=int(ally.shape[1]),
        splits=(Split(train=masks[0], val=masks[1], test=masks[2]),),
        **kw,
    )


def read_facebook100_mat(path: PathLike, *, name: str | None = None, **kw) -> NodeDataset:
    """facebook100 (LINKX) ``.mat``: sparse ``A`` and ``local_info [N, 7]`` = (status, gender,
    major, second major, dorm, year, high school).

    Label = gender (1, 2 -> 0, 1; 0 = missing -> -1), 2 classes. Features = one-hot of every
    distinct value (0 = missing included) of each of the other six columns, concatenated in
    column order (LINKX binarises two-valued columns into one column; here every value gets
    its own column). No public splits here (LINKX's are for Penn94 only).
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=["A", "local_info"])
    except FileNotFoundError as e:
        raise DatasetFormatError(f"{path}: file not found") from e
    except (ValueError, OSError, TypeError, EOFError, scipy.io.matlab.MatReadError) as e:
        raise DatasetFormatError(f"{path}: not a readable MATLAB file ({e})") from e
    for key in ("A", "local_info"):
        if key not in mat:
            raise DatasetFormatError(f"{path}: missing variable {key!r}")
    a = sp.coo_matrix(mat["A"])
    info = np.asarray(mat["local_info"])
    n = int(a.shape[0])
    if a.shape != (n, n) or info.ndim != 2 or info.shape[0] != n or info.shape[1] < 2:
        raise DatasetFormatError(f"{path}: A {a.shape} and local_info {info.shape} disagree")
    info = info.astype(np.int64)
    y = np.where(info[:, 1] > 0, info[:, 1] - 1, -1)
    if y.max() > 1:
        raise DatasetFormatError(f"{path}: gender column has values > 2")
    blocks = []
    for col in [0, *range(2, info.shape[1])]:
        _, inv = np.unique(info[:, col], return_inverse=True)
        blocks.append(sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), inv.ravel()))))
    return finish_node_dataset(
        name=name or _stem(path).replace(" ", "_").lower(),
        source=path,
        senders=a.row,
        receivers=a.col,
        num_nodes=n,
        x=sp.hstack(blocks, format="csr"),
        y=y,
        num_classes=2,
        **kw,
    )


def read_linkx_splits(path: PathLike, num_nodes: int) -> tuple[Split, ...]:
    """LINKX ``*-splits.npy`` (object array of ``{"train", "valid", "test"}`` index arrays) as
    boolean :class:`Split` s over ``num_nodes`` nodes (read with the restricted unpickler)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DatasetFormatError(f"{path}: cannot read ({e})") from e
    arr = read_npy_bytes(data, str(path))
    out = []
    for k, d in enumerate(np.asarray(arr, dtype=object).ravel()):
        if not isinstance(d, dict) or not {"train", "valid", "test"} <= set(d):
            raise DatasetFormatError(f"{path}: split {k} is not a dict with train/valid/test")
        masks = []
        for key in ("train", "valid", "test"):
            idx = np.asarray(d[key], np.int64).ravel()
            if idx.size and (idx.min() < 0 or idx.max() >= num_nodes):
                raise DatasetFormatError(
                    f"{path}: split {k} {key} has node index {int(idx.max())} outside "
                    f"[0, {num_nodes})"
                )
            m = np.zeros(num_nodes, bool)
            m[idx] = True
            masks.append(m)
        out.append(Split(train=masks[0], val=masks[1], test=masks[2]))
    return tuple(out)
