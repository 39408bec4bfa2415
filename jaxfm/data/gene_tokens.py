"""Gene tokens of a cell (FIMP eq. 5 for single-cell data): sampling expressed genes, masking values
for masked expression prediction, and mapping gene symbols to a pretrained vocabulary.

FIMP, App. B: "We sample nonzero expressed genes in each cell ... and mask out 80% of the gene
expression values, taking MSE loss against only masked out genes."
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from jaxfm.ops.masking import rank_mask

RngLike = np.random.Generator | int

__all__ = ["map_gene_symbols", "mask_values", "sample_expressed_genes"]


def _as_rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def sample_expressed_genes(
    expression: np.ndarray | sp.spmatrix,
    max_genes: int,
    *,
    rng: RngLike,
    pad_id: int = 0,
    chunk_size: int = 2048,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell, a uniform sample (without replacement) of up to ``max_genes`` expressed genes.

    A cell with fewer expressed (nonzero) genes keeps all of them. Kept genes are in ascending gene
    order, then padding (``pad_id``, value 0, mask false), so every cell has exactly L slots.

    Args:
        expression: ``[N, G]`` dense or sparse.
        max_genes: L, tokens per cell (a static budget).
        rng: numpy ``Generator`` or seed.
        pad_id: gene id written into padding slots (masked anyway).
        chunk_size: cells processed at once (bounds memory to ``chunk_size * G``).

    Returns:
        ``(gene_ids [N, L] int32, values [N, L] float32, token_mask [N, L] bool)``; ``gene_ids``
        index the columns of ``expression`` (map them through a vocabulary with
        ``map_gene_symbols`` for pretrained gene tables).

    Raises:
        ValueError: ``max_genes < 1``, non-finite values, or a cell without any expressed gene
            (the message names the cell index).
    """
    if max_genes < 1:
        raise ValueError(f"max_genes must be >= 1, got {max_genes}")
    rng = _as_rng(rng)
    n, g = expression.shape
    width = min(max_genes, g)
    gene_ids = np.full((n, max_genes), pad_id, np.int32)
    values = np.zeros((n, max_genes), np.float32)
    token_mask = np.zeros((n, max_genes), bool)
    for start in range(0, n, chunk_size):
        rows = expression[start : start + chunk_size]
        dense = np.asarray(rows.toarray() if sp.issparse(rows) else rows, np.float32)
        if not np.isfinite(dense).all():
            cell = start + int(np.argmax(~np.isfinite(dense).all(axis=1)))
            raise ValueError(f"cell {cell} has NaN/inf expression values")
        expressed = dense != 0
        empty = ~expressed.any(axis=1)
        if empty.any():
            raise ValueError(
                f"cell {start + int(np.argmax(empty))} has no expressed gene (all {g} values are "
                "0); "
                "remove empty cells first (load_spatial(..., drop_empty_cells=True))"
            )
        keys = rng.random(dense.shape)
        keys[~expressed] = 2.0  # never chosen before an expressed gene
        if width < g:
            chosen = np.argpartition(keys, width - 1, axis=1)[:, :width]  # [n, L]
        else:
            chosen = np.broadcast_to(np.arange(g), dense.shape).copy()
        valid = np.take_along_axis(keys, chosen, axis=1) < 2.0
        # expressed genes by gene id first, then padding
        order = np.argsort(np.where(valid, chosen, g + chosen), axis=1)
        chosen = np.take_along_axis(chosen, order, axis=1)
        valid = np.take_along_axis(valid, order, axis=1)
        stop = start + dense.shape[0]
        gene_ids[start:stop, :width] = np.where(valid, chosen, pad_id)
        values[start:stop, :width] = np.where(valid, np.take_along_axis(dense, chosen, axis=1), 0.0)
        token_mask[start:stop, :width] = valid
    return gene_ids, values, token_mask


def mask_values(token_mask: np.ndarray, rate: float = 0.8, *, rng: RngLike) -> np.ndarray:
    """Chooses which tokens' values to hide for masked value prediction (FIMP: 80 % per cell).

    Per cell exactly ``floor(rate * n_valid + 0.5)`` valid tokens are masked (round half up), and at
    least one when the cell has any token; padding is never masked.

    Shapes:
        token_mask: ``[N, L]`` bool. returns: ``[N, L]`` bool, a subset of ``token_mask``.

    Raises:
        ValueError: ``rate`` outside ``(0, 1]``.
    """
    token_mask = np.asarray(token_mask, bool)
    return rank_mask(_as_rng(rng).random(token_mask.shape), token_mask, rate)


def map_gene_symbols(
    gene_names: Sequence[str], vocab: Mapping[str, int], *, missing_id: int = -1
) -> tuple[np.ndarray, list[str]]:
    """Maps gene symbols to vocabulary ids (e.g. scGPT's ``default_gene_vocab.json``).

    Exact matches first; otherwise a case-insensitive match (mouse ``Gad2`` -> human ``GAD2``),
    preferring the all-uppercase symbol, then the smallest id, when several differ only in case.

    Returns:
        ``(ids [G] int32 with missing_id for unmapped genes, unmapped symbols in input order)``.
    """
    folded: dict[str, tuple[str, int]] = {}
    for sym, idx in vocab.items():
        key = sym.lower()
        best = folded.get(key)
        rank = (sym != sym.upper(), idx)
        if best is None or rank < (best[0] != best[0].upper(), best[1]):
            folded[key] = (sym, int(idx))
    ids = np.full(len(gene_names), missing_id, np.int32)
    unmapped: list[str] = []
    for i, name in enumerate(gene_names):
        name = str(name)
        if name in vocab:
            ids[i] = vocab[name]
        elif name.lower() in folded:
            ids[i] = folded[name.lower()][1]
        else:
            unmapped.append(name)
    return ids, unmapped
