"""Built-in synthetic data for FIMP demos and tests (seconds to generate, no downloads).

Each generator mirrors one FIMP setting closely enough that the *graph matters*:

- ``synthetic_spatial``: cells in spatial domains of mostly one type; expression depends on the
  cell's own type (marker genes) and on its neighbours' types (niche genes), with noisy genes on
  top, so pooling neighbours beats looking at a cell alone.
- ``synthetic_images``: geotagged images (lat/lon) whose classes form geographic regions; each image
  is a noisy copy of its class prototype, so neighbouring images help denoise.
- ``synthetic_fmri``: smooth, spatially correlated region signals (low-rank sinusoidal sources mixed
  by a Gaussian kernel over the region coordinates), so a region's neighbours predict its masked
  patches.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from jaxfm.data.spatial import SpatialDataset, _knn_adjacency, normalize_total_log1p
from jaxfm.graph.neighbors import latlon_to_unit_vectors

__all__ = ["GeoImageDataset", "synthetic_fmri", "synthetic_images", "synthetic_spatial"]

_FMRI_PATCH = 20  # BrainLM's patch length; synthetic recordings must split into whole patches


def _domain_labels(
    points: np.ndarray,
    centres: np.ndarray,
    num_classes: int,
    mix_rate: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Voronoi domains over ``centres`` (every class owns some), then a ``mix_rate`` of points get
    a different, random class (cells infiltrating a neighbouring tissue region)."""
    centre_labels = rng.permutation(np.resize(np.arange(num_classes), len(centres)))
    labels = centre_labels[cKDTree(centres).query(points)[1]]
    flip = rng.random(len(points)) < mix_rate
    labels[flip] = (labels[flip] + rng.integers(1, num_classes, flip.sum())) % num_classes
    return labels.astype(np.int32)


