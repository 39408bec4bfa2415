"""Seeded, optionally stratified train/validation/test splits of node indices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["seeded_node_splits", "split_nodes"]


def _split_sizes(m: int, fractions: np.ndarray) -> np.ndarray:
    """Largest-remainder rounding of ``fractions * m`` (ties go to the earlier split)."""
    raw = fractions * m
    sizes = np.floor(raw).astype(np.int64)
    rest = m - sizes.sum()
    order = np.argsort(-(raw - sizes), kind="stable")
    sizes[order[:rest]] += 1
    return sizes


def split_nodes(
    n: int,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    stratify: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random train / val / test node split (FIMP uses 70/10/20).

    Args:
        n: number of nodes.
        fractions: three non-negative fractions summing to 1.
        seed: the split is a pure function of ``(n, fractions, seed, stratify)``.
        stratify: ``[n]`` class labels; if given, every class is split with the same fractions
            and unlabelled items (negative labels, see :mod:`jaxfm.data.labels`) are in no
            split, so they never enter a loss or a metric.

    Returns:
        ``(train, val, test)`` sorted int64 index arrays, disjoint and covering ``range(n)``
        (its labelled items with ``stratify``).

    Raises:
        ValueError: bad fractions or ``stratify`` of the wrong length.
    """
    frac = np.asarray(fractions, np.float64)
    if frac.shape != (3,) or np.any(frac < 0) or not np.isclose(frac.sum(), 1.0):
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    if stratify is None:
        groups = [np.arange(n)]
    else:
        stratify = np.asarray(stratify)
        if stratify.shape != (n,):
            raise ValueError(f"stratify must have shape [{n}], got {stratify.shape}")
        classes = np.unique(stratify[stratify >= 0]) if stratify.dtype.kind in "iuf" else None
        if classes is None:
            classes = np.unique(stratify)
        groups = [np.flatnonzero(stratify == c) for c in classes]
    parts: list[list[np.ndarray]] = [[], [], []]
    for members in groups:
        perm = rng.permutation(members)
        bounds = np.cumsum(_split_sizes(len(members), frac))
        for part, chunk in zip(parts, np.split(perm, bounds[:2]), strict=True):
            part.append(chunk)
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return train, val, test


def seeded_node_splits(y, task: str, num_splits: int, seed: int = 0) -> tuple:
    """The one seeded split fallback: ``num_splits`` 60/20/20 splits of the labelled nodes.

    Used when a dataset has no public splits (by every loader, the pretraining corpus, MFT/NFT
    and the baselines alike, so they all see the same masks). Split ``k`` is
    :func:`split_nodes` with seed ``seed + k``, stratified by class for classification;
    unlabelled nodes (negative labels; non-finite regression targets) are in no split.

    Returns:
      ``num_splits`` :class:`~jaxfm.data.graph_dataset.Split` s (``[N]`` bool masks).
    """
    from jaxfm.data.graph_dataset import Split

    y = np.asarray(y)
    n = y.shape[0]
    labelled = np.isfinite(y) if task == "regression" else y >= 0
    idx = np.flatnonzero(labelled)
    strat = None if task == "regression" else y[idx]
    out = []
    for k in range(num_splits):
        masks = [np.zeros(n, bool) for _ in range(3)]
        parts = split_nodes(idx.size, (0.6, 0.2, 0.2), seed=seed + k, stratify=strat)
        for m, part in zip(masks, parts, strict=True):
            m[idx[part]] = True
        out.append(Split(train=masks[0], val=masks[1], test=masks[2]))
    return tuple(out)
