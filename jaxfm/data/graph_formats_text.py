"""Readers for the text graph formats: Geom-GCN folders, MUSAE and karateclub csv/json,
struc2vec airports, email-Eu-core and TU-format graph classification sets.

The conventions (undirected simple edges, labels, splits, structural features, errors) are those
of :mod:`jaxfm.data.graph_formats`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from jaxfm.data.graph_dataset import GraphClassificationDataset, NodeDataset, SmallGraph, Split
from jaxfm.data.graph_formats import encode_labels, finish_node_dataset, simple_edges
from jaxfm.data.graph_formats_io import read_npz
from jaxfm.data.graph_validate import (
    DatasetFormatError,
    check_edges,
    masks_to_splits,
    validate_graph_dataset,
)
from jaxfm.data.structural import structural_features

__all__ = [
    "NUM_FOLDS",
    "geom_gcn_split_files",
    "musae_files",
    "read_airports",
    "read_email_eu_core",
    "read_geom_gcn",
    "read_karateclub",
    "read_musae",
    "read_tu",
    "stratified_folds",
    "tu_files",
]

PathLike = str | os.PathLike
NUM_FOLDS = 10
_GEOM_SPLIT = re.compile(r"^(?P<ds>.+)_split_0\.6_0\.2_(?P<i>\d+)\.npz$")


def _text(path: PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").replace("\r", "")
    except FileNotFoundError as e:
        raise DatasetFormatError(f"{path}: file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path}: cannot read as UTF-8 text ({e})") from e


def _table(path: PathLike, ncols: int, delimiter: str | None = None, dtype=np.int64) -> np.ndarray:
    """A numeric table ``[rows, ncols]``; a non-numeric first line is taken as a header."""
    text = _text(path)
    first, _, rest = text.partition("\n")
    try:
        float(first.replace(",", " ").split()[0])
    except (ValueError, IndexError):
        text = rest  # header line
    try:
        with np.errstate(all="ignore"):
            arr = np.loadtxt(io.StringIO(text), dtype=dtype, delimiter=delimiter, ndmin=2)
    except ValueError as e:
        raise DatasetFormatError(f"{path}: malformed numeric table ({e})") from e
    if arr.size == 0:
        arr = arr.reshape(0, ncols)
    if arr.shape[1] != ncols:
        raise DatasetFormatError(f"{path}: expected {ncols} columns, found {arr.shape[1]}")
    return arr


def _check_ids(ids: np.ndarray, n: int, where: PathLike) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise DatasetFormatError(f"{where}: node id {bad} is outside [0, {n}) (edges/targets)")


def _csv_rows(path: PathLike) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(_text(path))))
    rows = [r for r in rows if r]
    if not rows:
        raise DatasetFormatError(f"{path}: empty csv file")
    return rows[0], rows[1:]


# ---------------------------------------------------------------------------------------------
# Geom-GCN


def geom_gcn_split_files(folder: PathLike) -> list[Path]:
    """``<ds>_split_0.6_0.2_<i>.npz`` files for Geom-GCN folder ``.../new_data/<ds>``, looked up
    in the folder, ``<folder>/splits``, ``<folder>/../splits`` and ``<folder>/../../splits``;
    sorted by ``i``."""
    folder = Path(folder)
    ds = folder.name
    for d in (folder, folder / "splits", folder.parent / "splits", folder.parent.parent / "splits"):
        if d.is_dir():
            found = {}
            for f in d.iterdir():
                m = _GEOM_SPLIT.match(f.name)
                if m and m["ds"] == ds:
                    found[int(m["i"])] = f
            if found:
                return [found[i] for i in sorted(found)]
    return []


def read_geom_gcn(folder: PathLike, *, name: str | None = None, **kw) -> NodeDataset:
    """Geom-GCN folder: ``out1_node_feature_label.txt`` (``id<TAB>features<TAB>label``; features
    dense comma-separated, or index lists when the header says ``feature_amount:K`` as for film)
    and ``out1_graph_edges.txt`` (directed edge list with a header). Public splits from the
    ``<ds>_split_0.6_0.2_<i>.npz`` files beside it (see :func:`geom_gcn_split_files`).
    """
    folder = Path(folder)
    feat_file, edge_file = folder / "out1_node_feature_label.txt", folder / "out1_graph_edges.txt"
    lines = [ln for ln in _text(feat_file).split("\n") if ln.strip()]
    if not lines:
        raise DatasetFormatError(f"{feat_file}: empty file")
    header, body = lines[0], lines[1:]
    amount = re.search(r"feature_amount:(\d+)", header)
    ids, labels, rows = [], [], []
    for k, line in enumerate(body, start=2):
        parts = line.split("\t")
        if len(parts) != 3:
            raise DatasetFormatError(f"{feat_file}: line {k} has {len(parts)} fields, expected 3")
        try:
            ids.append(int(parts[0]))
            labels.append(int(parts[2]))
            rows.append([int(v) for v in parts[1].split(",") if v.strip()])
        except ValueError as e:
            raise DatasetFormatError(f"{feat_file}: line {k}: {e}") from e
    n = len(ids)
    ids = np.asarray(ids, np.int64)
    if sorted(ids.tolist()) != list(range(n)):
        raise DatasetFormatError(f"{feat_file}: node ids are not a permutation of 0..{n - 1}")
    if amount:
        cols = np.concatenate([np.asarray(r, np.int64) for r in rows]) if rows else np.zeros(0)
        dim = max(int(amount[1]), int(cols.max()) + 1 if cols.size else 0)
        rowids = np.repeat(ids, [len(r) for r in rows])
        x = sp.csr_matrix((np.ones(cols.size, np.float32), (rowids, cols)), shape=(n, dim))
        x.data[:] = 1.0
    else:
        widths = {len(r) for r in rows}
        if len(widths) != 1:
            raise DatasetFormatError(f"{feat_file}: rows have different widths {sorted(widths)}")
        x = np.zeros((n, widths.pop()), np.float32)
        x[ids] = np.asarray(rows, np.float32)
    y = np.zeros(n, np.int64)
    y[ids] = labels
    y, c = encode_labels(y, str(feat_file))
    edges = _table(edge_file, 2, delimiter=None)
    splits: list[Split] = []
    for f in geom_gcn_split_files(folder):
        arrays = read_npz(f)
        try:
            masks = [np.asarray(arrays[f"{p}_mask"]).astype(bool) for p in ("train", "val", "test")]
        except KeyError as e:
            raise DatasetFormatError(f"{f}: missing {e.args[0]!r}") from e
        if any(m.shape != (n,) for m in masks):
            raise DatasetFormatError(f"{f}: masks have shape {masks[0].shape}, expected [{n}]")
        splits.extend(masks_to_splits(*masks))
    return finish_node_dataset(
        name=name or folder.name,
        source=folder,
        senders=edges[:, 0],
        receivers=edges[:, 1],
        num_nodes=n,
        x=x,
        y=y,
        num_classes=c,
        splits=tuple(splits),
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# MUSAE and karateclub


def musae_files(root: PathLike, ds: str) -> dict[str, Path]:
    """``{"edges", "features", "target"}`` paths of MUSAE dataset ``ds`` under ``root``
    (the folder holding ``edges/``, ``features/`` and ``target/``)."""
    root = Path(root)
    return {
        "edges": root / "edges" / f"{ds}_edges.csv",
        "features": root / "features" / f"{ds}.json",
        "target": root / "target" / f"{ds}_target.csv",
    }


# Label column of each MUSAE / karateclub target file, in order of preference.
_LABEL_COLUMNS = ("mature", "page_type", "ml_target", "target")
_MAX_CLASSES = 100


def _labels_from_column(values: list[str], where: str) -> tuple[np.ndarray, int, str]:
    """Class ids from bool / string / small-integer columns; else log1p regression targets."""
    low = {v.strip().lower() for v in values}
    if low <= {"true", "false"}:
        y = np.array([v.strip().lower() == "true" for v in values], np.int32)
        return y, 2, "classification"
    try:
        nums = np.array([float(v) for v in values])
    except ValueError:
        y, c = encode_labels(np.array([v.strip() for v in values]), where)
        return y, c, "classification"
    if np.array_equal(nums, np.round(nums)) and np.unique(nums).size <= _MAX_CLASSES:
        y, c = encode_labels(nums.astype(np.int64), where)
        return y, c, "classification"
    if (nums < 0).any():
        return nums.astype(np.float32), 0, "regression"
    return np.log1p(nums).astype(np.float32), 0, "regression"


def _target(path: PathLike, id_column: str) -> tuple[np.ndarray, np.ndarray, int, str]:
    """``(node ids, labels, C, task)`` of a target csv (first row per id wins)."""
    header, rows = _csv_rows(path)
    header = [h.strip() for h in header]
    col = next((c for c in _LABEL_COLUMNS if c in header), None)
    if col is None:
        raise DatasetFormatError(f"{path}: no label column (one of {_LABEL_COLUMNS}) in {header}")
    idc = id_column if id_column in header else "id"
    if idc not in header:
        raise DatasetFormatError(f"{path}: no id column in {header}")
    i, j = header.index(idc), header.index(col)
    try:
        ids = np.array([int(r[i]) for r in rows], np.int64)
        raw = [r[j] for r in rows]
    except (ValueError, IndexError) as e:
        raise DatasetFormatError(f"{path}: malformed row ({e})") from e
    _, first = np.unique(ids, return_index=True)
    first = np.sort(first)
    y, c, task = _labels_from_column([raw[k] for k in first], str(path))
    return ids[first], y, c, task


def _node_dataset_from_parts(
    *, name, source, edges_file, target_file, id_column, features, structural_if_missing, kw
) -> NodeDataset:
    ids, labels, c, task = _target(target_file, id_column)
    edges = _table(edges_file, 2, delimiter=",")
    n = int(max(ids.max() + 1, edges.max() + 1 if edges.size else 0))
    if ids.min() < 0:
        raise DatasetFormatError(f"{target_file}: negative node id")
    y = np.full(n, -1 if task == "classification" else np.nan, np.float64)
    y[ids] = labels
    if features is None and not structural_if_missing:
        raise DatasetFormatError(
            f"{source}: node features file is absent (pass structural_if_missing=True to use "
            "structural features)"
        )
    x = features(n) if features is not None else None
    return finish_node_dataset(
        name=name,
        source=source,
        senders=edges[:, 0],
        receivers=edges[:, 1],
        num_nodes=n,
        x=x,
        y=y.astype(np.int32) if task == "classification" else y.astype(np.float32),
        num_classes=c,
        task=task,
        **kw,
    )


def read_musae(
    root: PathLike, ds: str, *, name: str | None = None, structural_if_missing=False, **kw
) -> NodeDataset:
    """MUSAE dataset ``ds`` (e.g. ``"DE"``, ``"facebook"``, ``"chameleon"``) under ``root``:
    ``edges/<ds>_edges.csv``, ``features/<ds>.json`` (``{node: [feature indices]}``, binary) and
    ``target/<ds>_target.csv``. Node ids are ``new_id`` (Twitch) or ``id``; duplicate target rows
    keep the first. Labels: ``mature`` (Twitch), ``page_type`` (Facebook), ``ml_target`` (GitHub)
    as classes; Wikipedia ``target`` traffic as a ``log1p`` regression target.
    """
    files = musae_files(root, ds)

    def features(n: int) -> sp.csr_matrix:
        try:
            raw = json.loads(_text(files["features"]))
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{files['features']}: invalid JSON ({e})") from e
        try:
            rows = np.repeat([int(k) for k in raw], [len(v) for v in raw.values()])
            cols = np.asarray([int(f) for v in raw.values() for f in v], np.int64)
        except (TypeError, ValueError) as e:
            raise DatasetFormatError(f"{files['features']}: expected {{node: [ints]}} ({e})") from e
        _check_ids(rows, n, files["features"])
        dim = int(cols.max()) + 1 if cols.size else 1
        x = sp.csr_matrix((np.ones(cols.size, np.float32), (rows, cols)), shape=(n, dim))
        x.sum_duplicates()
        x.data[:] = 1.0
        return x

    return _node_dataset_from_parts(
        name=name or ds,
        source=files["edges"],
        edges_file=files["edges"],
        target_file=files["target"],
        id_column="new_id",
        features=features if files["features"].is_file() else None,
        structural_if_missing=structural_if_missing,
        kw=kw,
    )


def read_karateclub(
    folder: PathLike, *, name: str | None = None, structural_if_missing=False, **kw
) -> NodeDataset:
    """karateclub node-level folder: ``edges.csv`` (``id_1,id_2``), ``target.csv`` (``id,target``)
    and ``features.csv`` (``node_id,feature_id,value`` sparse triples)."""
    folder = Path(folder)
    feat_file = folder / "features.csv"

    def features(n: int) -> sp.csr_matrix:
        t = _table(feat_file, 3, delimiter=",", dtype=np.float64)
        rows, cols = t[:, 0].astype(np.int64), t[:, 1].astype(np.int64)
        _check_ids(rows, n, feat_file)
        if cols.size and cols.min() < 0:
            raise DatasetFormatError(f"{feat_file}: negative feature id {int(cols.min())}")
        dim = int(cols.max()) + 1 if cols.size else 1
        return sp.csr_matrix((t[:, 2].astype(np.float32), (rows, cols)), shape=(n, dim))

    return _node_dataset_from_parts(
        name=name or folder.name,
        source=folder,
        edges_file=folder / "edges.csv",
        target_file=folder / "target.csv",
        id_column="id",
        features=features if feat_file.is_file() else None,
        structural_if_missing=structural_if_missing,
        kw=kw,
    )


# ---------------------------------------------------------------------------------------------
# Structure-only node datasets


def _relabel(edges: np.ndarray, label_table: np.ndarray, where: str):
    """Maps arbitrary node ids (first column of ``label_table``) to ``0..N-1`` in sorted order."""
    ids = label_table[:, 0]
    order = np.argsort(ids, kind="stable")
    ids_sorted = ids[order]
    if np.unique(ids_sorted).size != ids_sorted.size:
        raise DatasetFormatError(f"{where}: duplicate node ids in the labels file")
    pos = np.searchsorted(ids_sorted, edges.ravel())
    pos = np.minimum(pos, ids_sorted.size - 1)
    if edges.size and not np.array_equal(ids_sorted[pos], edges.ravel()):
        bad = edges.ravel()[ids_sorted[pos] != edges.ravel()][0]
        raise DatasetFormatError(
            f"{where}: edge endpoint {bad} is not in the labels file (edge index out of range)"
        )
    return pos.reshape(edges.shape), label_table[order, 1]


def read_airports(edgelist: PathLike, *, name: str | None = None, **kw) -> NodeDataset:
    """struc2vec airports: ``<c>-airports.edgelist`` (space-separated pairs) and
    ``labels-<c>-airports.txt`` (header ``node label``) beside it; node ids are renumbered in
    sorted order. No features (structural ones are built)."""
    edgelist = Path(edgelist)
    country = edgelist.name.split("-airports")[0]
    labels_file = edgelist.with_name(f"labels-{country}-airports.txt")
    edges = _table(edgelist, 2)
    table = _table(labels_file, 2)
    e, raw = _relabel(edges, table, str(edgelist))
    y, c = encode_labels(raw, str(labels_file))
    return finish_node_dataset(
        name=name or country, source=edgelist, senders=e[:, 0], receivers=e[:, 1],
        num_nodes=table.shape[0], x=None, y=y, num_classes=c, **kw,
    )  # fmt: skip


def read_email_eu_core(edges_file: PathLike, *, name: str | None = None, **kw) -> NodeDataset:
    """SNAP email-Eu-core: ``email-Eu-core.txt`` (directed pairs) and
    ``email-Eu-core-department-labels.txt`` (``node department``) beside it; 42 classes."""
    edges_file = Path(edges_file)
    labels_file = edges_file.with_name(f"{edges_file.stem}-department-labels.txt")
    edges = _table(edges_file, 2)
    table = _table(labels_file, 2)
    e, raw = _relabel(edges, table, str(edges_file))
    y, c = encode_labels(raw, str(labels_file))
    return finish_node_dataset(
        name=name or edges_file.stem.lower(), source=edges_file, senders=e[:, 0],
        receivers=e[:, 1], num_nodes=table.shape[0], x=None, y=y, num_classes=c, **kw,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# TU graph classification


def tu_files(folder: PathLike, ds: str) -> dict[str, Path]:
    folder = Path(folder)
    keys = ("A", "graph_indicator", "graph_labels", "node_labels", "node_attributes")
    return {k: folder / f"{ds}_{k}.txt" for k in keys}


def stratified_folds(y: np.ndarray, num_folds: int = NUM_FOLDS, seed: int = 0) -> tuple[Split, ...]:
    """``num_folds`` seeded stratified folds over graphs: fold ``k`` tests on part ``k``,
    validates on part ``k + 1 (mod num_folds)`` and trains on the rest."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    part = np.empty(y.shape[0], np.int64)
    offset = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        part[members] = (offset + np.arange(members.size)) % num_folds
        offset += members.size
    out = []
    for k in range(num_folds):
        test, val = part == k, part == (k + 1) % num_folds
        out.append(Split(train=~(test | val), val=val, test=test))
    return tuple(out)


