"""Laplacian PEs cached on disk between runs (issue 15 item 5): a second corpus build reads them,
`jaxfm pretrain` uses a per-user folder by default, and an unwritable folder never stops a run."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxfm.graph.laplacian as laplacian
from jaxfm.data.corpus import build_corpus
from jaxfm.data.sbm import SBMParams, sbm_graph
from jaxfm.graph.laplacian import LaplacianPECache, resolve_pe_cache_dir


def _datasets():
    return [
        sbm_graph(SBMParams(num_nodes=n, num_classes=3, feature_dim=12), seed=i, name=f"g{i}")
        for i, n in enumerate((120, 90, 200))
    ]


def _build(ds, cache_dir):
    return build_corpus(
        ds, feature_dim=8, pe_dim=4, node_budget=512, seed=0, pe_cache_dir=cache_dir
    )


def test_a_second_corpus_build_reads_the_pes_from_disk(tmp_path, monkeypatch):
    ds = _datasets()
    first = _build(ds, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == len(ds)

    def no_solver(*args, **kwargs):
        raise AssertionError("the PE was recomputed instead of read from the disk cache")

    monkeypatch.setattr(laplacian, "laplacian_pe", no_solver)
    second = _build(ds, tmp_path)  # a new process would start with an empty memory cache
    for a, b in zip(first.graphs, second.graphs, strict=True):
        assert a.pe.dtype == b.pe.dtype == np.float32
        np.testing.assert_array_equal(a.pe, b.pe)
    with pytest.raises(AssertionError, match="recomputed"):  # another seed is another entry
        build_corpus(ds, feature_dim=8, pe_dim=4, node_budget=512, seed=1, pe_cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="recomputed"):  # and another k
        build_corpus(ds, feature_dim=8, pe_dim=3, node_budget=512, seed=0, pe_cache_dir=tmp_path)


def test_another_edge_set_of_the_same_size_is_not_served_the_cached_pe(tmp_path):
    s, r = np.arange(9), np.arange(1, 10)  # path of 10 nodes
    cache = LaplacianPECache(tmp_path)
    path_pe = cache.get(s, r, 10, 3)
    cycle = LaplacianPECache(tmp_path).get(np.arange(10), (np.arange(10) + 1) % 10, 10, 3)
    assert not np.array_equal(path_pe, cycle)
    np.testing.assert_array_equal(
        cycle, laplacian.laplacian_pe(np.arange(10), (np.arange(10) + 1) % 10, 10, 3)
    )


def test_an_unwritable_cache_folder_warns_once_and_the_build_goes_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match="cannot be written") as caught:
        corpus = _build(_datasets(), blocker / "pe")
    assert len([w for w in caught if "cannot be written" in str(w.message)]) == 1
    assert all(g.pe.shape[1] == 4 for g in corpus.graphs)


def test_the_default_folder_follows_the_environment(tmp_path):
    assert resolve_pe_cache_dir("auto", {"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "jaxfm/pe"
    assert resolve_pe_cache_dir("auto", {"JAXFM_PE_CACHE": str(tmp_path / "x")}) == tmp_path / "x"
    for off in ("off", "OFF", "0", "none"):
        assert resolve_pe_cache_dir("auto", {"JAXFM_PE_CACHE": off}) is None
        assert resolve_pe_cache_dir(off, {"JAXFM_PE_CACHE": str(tmp_path)}) is None
    assert resolve_pe_cache_dir(None) is None
    assert resolve_pe_cache_dir(str(tmp_path / "y"), {}) == tmp_path / "y"


class _Stop(Exception):
    pass


def test_pretrain_builds_its_corpus_with_the_configured_cache_folder(tmp_path, monkeypatch):
    import jaxfm.data.corpus as corpus_module
    from jaxfm.train.graphfm_pretrain import PretrainConfig, pretrain

    seen = []

    def capture(datasets, **kwargs):
        seen.append(kwargs.get("pe_cache_dir"))
        raise _Stop

    monkeypatch.setattr(corpus_module, "build_corpus", capture)
    cfg = dict(synthetic_graphs=1, synthetic_nodes=(20, 30), steps=1, workdir=str(tmp_path / "w"))
    for setting, want in [
        (str(tmp_path / "pe"), tmp_path / "pe"),
        ("off", None),
        ("auto", None),  # tests/conftest.py: JAXFM_PE_CACHE=off
    ]:
        with pytest.raises(_Stop):
            pretrain(PretrainConfig(pe_cache_dir=setting, **cfg), progress=False, log_stream=None)
        assert seen[-1] == want
    monkeypatch.setenv("JAXFM_PE_CACHE", str(tmp_path / "env"))
    with pytest.raises(_Stop):
        pretrain(PretrainConfig(**cfg), progress=False, log_stream=None)
    assert seen[-1] == tmp_path / "env"


def test_the_cli_flag_sets_the_field_and_a_resume_may_change_it(tmp_path):
    from jaxfm.cli import _parser
    from jaxfm.cli.graphfm import _pretrain_config, _resumed_pretrain_config
    from jaxfm.cli.resume import given_dests
    from jaxfm.graphfm import graphfm_config
    from jaxfm.train.graphfm_pretrain import run_info

    def args(argv):
        parser = _parser()
        parsed = parser.parse_args(argv)
        parsed.given = given_dests(parser, argv)
        return parsed

    wd = tmp_path / "w"
    start = args(["pretrain", "--workdir", str(wd), "--pe-cache-dir", str(tmp_path / "a")])
    cfg = _pretrain_config(start)
    assert cfg.pe_cache_dir == str(tmp_path / "a")
    assert _pretrain_config(args(["pretrain"])).pe_cache_dir == "auto"
    info = run_info(cfg, graphfm_config(cfg.model))
    assert "pe_cache_dir" not in info  # where the PEs are read from is not the run's identity
    wd.mkdir()
    (wd / "run.json").write_text(json.dumps({"pretrain": info, "outputs": {}}, default=str))
    resume = args(["pretrain", "--workdir", str(wd), "--resume", "--pe-cache-dir", "off"])
    assert _resumed_pretrain_config(resume, _pretrain_config(resume)).pe_cache_dir == "off"
