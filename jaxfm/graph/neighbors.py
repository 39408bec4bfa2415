"""Neighbour graphs from coordinates: k-nearest neighbours, radius, and great-circle radius.

Image networks in FIMP connect images taken close to each other ("within 10 miles"); spatial
transcriptomics connects nearby cells. All builders use a KD-tree (``scipy.spatial.cKDTree``) and
return ``(senders, receivers)`` int32 numpy arrays with **edges pointing neighbour -> centre**
(senders are neighbours, receivers the centre node, as messages flow), sorted by receiver then
sender. Self-loops are excluded unless ``include_self=True``, which adds exactly one ``(i, i)`` per
node on top of the neighbours.

Great-circle distances use the trick that the chord between two points on the unit sphere is a
monotone function of their angle: ``chord = 2 sin(angle / 2)``; so a Euclidean KD-tree over 3-D unit
vectors finds candidates, and exact haversine distances then filter them.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = [
    "EARTH_RADIUS",
    "haversine_distance",
    "haversine_radius_graph",
    "knn_graph",
    "latlon_to_unit_vectors",
    "radius_graph",
]

#: Mean Earth radius (IUGG) per unit.
EARTH_RADIUS = {"km": 6371.0088, "m": 6371008.8, "mi": 6371.0088 / 1.609344}


def _check_coords(coords, fn: str, dims: int | None = None) -> np.ndarray:
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or (dims is not None and coords.shape[1] != dims):
        want = f"[N, {dims}]" if dims is not None else "[N, D]"
        raise ValueError(f"{fn}: coords must have shape {want}, got {coords.shape}")
    if not np.isfinite(coords).all():
        rows = np.flatnonzero(~np.isfinite(coords).all(axis=1))
        raise ValueError(
            f"{fn}: coords must be finite, found NaN/inf in {rows.size} rows (first: row {rows[0]})"
        )
    return coords


def _finish(
    senders: np.ndarray,
    receivers: np.ndarray,
    num_nodes: int,
    include_self: bool,
    dist: np.ndarray | None = None,
    max_neighbors: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Caps neighbours per receiver (nearest first), adds self loops, sorts by receiver/sender."""
    if max_neighbors is not None:
        if max_neighbors < 0:
            raise ValueError(f"max_neighbors must be >= 0, got {max_neighbors}")
        order = np.lexsort((senders, dist, receivers))  # by receiver, then distance, then id
        senders, receivers = senders[order], receivers[order]
        starts = np.searchsorted(receivers, receivers, side="left")
        keep = np.arange(receivers.size) - starts < max_neighbors
        senders, receivers = senders[keep], receivers[keep]
    if include_self:
        nodes = np.arange(num_nodes)
        senders, receivers = np.concatenate([senders, nodes]), np.concatenate([receivers, nodes])
    order = np.lexsort((senders, receivers))
    return senders[order].astype(np.int32), receivers[order].astype(np.int32)