def read_tu(
    folder: PathLike, ds: str | None = None, *, name: str | None = None, seed: int = 0
) -> GraphClassificationDataset:
    """TU Dortmund format: ``DS_A.txt`` (1-based ``row, col``), ``DS_graph_indicator.txt``,
    ``DS_graph_labels.txt`` and optional ``DS_node_labels.txt`` / ``DS_node_attributes.txt``.

    Node features = one-hot node labels ⊕ node attributes; with neither, per-graph structural
    features (``structural_features=True``). Graph labels are renumbered to ``0..C-1``. Folds:
    :func:`stratified_folds` (10, seeded).
    """
    folder = Path(folder)
    if ds is None:
        found = sorted(f.name[: -len("_A.txt")] for f in folder.glob("*_A.txt"))
        if len(found) != 1:
            raise DatasetFormatError(f"{folder}: expected one *_A.txt file, found {found}")
        ds = found[0]
    f = tu_files(folder, ds)
    ind = _table(f["graph_indicator"], 1)[:, 0]
    a = _table(f["A"], 2, delimiter=",") - 1
    glabels = _table(f["graph_labels"], 1)[:, 0]
    n, num_graphs = ind.size, glabels.size
    if n == 0:
        raise DatasetFormatError(f"{f['graph_indicator']}: zero nodes")
    if ind.min() < 1 or ind.max() > num_graphs or np.any(np.diff(ind) < 0):
        raise DatasetFormatError(
            f"{f['graph_indicator']}: graph ids must be non-decreasing in [1, {num_graphs}]"
        )
    sizes = np.bincount(ind - 1, minlength=num_graphs)
    if (sizes == 0).any():
        empty = int(np.argmin(sizes)) + 1
        raise DatasetFormatError(f"{f['graph_indicator']}: graph {empty} has zero nodes")
    check_edges(a[:, 0], a[:, 1], n, str(f["A"]))
    if np.any(ind[a[:, 0]] != ind[a[:, 1]]):
        raise DatasetFormatError(f"{f['A']}: an edge joins nodes of different graphs")
    blocks = []
    if f["node_labels"].is_file():
        nl = _table(f["node_labels"], 1)[:, 0]
        if nl.size != n:
            raise DatasetFormatError(f"{f['node_labels']}: {nl.size} rows for {n} nodes")
        codes, k = encode_labels(nl, str(f["node_labels"]), categorical=True)
        blocks.append(np.eye(k, dtype=np.float32)[codes])
    if f["node_attributes"].is_file():
        first = _text(f["node_attributes"]).split("\n", 1)[0]
        attrs = _table(f["node_attributes"], first.count(",") + 1, ",", np.float64)
        if attrs.shape[0] != n:
            raise DatasetFormatError(f"{f['node_attributes']}: {attrs.shape[0]} rows for {n} nodes")
        blocks.append(attrs.astype(np.float32))
    s, r = simple_edges(a[:, 0], a[:, 1], n)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    edge_graph = ind[s] - 1
    cuts = np.searchsorted(edge_graph, np.arange(num_graphs + 1))
    x_all = np.concatenate(blocks, axis=1) if blocks else None
    graphs = []
    for g in range(num_graphs):
        lo, hi = starts[g], starts[g + 1]
        gs, gr = s[cuts[g] : cuts[g + 1]] - lo, r[cuts[g] : cuts[g + 1]] - lo
        x = x_all[lo:hi] if x_all is not None else structural_features(gs, gr, int(hi - lo))
        graphs.append(SmallGraph(senders=gs, receivers=gr, num_nodes=int(hi - lo), x=x))
    y, c = encode_labels(glabels, str(f["graph_labels"]), categorical=True)
    out = GraphClassificationDataset(
        name=name or ds, graphs=tuple(graphs), y=y, num_classes=c,
        folds=stratified_folds(y, NUM_FOLDS, seed), source=str(folder),
        structural_features=x_all is None,
    )  # fmt: skip
    return validate_graph_dataset(out)
