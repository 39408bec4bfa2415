"""kNN, radius and great-circle radius graphs (jaxfm.graph.neighbors)."""

import numpy as np
import pytest

from jaxfm.graph import (
    EARTH_RADIUS,
    haversine_distance,
    haversine_radius_graph,
    knn_graph,
    radius_graph,
)

LINE = np.array([[0.0], [1.0], [3.0], [7.0], [12.0]])  # gaps 1, 2, 4, 5: no distance ties


def _pairs(senders, receivers):
    return sorted(zip(senders.tolist(), receivers.tolist(), strict=True))


def _check_sorted(senders, receivers):
    assert senders.dtype == np.int32 and receivers.dtype == np.int32
    keys = receivers.astype(np.int64) * 10**6 + senders
    assert np.all(np.diff(keys) > 0)  # sorted by (receiver, sender), no duplicates


def test_knn_line_exact():
    s, r = knn_graph(LINE, k=1)
    _check_sorted(s, r)
    # senders are the neighbours, receivers the centre
    assert list(zip(s.tolist(), r.tolist(), strict=True)) == [
        (1, 0),
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 4),
    ]
    s, r = knn_graph(LINE, k=2)
    expected = {0: {1, 2}, 1: {0, 2}, 2: {1, 0}, 3: {2, 4}, 4: {3, 2}}
    assert {v: set(s[r == v].tolist()) for v in range(5)} == expected
    s, r = knn_graph(LINE, k=2, include_self=True)
    _check_sorted(s, r)
    assert len(s) == 15 and np.sum(s == r) == 5


def test_knn_matches_brute_force_and_duplicates():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    s, r = knn_graph(x, k=4)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    for v in range(40):
        assert set(s[r == v].tolist()) == set(np.argsort(d[v])[:4].tolist())
    dup = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])  # self may not come first
    s, r = knn_graph(dup, k=2)
    assert not np.any(s == r) and np.all(np.bincount(r) == 2)


def test_knn_errors():
    with pytest.raises(ValueError, match=r"k must satisfy 1 <= k < N = 5"):
        knn_graph(LINE, k=5)
    with pytest.raises(ValueError, match=r"coords must have shape \[N, D\]"):
        knn_graph(np.zeros(5), k=1)
    bad = LINE.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf in 1 rows \(first: row 3\)"):
        knn_graph(bad, k=1)


def test_radius_graph_exact_and_brute_force():
    s, r = radius_graph(LINE, 2.0)
    _check_sorted(s, r)
    assert _pairs(s, r) == sorted([(0, 1), (1, 0), (1, 2), (2, 1)])  # inclusive at r = 2
    s, r = radius_graph(LINE, 0.5, include_self=True)
    assert _pairs(s, r) == [(i, i) for i in range(5)]
    rng = np.random.default_rng(1)
    x = rng.random((60, 2))
    s, r = radius_graph(x, 0.2)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    want = [(u, v) for v in range(60) for u in range(60) if u != v and d[u, v] <= 0.2]
    assert _pairs(s, r) == sorted(want)


def test_radius_graph_max_neighbors_keeps_nearest():
    s, r = radius_graph(LINE, 100.0, max_neighbors=2, include_self=True)
    _check_sorted(s, r)
    got = {v: set(s[(r == v) & (s != v)].tolist()) for v in range(5)}
    assert got == {0: {1, 2}, 1: {0, 2}, 2: {1, 0}, 3: {2, 4}, 4: {3, 2}}
    assert np.sum(s == r) == 5  # self loops do not count against the cap


def test_haversine_distance_london_paris():
    london, paris = (51.5074, -0.1278), (48.8566, 2.3522)
    # Hand check with the spherical law of cosines (a different formula).
    p1, p2 = np.radians(london), np.radians(paris)
    cos_angle = np.sin(p1[0]) * np.sin(p2[0]) + np.cos(p1[0]) * np.cos(p2[0]) * np.cos(
        p2[1] - p1[1]
    )
    hand = EARTH_RADIUS["km"] * np.arccos(cos_angle)
    km = haversine_distance(london, paris)
    assert abs(km - 344.0) < 1.0
    np.testing.assert_allclose(km, hand, rtol=1e-9)
    np.testing.assert_allclose(haversine_distance(london, paris, unit="mi"), km / 1.609344)
    np.testing.assert_allclose(haversine_distance(london, london), 0.0, atol=1e-9)
    # Broadcasting: [3, 2] against [2].
    assert haversine_distance(np.array([london, paris, london]), paris).shape == (3,)
    with pytest.raises(ValueError, match="latitudes must lie in"):
        haversine_distance((100.0, 0.0), paris)
    with pytest.raises(ValueError, match="unit must be one of"):
        haversine_distance(london, paris, unit="ft")


def test_haversine_radius_graph_within_10_miles():
    deg_per_mile = 180.0 / np.pi / EARTH_RADIUS["mi"]  # along a meridian
    base = 40.0
    latlon = np.array(
        [
            [base, -74.0],
            [base + 9.99 * deg_per_mile, -74.0],  # 9.99 mi north of 0: linked
            [base - 10.01 * deg_per_mile, -74.0],  # 10.01 mi south of 0: not linked
            [0.0, 179.99],  # across the antimeridian from 4 (~1.38 mi apart)
            [0.0, -179.99],
            [51.5074, -0.1278],  # London, far from all
        ]
    )
    s, r = haversine_radius_graph(latlon, 10.0, unit="mi")
    _check_sorted(s, r)
    assert _pairs(s, r) == sorted([(0, 1), (1, 0), (3, 4), (4, 3)])
    # Brute force on random points in a small box, km.
    rng = np.random.default_rng(2)
    pts = np.stack([rng.uniform(40, 41, 80), rng.uniform(-74, -73, 80)], axis=-1)
    s, r = haversine_radius_graph(pts, 15.0, include_self=True)
    d = haversine_distance(pts[:, None], pts[None])
    want = [(u, v) for v in range(80) for u in range(80) if d[u, v] <= 15.0]
    assert _pairs(s, r) == sorted(want)
    s, r = haversine_radius_graph(pts, 15.0, max_neighbors=3)
    assert np.bincount(r, minlength=80).max() <= 3
    for v in range(80):
        nbrs = s[r == v]
        if nbrs.size:
            others = np.delete(d[v], v)
            kth = np.sort(others)[nbrs.size - 1]
            assert np.all(d[v, nbrs] <= kth + 1e-9)  # the kept ones are the nearest


def test_haversine_radius_graph_errors():
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        haversine_radius_graph(np.zeros((3, 3)), 1.0)
    with pytest.raises(ValueError, match="finite"):
        haversine_radius_graph(np.array([[0.0, np.inf]]), 1.0)
    with pytest.raises(ValueError, match="latitudes"):
        haversine_radius_graph(np.array([[-91.0, 0.0]]), 1.0)