def knn_graph(coords, k: int, *, include_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Edges from each node's ``k`` nearest other nodes (Euclidean) to the node.

    Ties at the ``k``-th distance are broken by the KD-tree; duplicate points count as neighbours.

    Args:
      coords: point coordinates.
      k: neighbours per node, ``1 <= k < N``.
      include_self: also add the self-loop ``(i, i)`` (each node then receives ``k + 1`` edges).

    Returns:
      ``(senders, receivers)`` int32, sorted by receiver then sender.

    Shapes:
      coords ``[N, D]``; returns ``[N * k]`` (``[N * (k + 1)]`` with self loops).

    Raises:
      ValueError: for bad shapes, NaN/inf coordinates, or ``k`` outside ``[1, N)``.

    Example:
      >>> s, r = knn_graph([[0.0], [1.0], [3.0]], k=1)
      >>> s.tolist(), r.tolist()
      ([1, 0, 1], [0, 1, 2])
    """
    coords = _check_coords(coords, "knn_graph")
    num_nodes = coords.shape[0]
    if not 1 <= k < num_nodes:
        raise ValueError(f"knn_graph: k must satisfy 1 <= k < N = {num_nodes}, got k={k}")
    _, idx = cKDTree(coords).query(coords, k=k + 1)  # [N, k + 1], usually self first
    centre = np.arange(num_nodes)[:, None]
    not_self = idx != centre
    # Drop the self entry; if duplicates pushed self out of the k + 1, drop the farthest instead.
    drop_last = not_self.all(axis=1)
    not_self[drop_last, -1] = False
    senders = idx[not_self].reshape(num_nodes, k)
    receivers = np.broadcast_to(centre, (num_nodes, k))
    return _finish(senders.ravel(), receivers.ravel(), num_nodes, include_self)


def _radius_pairs(coords: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Both directions of every pair ``i != j`` with Euclidean distance ``<= r``."""
    pairs = cKDTree(coords).query_pairs(r, output_type="ndarray")  # [P, 2], i < j
    senders = np.concatenate([pairs[:, 0], pairs[:, 1]])
    receivers = np.concatenate([pairs[:, 1], pairs[:, 0]])
    return senders, receivers


def radius_graph(
    coords,
    r: float,
    *,
    include_self: bool = False,
    max_neighbors: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Edges between all pairs of distinct nodes within Euclidean distance ``r`` (inclusive).

    Args:
      coords: point coordinates.
      r: radius (>= 0).
      include_self: also add one self-loop per node.
      max_neighbors: keep only the nearest ``max_neighbors`` neighbours of each receiver (ties by
        node id); the cap does not count the self-loop.

    Returns:
      ``(senders, receivers)`` int32, sorted by receiver then sender.

    Shapes:
      coords ``[N, D]``; returns ``[E]``.
    """
    coords = _check_coords(coords, "radius_graph")
    if not np.isfinite(r) or r < 0:
        raise ValueError(f"radius_graph: r must be finite and >= 0, got {r}")
    senders, receivers = _radius_pairs(coords, r)
    dist = None
    if max_neighbors is not None:
        dist = np.linalg.norm(coords[senders] - coords[receivers], axis=-1)
    return _finish(senders, receivers, coords.shape[0], include_self, dist, max_neighbors)


def latlon_to_unit_vectors(latlon: np.ndarray) -> np.ndarray:
    """(latitude, longitude) in degrees ``[N, 2]`` -> points on the unit sphere ``[N, 3]``.

    Chord distance between these points orders pairs exactly like great-circle distance, so a
    KD-tree over them answers great-circle neighbour queries.
    """
    latlon = np.asarray(latlon, np.float64)
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def _earth_radius(unit: str, fn: str) -> float:
    if unit not in EARTH_RADIUS:
        raise ValueError(f"{fn}: unit must be one of {sorted(EARTH_RADIUS)}, got {unit!r}")
    return EARTH_RADIUS[unit]


def _check_latitudes(latlon: np.ndarray, fn: str) -> None:
    lat = latlon[..., 0]
    if (np.abs(lat) > 90).any():
        raise ValueError(
            f"{fn}: latitudes must lie in [-90, 90] degrees (expected [..., (lat, lon)] order), "
            f"got values up to {np.abs(lat).max()}"
        )


def haversine_distance(a, b, *, unit: str = "km") -> np.ndarray:
    """Great-circle distance between points given as ``(lat, lon)`` in degrees.

    Args:
      a: points, ``[..., 2]`` as (latitude, longitude) degrees.
      b: points broadcastable against ``a``.
      unit: ``"km"``, ``"m"`` or ``"mi"`` (mean Earth radius, :data:`EARTH_RADIUS`).

    Returns:
      Distances ``[...]`` (float64).

    Example:
      >>> round(float(haversine_distance([51.5074, -0.1278], [48.8566, 2.3522])))
      344
    """
    radius = _earth_radius(unit, "haversine_distance")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape[-1:] != (2,) or b.shape[-1:] != (2,):
        raise ValueError(f"haversine_distance: a and b must be [..., 2], got {a.shape}, {b.shape}")
    for arr in (a, b):
        if not np.isfinite(arr).all():
            raise ValueError("haversine_distance: coordinates must be finite (found NaN/inf)")
        _check_latitudes(arr, "haversine_distance")
    lat1, lon1 = np.radians(a[..., 0]), np.radians(a[..., 1])
    lat2, lon2 = np.radians(b[..., 0]), np.radians(b[..., 1])
    h = (
        np.sin((lat2 - lat1) / 2) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * radius * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def haversine_radius_graph(
    latlon_degrees,
    radius: float,
    *,
    unit: str = "km",
    include_self: bool = False,
    max_neighbors: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Edges between all pairs of distinct points within great-circle ``radius`` (inclusive).

    Candidates come from a KD-tree over 3-D unit vectors with the chord ``2 sin(radius / (2 R))``
    (slightly enlarged); exact haversine distances then decide.

    Args:
      latlon_degrees: ``(latitude, longitude)`` of each node in degrees.
      radius: distance threshold in ``unit`` (>= 0), e.g. ``10`` with ``unit="mi"``.
      unit: ``"km"``, ``"m"`` or ``"mi"``.
      include_self: also add one self-loop per node.
      max_neighbors: keep only the nearest ``max_neighbors`` neighbours per receiver.

    Returns:
      ``(senders, receivers)`` int32, sorted by receiver then sender.

    Shapes:
      latlon_degrees ``[N, 2]``; returns ``[E]``.
    """
    fn = "haversine_radius_graph"
    latlon = _check_coords(latlon_degrees, fn, dims=2)
    _check_latitudes(latlon, fn)
    earth = _earth_radius(unit, fn)
    if not np.isfinite(radius) or radius < 0:
        raise ValueError(f"{fn}: radius must be finite and >= 0, got {radius}")
    angle = min(radius / earth, np.pi)
    chord = 2.0 * np.sin(angle / 2.0) * (1.0 + 1e-9) + 1e-12  # enlarged: exact filter below
    senders, receivers = _radius_pairs(latlon_to_unit_vectors(latlon), chord)
    dist = haversine_distance(latlon[senders], latlon[receivers], unit=unit)
    keep = dist <= radius
    senders, receivers, dist = senders[keep], receivers[keep], dist[keep]
    return _finish(senders, receivers, latlon.shape[0], include_self, dist, max_neighbors)
