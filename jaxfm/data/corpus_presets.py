"""The GraphFM paper's pretraining corpora (appendix B.2) as named presets.

A preset lists the paper's graphs by name, each with the registry families that hold it
(:func:`jaxfm.data.registry.find_datasets` gives every dataset a family, the graph it is a copy
of). :func:`resolve_preset` matches them against the datasets under some folders and says which of
the paper's graphs are there and which are missing, so a run states exactly how its corpus differs
from the paper's.

The mapping is by graph, not by file: where the paper names a graph that several collections
hold (CiteSeer is in gnn-benchmark, GraphData and Planetoid), any copy counts, and the corpus
keeps one per family as :func:`jaxfm.data.selection.select_datasets` does. Graphs whose public
copies carry no node features (DeezerEurope, LastFMAsia and GitHub in karateclub/MUSAE) count as
missing: the node-feature tokenizer needs features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

__all__ = ["CORPUS_PRESETS", "PresetMatch", "resolve_preset"]

# paper name -> registry families that hold that graph (empty: no known copy)
_SMALL: dict[str, tuple[str, ...]] = {
    "Wiki": ("wiki",),
    "BlogCatalog": ("blogcatalog",),
    "Roman-empire": ("roman_empire", "roman-empire"),
    "Minesweeper": ("minesweeper",),
    "Tolokers": ("tolokers",),
    "Questions": ("questions",),
    "Twitch-EN": ("twitch_engb",),
    "Twitch-FR": ("twitch_fr",),
    "Twitch-PT": ("twitch_ptbr",),
    "Twitch-RU": ("twitch_ru",),
    "DeezerEurope": ("deezer_europe", "deezer"),
    "GitHub": ("github", "git"),
    "LastFMAsia": ("lastfm_asia", "lastfm"),
    "Airports-USA": ("usa",),
    "Airports-Europe": ("europe",),
    "PolBlogs": ("polblogs",),
    "EmailEUCore": ("email-eu-core",),
}
_MEDIUM_EXTRA: dict[str, tuple[str, ...]] = {
    "Reddit": ("reddit",),
    "Reddit2": ("reddit2",),
    "Flickr": ("flickr",),
    "Yelp": ("yelp",),
    "PPI": ("ppi",),
    "Facebook": ("facebook_linkx",),  # LINKX's Facebook100 union; FacebookPagePage is below
    "Amazon-ratings": ("amazon_ratings", "amazon-ratings"),
    "Twitch-DE": ("twitch_de",),
    "Twitch-ES": ("twitch_es",),
    "FacebookPagePage": ("facebook",),
    "Airports-Brazil": ("brazil",),
    "penn94": ("penn94",),
    "reed98": ("reed98",),
    "amherst41": ("amherst41",),
    "johnshopkins55": ("johns_hopkins55",),
    "genius": ("genius",),
    "CitationFull-CiteSeer": ("citeseer",),
    "CitationFull-Cora-ML": ("cora_ml",),
    "CitationFull-PubMed": ("pubmed",),
}

#: preset name -> {paper graph name: registry families}
CORPUS_PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "paper-small": dict(_SMALL),
    "paper-medium": {**_SMALL, **_MEDIUM_EXTRA},
}


@dataclasses.dataclass(frozen=True)
class PresetMatch:
    """Which of a preset's graphs were found.

    Attributes:
      preset: the preset's name.
      found: paper graph name -> the family found for it.
      missing: paper graph names with no copy among the datasets.
    """

    preset: str
    found: dict[str, str]
    missing: tuple[str, ...]

    @property
    def families(self) -> frozenset[str]:
        return frozenset(self.found.values())

    def describe(self) -> str:
        total = len(self.found) + len(self.missing)
        text = f"corpus preset {self.preset}: {len(self.found)} of {total} graphs found"
        if self.missing:
            text += f"; missing: {', '.join(self.missing)}"
        return text


def resolve_preset(name: str, available_families: Sequence[str]) -> PresetMatch:
    """Matches preset ``name`` against the families of the available datasets.

    >>> m = resolve_preset("paper-small", ["blogcatalog", "usa", "cora"])
    >>> sorted(m.found.items())
    [('Airports-USA', 'usa'), ('BlogCatalog', 'blogcatalog')]
    >>> len(m.missing)
    15

    Raises:
      ValueError: an unknown preset name (the message lists the known ones).
    """
    if name not in CORPUS_PRESETS:
        raise ValueError(f"corpus preset {name!r} is unknown; choose from {sorted(CORPUS_PRESETS)}")
    have = set(available_families)
    found, missing = {}, []
    for graph, families in CORPUS_PRESETS[name].items():
        hit = next((f for f in families if f in have), None)
        if hit is None:
            missing.append(graph)
        else:
            found[graph] = hit
    return PresetMatch(name, found, tuple(missing))
