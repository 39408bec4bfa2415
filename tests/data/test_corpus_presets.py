"""The paper's corpus presets (GraphFM appendix B.2): matching by graph family, the missing list,
and corpus selection keeping only a preset's graphs."""

from __future__ import annotations

import numpy as np
import pytest

from jaxfm.data import selection
from jaxfm.data.corpus_presets import CORPUS_PRESETS, resolve_preset
from jaxfm.data.graph_dataset import NodeDataset
from jaxfm.data.registry import DatasetRef
from jaxfm.train.graphfm_pretrain import PretrainConfig

PAPER_SMALL = (
    "Wiki, BlogCatalog, Roman-empire, Minesweeper, Tolokers, Questions, Twitch-EN, Twitch-FR, "
    "Twitch-PT, Twitch-RU, DeezerEurope, GitHub, LastFMAsia, Airports-USA, Airports-Europe, "
    "PolBlogs, EmailEUCore"
)


def test_presets_list_the_papers_graphs():
    assert list(CORPUS_PRESETS["paper-small"]) == PAPER_SMALL.split(", ")
    medium = CORPUS_PRESETS["paper-medium"]
    assert set(CORPUS_PRESETS["paper-small"]) < set(medium)
    assert len(medium) == 17 + 19  # B.2 lists Minesweeper twice; it is one graph


def test_resolve_reports_found_and_missing():
    m = resolve_preset("paper-small", ["twitch_engb", "usa", "cora", "minesweeper"])
    assert m.found == {
        "Minesweeper": "minesweeper",
        "Twitch-EN": "twitch_engb",
        "Airports-USA": "usa",
    }
    assert "Cora" not in m.found and len(m.missing) == 14 and "Wiki" in m.missing
    assert m.families == {"minesweeper", "twitch_engb", "usa"}
    assert m.describe().startswith("corpus preset paper-small: 3 of 17 graphs found; missing: Wiki")
    with pytest.raises(ValueError, match="unknown; choose from"):
        resolve_preset("paper-huge", [])


def _ds(name: str) -> NodeDataset:
    return NodeDataset(
        name=name, senders=np.zeros(0, np.int32), receivers=np.zeros(0, np.int32), num_nodes=2,
        x=np.zeros((2, 1), np.float32), y=np.zeros(2, np.int32), num_classes=1,
    )  # fmt: skip


def test_select_datasets_keeps_only_the_presets_graphs(monkeypatch):
    refs = [
        DatasetRef(
            name="graphdata/blogcatalog", format="graphdata", path="a", family="blogcatalog"
        ),
        DatasetRef(name="gnn-benchmark/cora", format="gnn-benchmark", path="b", family="cora"),
        DatasetRef(name="musae/ru", format="musae", path="c", family="twitch_ru"),
        DatasetRef(name="airports/usa", format="airports", path="d", family="usa"),
    ]
    monkeypatch.setattr(selection, "find_datasets", lambda path: refs)
    monkeypatch.setattr(selection, "load_dataset", lambda path: _ds(path))
    logged = []
    got = selection.select_datasets(
        ["root"], exclude=["^usa$"], preset="paper-small", log=logged.append
    )
    assert [d.name for d in got] == [
        "graphdata/blogcatalog",
        "musae/ru",
    ]  # usa excluded, cora not in it
    assert logged[0].startswith("corpus preset paper-small: 3 of 17 graphs found")
    every = selection.select_datasets(["root"], log=logged.append)
    assert len(every) == 4
    monkeypatch.setattr(selection, "find_datasets", lambda path: refs[1:2])
    with pytest.raises(ValueError, match="none of its graphs"):
        selection.select_datasets(["root"], preset="paper-small", log=logged.append)


def test_pretrain_config_checks_the_preset():
    assert PretrainConfig(data=("x",), corpus="paper-medium").corpus == "paper-medium"
    with pytest.raises(ValueError, match="unknown; choose from"):
        PretrainConfig(data=("x",), corpus="small")
    with pytest.raises(ValueError, match="needs the dataset folders"):
        PretrainConfig(corpus="paper-small")
