"""FIMP-GenePT: a pretrained gene-embedding table (e.g. GenePT's text embeddings of gene
summaries) as FIMP's gene-identity embedding.

The table is read from a user file in a pickle-free format (:func:`read_gene_table`), matched by
gene symbol to the dataset's genes (:func:`match_gene_table`; exact symbol first, then
case-insensitive, as :func:`jaxfm.data.map_gene_symbols`), and grafted into
``tokenizer/gene_embedding/embedding`` of the ordinary :class:`~jaxfm.fimp.tokenizers.GeneTokenizer`
(with ``gene_embedding_dim`` = the table width, so a learned ``gene_projection`` maps it to the
token width). **Missing genes get a zero row**: unlike matched rows they carry no prior
knowledge; they are trained like every row unless ``--freeze-pretrained`` freezes the whole table
(then they stay zero, an "unknown gene" embedding). The message creator is trained from scratch.

Formats:

* ``.csv``: one gene per row, ``gene,v1,v2,...``; an optional header row (its value fields are
  not numbers) is skipped.
* ``.json``: an object ``{"GENE": [v1, v2, ...], ...}``.
* ``.npy``: a float matrix ``[G, De]`` with a companion gene list, one symbol per line, named
  ``<stem>.genes.txt`` or ``<stem>.txt`` beside it (or given explicitly).
* ``.npz``: arrays ``genes [G]`` (strings) and ``embeddings [G, De]``.

Pickles (GenePT's own ``.pickle`` release) are refused: convert once, where you trust the file,
e.g. ``python -c "import json,pickle; json.dump(pickle.load(open('x.pickle','rb')),
open('x.json','w'))"``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxfm.data import map_gene_symbols

__all__ = ["GeneTable", "GeneTableMatch", "match_gene_table", "read_gene_table"]

_PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class GeneTable:
    """A gene-embedding table.

    Attributes:
      genes: symbols, one per row.
      embeddings: ``[G, De]`` float32.
      path: the file it came from.
    """

    genes: tuple[str, ...]
    embeddings: np.ndarray
    path: str

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class GeneTableMatch:
    """A table matched to a dataset's genes.

    Attributes:
      table: ``[G_data, De]`` float32, row g for dataset gene g (zero where missing).
      found: ``[G_data]`` bool.
      missing: dataset symbols without a table row, in dataset order.
    """

    table: np.ndarray
    found: np.ndarray
    missing: tuple[str, ...]

    def report(self, limit: int = 20) -> dict:
        """JSON-able counts (and the first ``limit`` missing symbols)."""
        return {
            "genes": int(self.found.size),
            "matched": int(self.found.sum()),
            "missing": len(self.missing),
            "missing_genes": list(self.missing[:limit]),
            "missing_policy": "zero row (trained unless --freeze-pretrained)",
        }


def _fail(path, msg: str):
    raise ValueError(f"gene table {path}: {msg}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> tuple[list[str], list[list[float]]]:
    genes, rows = [], []
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, fields in enumerate(csv.reader(fh), start=1):
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) < 2:
                _fail(path, f"line {lineno}: expected 'gene,v1,v2,...', got {fields!r}")
            values = [f.strip() for f in fields[1:]]
            if not all(_is_number(v) for v in values):
                if not genes and not rows:
                    continue  # header row
                _fail(path, f"line {lineno} (gene {fields[0]!r}): non-numeric value")
            genes.append(fields[0].strip())
            rows.append([float(v) for v in values])
    return genes, rows


def _read_json(path: Path) -> tuple[list[str], list[list[float]]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        _fail(path, f"not valid JSON ({e})")
    if not isinstance(obj, dict):
        _fail(path, 'expected a JSON object {"GENE": [v1, v2, ...]}')
    genes, rows = [], []
    for gene, vec in obj.items():
        if not isinstance(vec, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in vec
        ):
            _fail(path, f"gene {gene!r}: expected a list of numbers")
        genes.append(gene)
        rows.append(vec)
    return genes, rows


def _companion(path: Path) -> Path:
    for cand in (path.with_suffix(".genes.txt"), path.with_suffix(".txt")):
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"gene table {path}: a .npy table needs its gene list (one symbol per line) in "
        f"{path.with_suffix('.genes.txt').name} or {path.with_suffix('.txt').name} beside it"
    )


def read_gene_table(path: str | os.PathLike, *, genes_path: str | None = None) -> GeneTable:
    """Reads a gene-embedding table (``.csv``, ``.json``, ``.npy`` + gene list, ``.npz``).

    Args:
      path: the table file.
      genes_path: the gene list of a ``.npy`` table (default: the companion file).

    Raises:
      FileNotFoundError: the file (or a ``.npy``'s gene list) is missing.
      ValueError: pickles, unknown suffixes, rows of different widths, non-finite values,
        duplicate or empty symbols, an empty table (the file and gene/line named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gene table {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        _fail(
            path,
            "pickled tables are refused (loading a pickle can run code); convert it once to "
            ".json/.csv/.npy where you trust it (see jaxfm.fimp.genept)",
        )
    if suffix == ".csv":
        genes, rows = _read_csv(path)
    elif suffix == ".json":
        genes, rows = _read_json(path)
    elif suffix in (".npy", ".npz"):
        try:
            if suffix == ".npy":
                matrix = np.load(path, allow_pickle=False)
                names = Path(genes_path) if genes_path else _companion(path)
                if not names.is_file():
                    raise FileNotFoundError(f"gene list {names}: no such file")
                genes = [ln.strip() for ln in names.read_text(encoding="utf-8").splitlines()]
                genes = [g for g in genes if g]
            else:
                with np.load(path, allow_pickle=False) as f:
                    if "genes" not in f.files or "embeddings" not in f.files:
                        _fail(path, "a .npz table needs arrays 'genes' and 'embeddings'")
                    genes, matrix = [str(g) for g in f["genes"]], f["embeddings"]
        except ValueError as e:
            if "pickle" in str(e).lower():
                _fail(path, "holds pickled objects (refused); store plain numbers / strings")
            raise
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
            _fail(
                path, f"expected a numeric [genes, dim] matrix, got {matrix.dtype} {matrix.shape}"
            )
        if matrix.shape[0] != len(genes):
            _fail(path, f"{matrix.shape[0]} rows but {len(genes)} gene symbols")
        rows = matrix
    else:
        _fail(path, f"unknown format {suffix!r}; expected .csv, .json, .npy (+ gene list) or .npz")
    if len(genes) == 0:
        _fail(path, "no genes")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        first = len(rows[0])
        bad = next(g for g, r in zip(genes, rows, strict=True) if len(r) != first)
        _fail(path, f"rows have different widths {sorted(widths)} (e.g. gene {bad!r})")
    table = np.asarray(rows, np.float32)
    if table.shape[1] == 0:
        _fail(path, "rows have no values")
    finite = np.isfinite(table).all(axis=1)
    if not finite.all():
        _fail(path, f"non-finite values for gene {genes[int(np.argmin(finite))]!r}")
    seen: set[str] = set()
    for g in genes:
        if not g:
            _fail(path, "an empty gene symbol")
        if g in seen:
            _fail(path, f"duplicate gene {g!r}")
        seen.add(g)
    return GeneTable(genes=tuple(genes), embeddings=table, path=str(path))


def match_gene_table(table: GeneTable, dataset_genes: Sequence[str]) -> GeneTableMatch:
    """Rows of ``table`` for the dataset's genes (zero rows for missing genes).

    Shapes:
      dataset_genes ``[G_data]`` -> table ``[G_data, De]``, found ``[G_data]``.

    Raises:
      ValueError: when no dataset gene is in the table (a wrong species or symbol type).
    """
    rows, missing = map_gene_symbols(
        list(dataset_genes), {g: i for i, g in enumerate(table.genes)}, missing_id=-1
    )
    found = rows >= 0
    if not found.any():
        raise ValueError(
            f"gene table {table.path}: none of the dataset's {len(dataset_genes)} genes is in "
            f"the table (e.g. {list(dataset_genes)[:3]} vs {list(table.genes)[:3]})"
        )
    out = np.zeros((len(dataset_genes), table.dim), np.float32)
    out[found] = table.embeddings[rows[found]]
    return GeneTableMatch(table=out, found=found, missing=tuple(missing))
