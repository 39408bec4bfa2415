"""Dataset registry: detect a graph dataset's format from a path, load it, or scan a folder.

``load_dataset(path)`` accepts a dataset file or folder in any supported format (or a registry
name such as ``"heterophilous/chameleon"``, looked up under the ``root`` argument or
``$JAXFM_DATASETS``); ``find_datasets(root)`` lists every dataset under a folder, one
:class:`DatasetRef` per dataset (not per file), with cheap metadata.

========================  =========================================  ============================
format                    what identifies it (path given)            registry name
========================  =========================================  ============================
``graph_npz``             ``.npz`` with ``adj_matrix`` (GraphData)   ``graphdata/<stem>``
                          or ``adj_data``... (gnn-benchmark)         ``gnn-benchmark/<stem>``
``heterophilous_npz``     ``.npz`` with ``node_features``/``edges``  ``heterophilous/<stem>``
``planetoid``             ``ind.<ds>.*`` files                       ``planetoid/<ds>``
``geom_gcn``              folder with ``out1_graph_edges.txt``       ``geom-gcn/<folder>``
``musae``                 ``edges/<ds>_edges.csv`` + ``target/``     ``musae/<ds lower>``
``karateclub``            folder with ``edges.csv`` + ``target.csv``  ``karateclub/<folder>``
``facebook100``           ``.mat`` with ``A`` and ``local_info``     ``facebook100/<stem>``
``airports``              ``<c>-airports.edgelist`` + labels         ``airports/<c>``
``email_eu_core``         ``X.txt`` + ``X-department-labels.txt``    ``email-eu-core``
``tu``                    folder with ``DS_A.txt`` (+ indicator...)  ``tu/<ds lower>``
========================  =========================================  ============================

Not datasets (ignored by the scan, refused by ``load_dataset``): Geom-GCN split ``.npz`` files
and LINKX ``*-splits.npy`` files (see :func:`jaxfm.data.graph_formats.read_linkx_splits`).
Datasets that are present but unusable (Geom-GCN folders without the features file, Planetoid
sets with a missing file, MUSAE / karateclub sets without features unless
``structural_if_missing=True``) are skipped; ``include_skipped=True`` lists them with
``skip_reason``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from jaxfm.data import graph_formats as gf
from jaxfm.data import graph_formats_io as gio
from jaxfm.data import graph_formats_text as gt
from jaxfm.data.graph_dataset import GraphClassificationDataset, NodeDataset
from jaxfm.data.graph_validate import DatasetFormatError

__all__ = [
    "FORMATS",
    "DatasetRef",
    "default_root",
    "detect_format",
    "find_datasets",
    "load_dataset",
]

PathLike = str | os.PathLike
FORMATS = (
    "graph_npz",
    "heterophilous_npz",
    "planetoid",
    "geom_gcn",
    "musae",
    "karateclub",
    "facebook100",
    "airports",
    "email_eu_core",
    "tu",
)
_GEOM_SPLIT = re.compile(r"_split_0\.6_0\.2_\d+\.npz$")
_PLANETOID = re.compile(r"^ind\.(?P<ds>[^.]+)\.(x|y|tx|ty|allx|ally|graph|test\.index)$")
_TU_SUFFIXES = (
    "_A.txt",
    "_graph_indicator.txt",
    "_graph_labels.txt",
    "_node_labels.txt",
    "_node_attributes.txt",
    "_edge_labels.txt",
    "_edge_attributes.txt",
    "_graph_attributes.txt",
)
# Different registry names for the same underlying graph (pretraining and evaluation sets must
# not share a family). Suffixes _directed / _filtered / _full are stripped first.
_FAMILY_ALIASES = {
    "film": "actor",
    "karateclub/twitch": "twitch_engb",
    **{f"musae/{c}": f"twitch_{c}" for c in ("de", "engb", "es", "fr", "ptbr", "ru", "zhtw")},
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetRef:
    """One dataset found on disk.

    Attributes:
      name: stable unique registry name, e.g. ``"heterophilous/chameleon"``.
      format: one of :data:`FORMATS`.
      path: what :func:`load_dataset` takes (a file or a folder).
      level: ``"node"`` (one graph, node targets) or ``"graph"`` (graph classification).
      num_nodes: total number of nodes (all graphs of a graph-level set), None if not cheap.
      num_graphs: 1 for node-level datasets.
      public_splits: number of public splits shipped with the data (0: seeded ones are made).
      family: key of the underlying graph; datasets with the same family share nodes
        (e.g. ``geom-gcn/film`` and ``heterophilous/actor`` are both ``"actor"``).
      skip_reason: non-empty when the dataset is present but cannot be loaded.
    """

    name: str
    format: str
    path: str
    level: str = "node"
    num_nodes: int | None = None
    num_graphs: int = 1
    public_splits: int = 0
    family: str = ""
    skip_reason: str = ""


@dataclasses.dataclass(frozen=True)
class _Loc:
    format: str
    path: Path  # the canonical dataset path (file or folder)
    name: str
    ds: str = ""  # sub-dataset name (MUSAE, Planetoid, TU)


def default_root() -> Path:
    """``$JAXFM_DATASETS``: where registry names are looked up when no ``root`` is given.

    Raises:
      FileNotFoundError: the variable is not set (the library never guesses a data folder).
    """
    env = os.environ.get("JAXFM_DATASETS")
    if not env:
        raise FileNotFoundError(
            "a registry name needs a dataset root: pass root=... or set $JAXFM_DATASETS to the "
            "folder that holds the datasets (e.g. export JAXFM_DATASETS=/data/graphs)"
        )
    return Path(env)


def _family(name: str) -> str:
    if name in _FAMILY_ALIASES:
        return _FAMILY_ALIASES[name]
    base = name.split("/")[-1]
    base = re.sub(r"(_directed|_filtered|_full)+$", "", base)
    return _FAMILY_ALIASES.get(base, base)


def _count_lines(path: Path) -> int:
    data = path.read_bytes()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


# ---------------------------------------------------------------------------------------------
# Locating one dataset from a path.


def _npz_loc(p: Path) -> _Loc:
    if _GEOM_SPLIT.search(p.name):
        raise DatasetFormatError(f"{p}: a Geom-GCN split file, not a dataset")
    keys = set(gio.npz_member_shapes(p))
    stem = p.name[: -len(".npz")]
    if {"node_features", "node_labels", "edges"} <= keys:
        return _Loc("heterophilous_npz", p, f"heterophilous/{stem}")
    if "adj_matrix" in keys:
        return _Loc("graph_npz", p, f"graphdata/{stem}")
    if {"adj_data", "adj_indices", "adj_indptr", "adj_shape"} <= keys:
        return _Loc("graph_npz", p, f"gnn-benchmark/{stem}")
    raise DatasetFormatError(f"{p}: unknown .npz layout (keys {sorted(keys)})")


def _musae_loc(p: Path) -> _Loc | None:
    kind, name = p.parent.name, p.name
    for folder, suffix in (
        ("edges", "_edges.csv"),
        ("target", "_target.csv"),
        ("features", ".json"),
    ):
        if kind == folder and name.endswith(suffix):
            ds = name[: -len(suffix)]
            root = p.parent.parent
            if (root / "edges" / f"{ds}_edges.csv").is_file() and (
                root / "target" / f"{ds}_target.csv"
            ).is_file():
                return _Loc("musae", gt.musae_files(root, ds)["edges"], f"musae/{ds.lower()}", ds)
    return None


def _file_loc(p: Path) -> _Loc | None:
    """The dataset a file belongs to, or None if the file is of no known format."""
    name = p.name
    if name.endswith(".npz"):
        return _npz_loc(p)
    if name.endswith("-splits.npy"):
        raise DatasetFormatError(f"{p}: a LINKX split file, not a dataset (see read_linkx_splits)")
    if name.endswith(".mat"):
        stem = re.sub(r"\W+", "_", name[: -len(".mat")]).lower()
        return _Loc("facebook100", p, f"facebook100/{stem}")
    m = _PLANETOID.match(name)
    if m:
        graph = p.with_name(f"ind.{m['ds']}.graph")
        return _Loc("planetoid", graph, f"planetoid/{m['ds']}", m["ds"])
    if name.startswith("out1_") and name.endswith(".txt"):
        return _Loc("geom_gcn", p.parent, f"geom-gcn/{p.parent.name}")
    loc = _musae_loc(p)
    if loc:
        return loc
    if name in ("edges.csv", "target.csv", "features.csv"):
        return _Loc("karateclub", p.parent, f"karateclub/{p.parent.name}")
    m = re.match(r"^(?:labels-)?(?P<c>.+)-airports\.(?:edgelist|txt)$", name)
    if m:
        edgelist = p.with_name(f"{m['c']}-airports.edgelist")
        return _Loc("airports", edgelist, f"airports/{m['c']}")
    if name.endswith("-department-labels.txt"):
        edges = p.with_name(name[: -len("-department-labels.txt")] + ".txt")
        return _Loc("email_eu_core", edges, edges.stem.lower())
    if name.endswith(".txt") and p.with_name(f"{p.stem}-department-labels.txt").is_file():
        return _Loc("email_eu_core", p, p.stem.lower())
    for suffix in _TU_SUFFIXES:
        if name.endswith(suffix):
            ds = name[: -len(suffix)]
            return _Loc("tu", p.parent, f"tu/{ds.lower()}", ds)
    return None


def _folder_loc(p: Path) -> _Loc | None:
    if (p / "out1_graph_edges.txt").is_file() or (p / "out1_node_feature_label.txt").is_file():
        return _Loc("geom_gcn", p, f"geom-gcn/{p.name}")
    tu = sorted(f.name[: -len("_A.txt")] for f in p.glob("*_A.txt"))
    if len(tu) == 1:
        return _Loc("tu", p, f"tu/{tu[0].lower()}", tu[0])
    if (p / "edges.csv").is_file() and (p / "target.csv").is_file():
        return _Loc("karateclub", p, f"karateclub/{p.name}")
    return None


def _locate(p: Path) -> _Loc:
    if not p.exists():
        raise DatasetFormatError(f"{p}: no such file or folder")
    loc = _file_loc(p) if p.is_file() else _folder_loc(p)
    if loc is None and p.is_dir():
        refs = find_datasets(p)
        if len(refs) == 1:
            return _locate(Path(refs[0].path))
        if refs:
            names = ", ".join(r.name for r in refs[:8]) + (" ..." if len(refs) > 8 else "")
            raise DatasetFormatError(
                f"{p}: a folder holding {len(refs)} datasets ({names}); give one dataset's path"
            )
    if loc is None:
        raise DatasetFormatError(
            f"{p}: unknown dataset format (known: {', '.join(FORMATS)}; see jaxfm.data.registry)"
        )
    return loc


def detect_format(path: PathLike) -> str:
    """The format (one of :data:`FORMATS`) of the dataset at ``path``.

    Raises:
      DatasetFormatError: missing path, unknown format, or a split file rather than a dataset.
    """
    return _locate(Path(path)).format


# ---------------------------------------------------------------------------------------------
# Loading.


def _load(loc: _Loc, structural_if_missing: bool, kw: dict):
    f, p = loc.format, loc.path
    if f == "graph_npz":
        return gf.read_npz_graph(p, name=loc.name, **kw)
    if f == "heterophilous_npz":
        return gf.read_heterophilous_npz(p, name=loc.name, **kw)
    if f == "planetoid":
        return gf.read_planetoid(p.parent, loc.ds, name=loc.name, **kw)
    if f == "facebook100":
        return gf.read_facebook100_mat(p, name=loc.name, **kw)
    if f == "geom_gcn":
        if not (p / "out1_node_feature_label.txt").is_file():
            raise DatasetFormatError(
                f"{p}: out1_node_feature_label.txt is absent (no features or labels)"
            )
        return gt.read_geom_gcn(p, name=loc.name, **kw)
    if f == "musae":
        return gt.read_musae(
            p.parent.parent,
            loc.ds,
            name=loc.name,
            structural_if_missing=structural_if_missing,
            **kw,
        )
    if f == "karateclub":
        return gt.read_karateclub(
            p, name=loc.name, structural_if_missing=structural_if_missing, **kw
        )
    if f == "airports":
        return gt.read_airports(p, name=loc.name, **kw)
    if f == "email_eu_core":
        return gt.read_email_eu_core(p, name=loc.name, **kw)
    if f == "tu":
        return gt.read_tu(p, loc.ds, name=loc.name, seed=kw.get("seed", 0))
    raise AssertionError(f)  # pragma: no cover


def load_dataset(
    path_or_name: PathLike,
    *,
    root: PathLike | None = None,
    structural_if_missing: bool = False,
    num_random_splits: int = gf.NUM_RANDOM_SPLITS,
    seed: int = 0,
) -> NodeDataset | GraphClassificationDataset:
    """Loads a dataset given by path (format detected) or by registry name.

    Args:
      path_or_name: a dataset file or folder (any file of a multi-file dataset works, e.g.
        ``MUSAE/input/edges/DE_edges.csv``), a folder holding exactly one dataset, or a registry
        name as listed by :func:`find_datasets` (looked up under ``root``).
      root: where registry names are looked up (default :func:`default_root`).
      structural_if_missing: use structural features when a MUSAE / karateclub features file
        is absent (else that is an error).
      num_random_splits, seed: the seeded 60/20/20 splits made when there are no public ones.

    Returns:
      A validated :class:`NodeDataset` or :class:`GraphClassificationDataset` whose ``name`` is
      the registry name.

    Raises:
      DatasetFormatError: unknown name or format, missing / truncated / corrupt files, invalid
        contents (NaN features, labels or edges out of range, overlapping splits, no nodes).
    """
    p = Path(path_or_name)
    kw = {"num_random_splits": num_random_splits, "seed": seed}
    if p.exists():
        return _load(_locate(p), structural_if_missing, kw)
    is_name = re.fullmatch(r"[\w.\-]+/[\w.\- ]+", str(path_or_name)) is not None
    if root is None and not os.environ.get("JAXFM_DATASETS"):
        hint = " (a registry name needs root= or $JAXFM_DATASETS)" if is_name else ""
        raise DatasetFormatError(f"{path_or_name}: no such file or folder{hint}")
    where = Path(root) if root is not None else default_root()
    if where.is_dir() and re.fullmatch(r"[\w.\-]+(/[\w.\- ]+)?", str(path_or_name)):
        refs = find_datasets(
            where, include_skipped=True, structural_if_missing=structural_if_missing
        )
        for ref in refs:
            if ref.name == str(path_or_name):
                if ref.skip_reason:
                    raise DatasetFormatError(f"{ref.path}: {ref.skip_reason}")
                return _load(_locate(Path(ref.path)), structural_if_missing, kw)
    raise DatasetFormatError(
        f"{path_or_name}: no such file or folder, and no dataset of that name under {where}"
    )


# ---------------------------------------------------------------------------------------------
# Scanning.


def _ref(loc: _Loc, **meta) -> DatasetRef:
    return DatasetRef(
        name=loc.name, format=loc.format, path=str(loc.path), family=_family(loc.name), **meta
    )


def _peek(loc: _Loc, structural_if_missing: bool) -> DatasetRef:
    """Metadata without loading; ``skip_reason`` for present-but-unusable datasets."""
    p, f = loc.path, loc.format
    if f in ("graph_npz", "heterophilous_npz"):
        shapes = gio.npz_member_shapes(p)
        key = next(k for k in ("node_labels", "node_label", "labels") if k in shapes)
        splits = shapes["train_masks"][0][0] if f == "heterophilous_npz" else 0
        return _ref(loc, num_nodes=shapes[key][0][0], public_splits=splits)
    if f == "facebook100":
        import scipy.io

        try:
            info = {name: shape for name, shape, _ in scipy.io.whosmat(str(p))}
        except (ValueError, OSError, TypeError, EOFError, scipy.io.matlab.MatReadError) as e:
            raise DatasetFormatError(f"{p}: not a readable MATLAB file ({e})") from e
        if "A" not in info or "local_info" not in info:
            raise DatasetFormatError(f"{p}: not a facebook100 file (variables {sorted(info)})")
        return _ref(loc, num_nodes=int(info["A"][0]))
    if f == "planetoid":
        missing = gf.planetoid_missing(p.parent, loc.ds)
        if missing:
            return _ref(loc, skip_reason=f"incomplete Planetoid set, missing {missing}")
        graph = gio.load_restricted_pickle(p.read_bytes(), str(p))
        test = [int(v) for v in p.with_name(f"ind.{loc.ds}.test.index").read_text().split()]
        return _ref(loc, num_nodes=max(len(graph), max(test) + 1), public_splits=1)
    if f == "geom_gcn":
        feats = p / "out1_node_feature_label.txt"
        if not feats.is_file():
            return _ref(loc, skip_reason="out1_node_feature_label.txt absent (no features/labels)")
        splits = len(gt.geom_gcn_split_files(p))
        return _ref(loc, num_nodes=_count_lines(feats) - 1, public_splits=splits)
    if f in ("musae", "karateclub"):
        if f == "musae":
            files = gt.musae_files(p.parent.parent, loc.ds)
            feats, target = files["features"], files["target"]
        else:
            feats, target = p / "features.csv", p / "target.csv"
        ids, *_ = gt._target(target, "new_id")
        reason = "" if feats.is_file() or structural_if_missing else f"{feats.name} absent"
        return _ref(loc, num_nodes=int(ids.max()) + 1, skip_reason=reason)
    if f == "airports":
        labels = p.with_name(f"labels-{loc.name.split('/')[1]}-airports.txt")
        if not (p.is_file() and labels.is_file()):
            return _ref(loc, skip_reason=f"needs {p.name} and {labels.name}")
        return _ref(loc, num_nodes=_count_lines(labels) - 1)
    if f == "email_eu_core":
        labels = p.with_name(f"{p.stem}-department-labels.txt")
        if not (p.is_file() and labels.is_file()):
            return _ref(loc, skip_reason=f"needs {p.name} and {labels.name}")
        return _ref(loc, num_nodes=_count_lines(labels))
    if f == "tu":
        files = gt.tu_files(p, loc.ds)
        need = [files[k].name for k in ("A", "graph_indicator", "graph_labels")]
        if not all((p / n).is_file() for n in need):
            return _ref(loc, level="graph", skip_reason=f"TU set needs {need}")
        return _ref(
            loc,
            level="graph",
            num_nodes=_count_lines(files["graph_indicator"]),
            num_graphs=_count_lines(files["graph_labels"]),
            public_splits=0,
        )
    raise AssertionError(f)  # pragma: no cover


def find_datasets(
    root: PathLike, *, include_skipped: bool = False, structural_if_missing: bool = False
) -> list[DatasetRef]:
    """Every dataset in a known format under ``root`` (recursively), sorted by name.

    One entry per dataset (a Geom-GCN folder, a MUSAE name, a Planetoid name, a TU folder are
    one dataset each). Files of no known format are ignored. Names are unique: a later
    duplicate (the same dataset copied twice) gets ``~2``, ``~3``... appended.

    Args:
      root: a folder (or a single dataset file / folder).
      include_skipped: also list present-but-unusable datasets, with ``skip_reason`` set.
      structural_if_missing: count MUSAE / karateclub sets without a features file as usable.

    Raises:
      DatasetFormatError: ``root`` does not exist, or a file claiming a known format is
        unreadable (corrupt ``.npz`` / ``.mat``).
    """
    root = Path(root)
    if not root.exists():
        raise DatasetFormatError(f"{root}: no such file or folder")
    locs: dict[tuple[str, str, str], _Loc] = {}
    bad: list[DatasetRef] = []

    def add(loc: _Loc | None) -> None:
        if loc is not None:
            locs.setdefault((loc.format, str(loc.path), loc.ds), loc)

    if root.is_file():
        add(_file_loc(root))
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        d = Path(dirpath)
        folder = _folder_loc(d)
        add(folder)
        for fn in sorted(filenames):
            p = d / fn
            if _GEOM_SPLIT.search(fn) or fn.endswith("-splits.npy"):
                continue
            if folder is not None and folder.format in ("geom_gcn", "karateclub", "tu"):
                continue
            try:
                add(_file_loc(p))
            except DatasetFormatError as e:
                bad.append(_unreadable(root, p, e))
    refs, seen = [], {}
    for loc in sorted(locs.values(), key=lambda loc: (loc.name, str(loc.path))):
        try:
            ref = _peek(loc, structural_if_missing)
        except (DatasetFormatError, OSError) as e:
            ref = _unreadable(root, loc.path, e)
        if ref.skip_reason and not include_skipped:
            continue
        k = seen[ref.name] = seen.get(ref.name, 0) + 1
        if k > 1:
            ref = dataclasses.replace(ref, name=f"{ref.name}~{k}")
        refs.append(ref)
    return refs + (bad if include_skipped else [])


def _unreadable(root: Path, p: Path, err: Exception) -> DatasetRef:
    rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name
    return DatasetRef(name=f"?/{rel}", format="", path=str(p), skip_reason=str(err))