def synthetic_spatial(
    num_cells: int = 1200,
    num_genes: int = 40,
    num_types: int = 5,
    seed: int = 0,
    *,
    k: int = 6,
    domains_per_type: int = 3,
    mix_rate: float = 0.15,
    noise_gene_fraction: float = 0.5,
    depth: float = 50.0,
    marker_effect: float = 0.7,
) -> SpatialDataset:
    """A spatial transcriptomics section with cell-type domains and niche-dependent expression.

    Generative model (per cell i with type t_i and kNN neighbour type fractions f_i ``[T]``):
    ``logit_ig = b_g + A[t_i, g] + (f_i @ B)[g] + eps_ig``; counts
    ``~ Poisson(lib_i softmax(logit_i))`` with a low library size (sparse, noisy cells); then
    ``log1p`` of counts per 1e4. ``A`` has a
    few marker genes per type, ``B`` drives niche genes by neighbour composition, and a
    ``noise_gene_fraction`` of genes carry large per-cell noise unrelated to type.

    Args:
        num_cells, num_genes, num_types: N, G and number of cell types.
        seed: everything is a pure function of the arguments.
        k: neighbours per cell in the kNN graph (also the niche used by the generator).
        domains_per_type: spatial domains per type (Voronoi cells of random centres).
        mix_rate: fraction of cells whose type differs from their domain's.
        noise_gene_fraction: fraction of genes that are pure noise.
        depth: mean counts per cell.
        marker_effect: log-fold change of a type's marker genes (lower = cells harder to tell apart
            on their own).

    Returns:
        ``SpatialDataset`` with coords in ``[0, 1000)^2``, labels, kNN adjacency, named
        ``"synthetic_spatial"``.

    Example:
        >>> ds = synthetic_spatial(num_cells=200, seed=0)
        >>> ds.expression.shape, ds.num_classes, ds.adjacency.nnz
        ((200, 40), 5, 1200)
    """
    if num_types < 2 or num_cells < 2 or num_genes < 2:
        raise ValueError("need num_types >= 2, num_cells >= 2 and num_genes >= 2")
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0.0, 1000.0, (num_cells, 2)).astype(np.float32)
    centres = rng.uniform(0.0, 1000.0, (num_types * domains_per_type, 2))
    types = _domain_labels(coords, centres, num_types, mix_rate, rng)
    adjacency = _knn_adjacency(coords, k)

    onehot = np.eye(num_types)[types]  # [N, T]
    degree = np.maximum(np.asarray(adjacency.sum(axis=1)), 1.0)
    niche = np.asarray(adjacency @ onehot) / degree  # [N, T] neighbour type fractions

    n_noise = round(noise_gene_fraction * num_genes)
    n_informative = num_genes - n_noise
    n_niche = n_informative // 3
    genes = rng.permutation(num_genes)
    splits = [n_informative - n_niche, n_informative]
    marker_genes, niche_genes, noise_genes = np.split(genes, splits)
    own = np.zeros((num_types, num_genes))
    # a few marker genes per type
    own[np.arange(len(marker_genes)) % num_types, marker_genes] = marker_effect
    own[:, marker_genes] += rng.normal(0.0, 0.3, (num_types, len(marker_genes)))
    by_niche = np.zeros((num_types, num_genes))
    by_niche[:, niche_genes] = rng.normal(0.0, 1.5, (num_types, len(niche_genes)))

    logits = rng.normal(0.0, 0.5, num_genes) + own[types] + niche @ by_niche
    logits += rng.normal(0.0, 0.3, logits.shape)
    logits[:, noise_genes] += rng.normal(0.0, 1.5, (num_cells, len(noise_genes)))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(depth), 0.3, num_cells)
    counts = rng.poisson(library[:, None] * probs)
    empty = counts.sum(axis=1) == 0
    counts[empty, np.argmax(probs[empty], axis=1)] = 1  # every cell expresses something

    return SpatialDataset(
        expression=normalize_total_log1p(counts),
        gene_names=np.array([f"gene_{g:03d}" for g in range(num_genes)]),
        coords=coords,
        labels=types,
        label_names=tuple(f"type_{t}" for t in range(num_types)),
        adjacency=adjacency,
        cell_names=np.array([f"cell_{i}" for i in range(num_cells)]),
        name="synthetic_spatial",
    )


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class GeoImageDataset:
    """Images as graph nodes placed on the globe (FIMP's Mapillary setting, in miniature).

    Shapes:
        images: ``[N, H, W, C]`` float32 (channels last, as Flax convolutions expect).
        coords: ``[N, 2]`` float32 (latitude, longitude) in degrees.
        labels: ``[N]`` int32 in ``[0, len(class_names))``; -1: unlabelled (in no split).
        adjacency: ``[N, N]`` CSR, ``adjacency[i, j] != 0`` iff j -> i (kNN by great-circle
            distance).
    """

    images: np.ndarray
    coords: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    adjacency: sp.csr_matrix
    name: str = "synthetic_images"

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.coords.shape != (n, 2) or self.labels.shape != (n,):
            raise ValueError(
                f"{self.name}: inconsistent shapes images {self.images.shape}, coords "
                f"{self.coords.shape}, labels {self.labels.shape}"
            )
        if self.adjacency.shape != (n, n):
            raise ValueError(f"{self.name}: adjacency {self.adjacency.shape} != [{n}, {n}]")

    @property
    def num_nodes(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _random_lat_lon(n: int, rng: np.random.Generator, max_lat: float = 60.0) -> np.ndarray:
    """Uniform on the sphere between latitudes -max_lat and max_lat, in degrees."""
    s = np.sin(np.radians(max_lat))
    lat = np.degrees(np.arcsin(rng.uniform(-s, s, n)))
    lon = rng.uniform(-180.0, 180.0, n)
    return np.stack([lat, lon], axis=1)


def synthetic_images(
    num_nodes: int = 1000,
    image_size: int = 16,
    channels: int = 3,
    num_classes: int = 4,
    seed: int = 0,
    *,
    k: int = 8,
    noise: float = 1.0,
    class_contrast: float = 0.08,
    domains_per_class: int = 3,
    mix_rate: float = 0.1,
) -> GeoImageDataset:
    """Geotagged images whose classes form geographic regions.

    Prototypes share one random pattern of low-frequency colour gratings and differ by
    ``class_contrast`` times a class-specific pattern; a node's image is its class prototype plus
    Gaussian noise of std ``noise``, so a single image is ambiguous and neighbours help. Classes
    are Voronoi regions of random centres on the globe (``mix_rate`` of nodes get another class).

    Returns:
        ``GeoImageDataset``; ``images [N, image_size, image_size, channels]``.

    Example:
        >>> data = synthetic_images(num_nodes=50, seed=0)
        >>> data.images.shape, data.coords.shape, data.num_classes
        ((50, 16, 16, 3), (50, 2), 4)
    """
    if num_classes < 2 or num_nodes < 2:
        raise ValueError("need num_classes >= 2 and num_nodes >= 2")
    rng = np.random.default_rng(seed)
    lat_lon = _random_lat_lon(num_nodes, rng)
    xyz = latlon_to_unit_vectors(lat_lon)
    centres = latlon_to_unit_vectors(_random_lat_lon(num_classes * domains_per_class, rng))
    labels = _domain_labels(xyz, centres, num_classes, mix_rate, rng)
    adjacency = _knn_adjacency(xyz, k)  # chord distance orders like great-circle distance

    grid = np.arange(image_size) / image_size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")

    def pattern() -> np.ndarray:  # [H, W, C], two random low-frequency gratings per channel
        out = np.zeros((image_size, image_size, channels))
        for ch in range(channels):
            for _ in range(2):
                fx, fy = rng.integers(-3, 4, 2)
                phase = rng.uniform(0, 2 * np.pi)
                out[:, :, ch] += 0.5 * np.cos(2 * np.pi * (fx * xx + fy * yy) + phase)
        return out

    shared = pattern()
    protos = np.stack([shared + class_contrast * pattern() for _ in range(num_classes)])
    images = protos[labels] + noise * rng.normal(size=(num_nodes, image_size, image_size, channels))
    return GeoImageDataset(
        images=images.astype(np.float32),
        coords=lat_lon.astype(np.float32),
        labels=labels,
        class_names=tuple(f"class_{c}" for c in range(num_classes)),
        adjacency=adjacency,
    )


def synthetic_fmri(
    coords: np.ndarray,
    num_recordings: int,
    num_timepoints: int = 200,
    seed: int = 0,
    *,
    num_sources: int = 8,
    length_scale: float = 0.5,
    noise: float = 0.1,
) -> np.ndarray:
    """Smooth, spatially correlated region signals (e.g. over the A424 atlas coordinates).

    ``x_r[v, t] = sum_k W[v, k] s_{r,k}(t) + noise``: ``num_sources`` sources centred on random
    regions, mixed by a Gaussian kernel ``W[v, k] = exp(-|x_v - c_k|^2 / (2 sigma^2))`` with
    ``sigma = length_scale * rms spread of coords``; each source's time course (per recording) is a
    sum of three slow sinusoids; white noise of ``noise`` times each region's signal std is added
    and each region's signal is z-scored over time.

    Shapes:
        coords: ``[V, 3]``. returns: ``[num_recordings, V, num_timepoints]`` float32.

    Raises:
        ValueError: bad coords, or ``num_timepoints`` not a positive multiple of 20 (BrainLM's
            patch length).

    Example:
        >>> xyz = np.random.default_rng(0).normal(size=(16, 3))
        >>> synthetic_fmri(xyz, num_recordings=2, num_timepoints=40).shape
        (2, 16, 40)
    """
    coords = np.asarray(coords, np.float64)
    if coords.ndim != 2 or coords.shape[1] != 3 or not np.isfinite(coords).all():
        raise ValueError(f"coords must be finite [V, 3], got shape {coords.shape}")
    if num_timepoints <= 0 or num_timepoints % _FMRI_PATCH:
        raise ValueError(
            f"num_timepoints must be a positive multiple of {_FMRI_PATCH}, got {num_timepoints}"
        )
    if num_recordings < 1:
        raise ValueError(f"num_recordings must be >= 1, got {num_recordings}")
    rng = np.random.default_rng(seed)
    v = coords.shape[0]
    spread = np.sqrt(np.mean(np.var(coords, axis=0))) or 1.0
    sigma = length_scale * spread
    centres = coords[rng.choice(v, num_sources, replace=num_sources > v)]
    dist2 = ((coords[:, None, :] - centres[None, :, :]) ** 2).sum(-1)  # [V, K]
    mixing = np.exp(-dist2 / (2 * sigma**2))

    t = np.arange(num_timepoints)
    freqs = rng.uniform(0.01, 0.08, (num_recordings, num_sources, 3, 1))  # cycles per timepoint
    phases = rng.uniform(0, 2 * np.pi, (num_recordings, num_sources, 3, 1))
    amps = rng.normal(0.0, 1.0, (num_recordings, num_sources, 3, 1))
    sources = (amps * np.sin(2 * np.pi * freqs * t + phases)).sum(axis=2)  # [R, K, T]

    signals = np.einsum("vk,rkt->rvt", mixing, sources)
    signals += noise * signals.std(axis=-1, keepdims=True) * rng.normal(size=signals.shape)
    signals -= signals.mean(axis=-1, keepdims=True)
    std = signals.std(axis=-1, keepdims=True)
    signals /= np.where(std > 0, std, 1.0)
    return signals.astype(np.float32)
