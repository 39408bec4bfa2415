"""Dataset registry: format detection, folder scan, loading by path or name, errors; and the
real ``../shared/datasets`` files against the counts in their SOURCES.md."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxfm.data.graph_dataset import GraphClassificationDataset, NodeDataset
from jaxfm.data.graph_validate import DatasetFormatError
from jaxfm.data.registry import detect_format, find_datasets, load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "graphs"))
import make_graph_fixtures as mk

FIXTURE_NAMES = {
    "airports/toy": ("airports", 4),
    "email-eu-core": ("email_eu_core", 4),
    "facebook100/tiny_college1": ("facebook100", 4),
    "geom-gcn/tiny": ("geom_gcn", 5),
    "geom-gcn/tinyfilm": ("geom_gcn", 3),
    "gnn-benchmark/tiny": ("graph_npz", 5),
    "graphdata/nofeat": ("graph_npz", 5),
    "graphdata/tiny": ("graph_npz", 5),
    "heterophilous/tiny": ("heterophilous_npz", 5),
    "heterophilous/tiny_directed": ("heterophilous_npz", 5),
    "karateclub/tiny": ("karateclub", 5),
    "musae/wiki": ("musae", 3),
    "musae/xx": ("musae", 5),
    "planetoid/toy": ("planetoid", 6),
    "tu/plain": ("tu", 5),
    "tu/toy": ("tu", 6),
}


@pytest.fixture(scope="module")
def fx(fixtures_dir) -> Path:
    return fixtures_dir / "graphs"


def test_scan_finds_one_entry_per_dataset(fx):
    refs = find_datasets(fx)
    assert {r.name: (r.format, r.num_nodes) for r in refs} == FIXTURE_NAMES
    by = {r.name: r for r in refs}
    assert by["heterophilous/tiny"].public_splits == 2 and by["geom-gcn/tiny"].public_splits == 2
    assert by["planetoid/toy"].public_splits == 1 and by["graphdata/tiny"].public_splits == 0
    assert (by["tu/toy"].level, by["tu/toy"].num_graphs) == ("graph", 3)
    for r in refs:  # every ref loads, under the same name and node count
        ds = load_dataset(r.path)
        n = ds.num_nodes if isinstance(ds, NodeDataset) else sum(g.num_nodes for g in ds.graphs)
        assert (ds.name, n) == (r.name, r.num_nodes)


def test_scan_lists_skipped_datasets_with_reasons(fx):
    skipped = {r.name: r.skip_reason for r in find_datasets(fx, include_skipped=True)}
    assert (
        skipped["geom-gcn/edgesonly"] == "out1_node_feature_label.txt absent (no features/labels)"
    )
    assert skipped["karateclub/nofeat"] == "features.csv absent"
    assert skipped["musae/nofeat"] == "nofeat.json absent"
    usable = {r.name for r in find_datasets(fx, structural_if_missing=True)}
    assert {"karateclub/nofeat", "musae/nofeat"} <= usable
    assert "geom-gcn/edgesonly" not in usable


def test_detect_format_from_any_file_of_a_dataset(fx):
    assert detect_format(fx / "GraphData" / "tiny.npz") == "graph_npz"
    assert detect_format(fx / "heterophilous" / "tiny.npz") == "heterophilous_npz"
    assert detect_format(fx / "planetoid" / "ind.toy.tx") == "planetoid"
    assert detect_format(fx / "geom-gcn" / "new_data" / "tiny") == "geom_gcn"
    assert detect_format(fx / "geom-gcn" / "new_data" / "tiny" / "out1_graph_edges.txt") == (
        "geom_gcn"
    )
    assert detect_format(fx / "MUSAE" / "input" / "features" / "XX.json") == "musae"
    assert detect_format(fx / "karateclub" / "tiny" / "target.csv") == "karateclub"
    assert detect_format(fx / "airports" / "labels-toy-airports.txt") == "airports"
    assert detect_format(fx / "email" / "email-Eu-core-department-labels.txt") == "email_eu_core"
    assert detect_format(fx / "TU" / "TOY" / "raw" / "TOY_graph_labels.txt") == "tu"
    assert detect_format(fx / "TU" / "TOY") == "tu"  # a folder holding exactly one dataset
    assert detect_format(fx / "facebook100") == "facebook100"
    a = load_dataset(fx / "MUSAE" / "input" / "target" / "XX_target.csv")
    b = load_dataset(fx / "MUSAE" / "input" / "edges" / "XX_edges.csv")
    assert a.name == b.name == "musae/xx"
    np.testing.assert_array_equal(a.y, b.y)


def test_load_by_registry_name(fx):
    ds = load_dataset("heterophilous/tiny", root=fx)
    assert isinstance(ds, NodeDataset) and len(ds.splits) == 2
    tu = load_dataset("tu/toy", root=fx)
    assert isinstance(tu, GraphClassificationDataset) and tu.name == "tu/toy"
    with pytest.raises(DatasetFormatError, match=r"features\.csv absent"):
        load_dataset("karateclub/nofeat", root=fx)
    assert load_dataset("karateclub/nofeat", root=fx, structural_if_missing=True).num_nodes == 3
    with pytest.raises(DatasetFormatError, match="no dataset of that name"):
        load_dataset("graphdata/nothing", root=fx)


def test_seeded_splits_options(fx):
    a = load_dataset(fx / "GraphData" / "tiny.npz", num_random_splits=3, seed=7)
    b = load_dataset(fx / "GraphData" / "tiny.npz", num_random_splits=3, seed=7)
    assert len(a.splits) == 3
    np.testing.assert_array_equal(a.splits[2].test, b.splits[2].test)


def test_registry_errors(fx, tmp_path):
    with pytest.raises(DatasetFormatError, match="no such file or folder"):
        load_dataset(tmp_path / "missing.npz")
    (tmp_path / "data.bin").write_bytes(b"\x00\x01")
    with pytest.raises(DatasetFormatError, match=r"data\.bin: unknown dataset format"):
        load_dataset(tmp_path / "data.bin")
    np.savez(tmp_path / "other.npz", foo=np.zeros(3))
    with pytest.raises(DatasetFormatError, match=r"other\.npz: unknown \.npz layout"):
        load_dataset(tmp_path / "other.npz")
    split = fx / "geom-gcn" / "splits" / "tiny_split_0.6_0.2_0.npz"
    with pytest.raises(DatasetFormatError, match="a Geom-GCN split file, not a dataset"):
        load_dataset(split)
    with pytest.raises(DatasetFormatError, match="a LINKX split file"):
        load_dataset(fx / "LINKX" / "tiny-splits.npy")
    with pytest.raises(DatasetFormatError, match="a folder holding 2 datasets"):
        load_dataset(fx / "heterophilous")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetFormatError, match="empty: unknown dataset format"):
        load_dataset(empty)
    with pytest.raises(DatasetFormatError, match="no such file"):
        find_datasets(tmp_path / "nowhere")


def test_scan_survives_corrupt_files(tmp_path):
    root = mk.write_all(tmp_path / "g")
    bad = root / "GraphData" / "tiny.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    (root / "facebook100" / "Tiny College1.mat").write_bytes(b"not matlab")
    refs = find_datasets(root, include_skipped=True)
    broken = {r.name: r.skip_reason for r in refs if r.name.startswith("?/")}
    assert set(broken) == {"?/GraphData/tiny.npz", "?/facebook100/Tiny College1.mat"}
    assert "not a readable .npz" in broken["?/GraphData/tiny.npz"]
    assert "not a readable MATLAB file" in broken["?/facebook100/Tiny College1.mat"]
    names = {r.name for r in find_datasets(root)}
    assert "graphdata/nofeat" in names and "facebook100/tiny_college1" not in names
    with pytest.raises(DatasetFormatError, match=r"GraphData/tiny\.npz: not a readable"):
        load_dataset(bad)


def test_duplicate_copies_get_unique_names(fx, tmp_path):
    import shutil

    for k in ("a", "b"):
        shutil.copytree(fx / "heterophilous", tmp_path / k / "heterophilous")
    names = [r.name for r in find_datasets(tmp_path)]
    assert names.count("heterophilous/tiny") == 1 and "heterophilous/tiny~2" in names


# ---------------------------------------------------------------------------------------------
# Real datasets (../shared/datasets, see its SOURCES.md). Loading all of them takes seconds.


@pytest.fixture(scope="module")
def real(shared_dir) -> Path:
    root = shared_dir / "datasets"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    return root


# name -> (nodes, undirected edges, features, classes, public splits); None = not checked
REAL = {
    "graphdata/amazon_cs": (13752, 245861, 767, 10, 0),
    "graphdata/coauthor_phy": (34493, 247962, 8415, 5, 0),
    "graphdata/cora": (2708, 5278, 1433, 7, 0),
    "graphdata/blogcatalog": (5196, 171743, 8189, 6, 0),
    "graphdata/polblogs": (1490, 16715, 36, 2, 0),
    "gnn-benchmark/citeseer": (3312, 4536, 3703, 6, 0),
    "heterophilous/chameleon": (2277, 31371, 2325, 5, 10),
    "heterophilous/squirrel": (5201, 198353, 2089, 5, 10),
    "heterophilous/actor": (7600, 26659, 932, 5, 10),
    "heterophilous/tolokers": (11758, 519000, 10, 2, 10),
    "geom-gcn/cornell": (183, 277, 1703, 5, 10),
    "geom-gcn/film": (7600, 26659, 932, 5, 10),
    "planetoid/cora": (2708, None, 1433, 7, 1),
    "airports/usa": (1190, 13599, 36, 4, 0),
    "airports/europe": (399, 5993, 36, 4, 0),
    "airports/brazil": (131, 1003, 36, 4, 0),
    "email-eu-core": (1005, 16064, 36, 42, 0),
    "facebook100/reed98": (962, 18812, None, 2, 0),
    "facebook100/amherst41": (2235, 90954, None, 2, 0),
    "musae/facebook": (22470, 170823, 4714, 4, 0),
    "musae/de": (9498, 153138, 3170, 2, 0),
    "musae/fr": (6549, 112666, 3170, 2, 0),
    "karateclub/twitch": (7126, 35324, 3170, 2, 0),
}


def test_real_scan(real):
    t = time.perf_counter()
    refs = find_datasets(real)
    assert time.perf_counter() - t < 10
    by = {r.name: r for r in refs}
    assert set(REAL) <= set(by) and {"tu/mutag", "tu/proteins"} <= set(by)
    assert len(by) == len(refs)
    for name, (n, *_, splits) in REAL.items():
        assert (by[name].num_nodes, by[name].public_splits) == (n, splits), name
    skipped = {r.name: r.skip_reason for r in find_datasets(real, include_skipped=True)}
    for name in ("geom-gcn/chameleon", "geom-gcn/squirrel", "planetoid/pubmed", "musae/git"):
        assert skipped[name], name
    assert by["geom-gcn/film"].family == by["heterophilous/actor"].family == "actor"
    assert by["musae/chameleon"].family == by["heterophilous/chameleon"].family


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_counts(real, name):
    ref = next(r for r in find_datasets(real) if r.name == name)
    ds = load_dataset(ref.path)
    n, e, f, c, s = REAL[name]
    assert ds.num_nodes == n and ds.num_classes == c and len(ds.splits) == (s or 10)
    if e is not None:
        assert ds.num_edges == 2 * e  # both directions, no self loops
    if f is not None:
        assert ds.num_features == f
    assert ds.structural_features == (f == 36)


def test_real_split_sizes_and_cross_source_agreement(real):
    film = load_dataset(real / "geom-gcn" / "new_data" / "film")
    actor = load_dataset(real / "heterophilous-graphs" / "data" / "actor.npz")
    s = film.splits[0]
    assert [int(m.sum()) for m in (s.train, s.val, s.test)] == [3648, 2432, 1520]
    np.testing.assert_array_equal(film.senders, actor.senders)
    np.testing.assert_array_equal(film.receivers, actor.receivers)
    np.testing.assert_array_equal(film.y, actor.y)
    np.testing.assert_array_equal(film.x.toarray(), actor.x)
    cham = load_dataset(real / "heterophilous-graphs" / "data" / "chameleon.npz")
    s = cham.splits[0]
    assert [int(m.sum()) for m in (s.train, s.val, s.test)] == [1092, 729, 456]
    fb = load_dataset(real / "LINKX" / "data" / "facebook100" / "Johns Hopkins55.mat")
    assert fb.name == "facebook100/johns_hopkins55" and fb.num_edges == 2 * 186586
    assert set(np.unique(fb.y)) == {-1, 0, 1}


def test_real_tu(real):
    tu = real / "TUDataset" / "data" / "TUDataset"
    mutag = load_dataset(tu / "MUTAG" / "raw")
    assert len(mutag.graphs) == 188 and mutag.num_classes == 2
    assert sum(g.num_nodes for g in mutag.graphs) == 3371
    assert sum(g.senders.size for g in mutag.graphs) == 7442
    assert mutag.graphs[0].x.shape[1] == 7 and len(mutag.folds) == 10
    np.testing.assert_array_equal(np.bincount(mutag.y), [63, 125])
    proteins = load_dataset(tu / "PROTEINS")
    assert len(proteins.graphs) == 1113 and sum(g.num_nodes for g in proteins.graphs) == 43471
    assert proteins.graphs[0].x.shape[1] == 4  # 3 node labels + 1 attribute


def test_load_everything_is_fast(real):
    t = time.perf_counter()
    refs = find_datasets(real)
    total = 0
    for r in refs:
        ds = load_dataset(r.path)
        total += (
            ds.num_nodes if isinstance(ds, NodeDataset) else sum(g.num_nodes for g in ds.graphs)
        )
    assert len(refs) >= 50 and total > 300_000
    assert time.perf_counter() - t < 60
