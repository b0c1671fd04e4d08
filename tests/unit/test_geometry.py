"""Geofence zones: edges, holes, the antimeridian, the poles; checked against shapely as an oracle."""

from __future__ import annotations

import doctest
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import shapely  # type: ignore[import-untyped]
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fleetstream.domain.geometry
from fleetstream.domain.geometry import Zone, ZoneIndex

SQUARE: list[list[float]] = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
HOLE: list[list[float]] = [[4, 4], [6, 4], [6, 6], [4, 6], [4, 4]]
# 20° wide across the antimeridian, written the way a map tool exports it.
DATELINE: list[list[float]] = [[170, -10], [-170, -10], [-170, 10], [170, 10], [170, -10]]


def polygon(*rings: Sequence[Sequence[float]]) -> Zone:
    return Zone.from_geojson("z", "Z", {"type": "Polygon", "coordinates": list(rings)})


def test_doctests() -> None:
    failed, attempted = doctest.testmod(fleetstream.domain.geometry)
    assert (failed, attempted > 0) == (0, True)


def test_rectangle_contains_its_edges_and_corners_and_nothing_beyond() -> None:
    zone = Zone.rectangle("r", "R", south=1.5, west=-3, north=4, east=2.25)
    for lat, lon in [
        (1.5, -3),
        (4, 2.25),
        (1.5, 2.25),
        (4, -3),
        (1.5, 0),
        (4, 0),
        (2, -3),
        (2, 2.25),
        (2, 0),
    ]:
        assert zone.contains(lat, lon), (lat, lon)
    just_out = [
        (math.nextafter(1.5, -90), 0),
        (math.nextafter(4, 90), 0),
        (2, math.nextafter(-3, -180)),
        (2, math.nextafter(2.25, 180)),
    ]
    for lat, lon in just_out:
        assert not zone.contains(lat, lon), (lat, lon)


def test_rectangle_with_west_beyond_east_spans_the_antimeridian() -> None:
    zone = Zone.rectangle("r", "R", south=-10, west=170, north=10, east=-170)
    for lon in (170, 175, 180, -180, -175, -170, 540, -190):
        assert zone.contains(0, lon), lon
    for outside in (169.5, -169.5, 0, 10, -10):
        assert not zone.contains(0, outside), outside


def test_rectangle_ending_on_the_antimeridian_holds_both_of_its_names() -> None:
    east_side = Zone.rectangle("e", "E", south=0, west=170, north=1, east=180)
    west_side = Zone.rectangle("w", "W", south=0, west=-180, north=1, east=-170)
    for zone in (east_side, west_side):
        assert zone.contains(0.5, 180)
        assert zone.contains(0.5, -180)
    assert not east_side.contains(0.5, -179)
    assert not west_side.contains(0.5, 179)


def test_rectangle_from_minus_180_to_180_is_the_whole_band() -> None:
    zone = Zone.rectangle("r", "R", south=-1, west=-180, north=1, east=180)
    assert all(zone.contains(0, lon) for lon in (-180, -90, 0, 90, 179.999, 180))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-91, 0, 0, 1), r"south-west corner: latitude -91 is outside \[-90, 90\]"),
        ((0, 0, 1, 180.5), r"north-east corner: longitude 180.5 is outside \[-180, 180\]"),
        ((0, math.nan, 1, 1), "south-west corner: coordinates must be numbers, not NaN"),
        ((5, 0, 5, 1), r"south \(5\) must be below north \(5\)"),
        ((0, 20, 1, 20), r"west and east \(20, 20\) must be different meridians"),
        ((0, 180, 1, -180), "must be different meridians"),
    ],
)
def test_rectangle_refuses_what_is_not_an_area(args: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Zone.rectangle("r", "R", *args)


def test_polygon_contains_every_edge_and_corner_and_nothing_just_beyond() -> None:
    zone = polygon(SQUARE)
    for lon, lat in [*SQUARE, (5, 0), (10, 5), (5, 10), (0, 5), (5, 5)]:
        assert zone.contains(lat, lon), (lat, lon)
    for below, beyond in [(5, math.nextafter(10, 11)), (math.nextafter(0, -1), 5), (10.5, 10.5), (-1, -1)]:
        assert not zone.contains(below, beyond), (below, beyond)


def test_slanted_edges_count_exactly() -> None:
    triangle = polygon([[0, 0], [8, 4], [0, 8]])
    assert triangle.contains(2, 4)  # on the edge (0, 0)-(8, 4)
    assert triangle.contains(6, 4)  # on the edge (8, 4)-(0, 8)
    assert not triangle.contains(2, math.nextafter(4, 5))
    assert triangle.contains(2, math.nextafter(4, 3))


def test_a_hole_is_outside_but_its_edge_is_inside() -> None:
    zone = polygon(SQUARE, HOLE)
    assert not zone.contains(5, 5)
    for lon, lat in [*HOLE, (5, 4), (6, 5)]:
        assert zone.contains(lat, lon), (lat, lon)
    assert zone.contains(2, 2)
    assert not zone.contains(5, math.nextafter(4, 5))


def test_an_open_ring_is_closed() -> None:
    assert polygon(SQUARE[:-1]).shape == polygon(SQUARE).shape


def test_multipolygon_contains_what_any_part_contains() -> None:
    zone = Zone.from_geojson(
        "m",
        "M",
        {"type": "MultiPolygon", "coordinates": [[SQUARE], [[[20, 20], [30, 20], [30, 30], [20, 30]]]]},
    )
    assert zone.contains(5, 5)
    assert zone.contains(25, 25)
    assert not zone.contains(15, 15)


def test_polygon_edges_take_the_shorter_way_across_the_antimeridian() -> None:
    zone = polygon(DATELINE)
    for lon in (170, 175, 180, -180, -175, -170):
        assert zone.contains(0, lon), lon
        assert zone.contains(10, lon), lon
    for outside in (169.5, -169.5, 0, 90, -90):
        assert not zone.contains(0, outside), outside


def test_a_polygon_split_at_the_antimeridian_per_rfc_7946_holds_both_sides() -> None:
    east = [[170, -10], [180, -10], [180, 10], [170, 10]]
    west = [[-180, -10], [-170, -10], [-170, 10], [-180, 10]]
    zone = Zone.from_geojson("m", "M", {"type": "MultiPolygon", "coordinates": [[east], [west]]})
    for lon in (170, 175, 180, -180, -175, -170):
        assert zone.contains(0, lon), lon
    assert not zone.contains(0, 0)


def test_a_hole_across_the_antimeridian_is_placed_with_its_polygon() -> None:
    hole = [[178, -2], [-178, -2], [-178, 2], [178, 2]]
    zone = polygon(DATELINE, hole)
    assert not zone.contains(0, 180)
    assert not zone.contains(0, -179)
    assert zone.contains(0, 178)
    assert zone.contains(0, 175)


def test_a_pole_is_inside_a_zone_that_reaches_it_at_any_longitude() -> None:
    cap = Zone.rectangle("c", "C", south=80, west=10, north=90, east=20)
    assert cap.contains(90, 15)
    assert cap.contains(90, -100)  # the pole has every longitude
    assert not cap.contains(-90, 15)
    assert not cap.contains(89.5, -100)
    assert cap.contains(89.999, 20)
    spike = polygon([[0, 80], [10, 80], [5, 90]])
    assert spike.contains(90, 5)
    assert spike.contains(90, 170)
    assert not spike.contains(-90, 5)
    assert not polygon([[0, 80], [10, 80], [5, 89.5]]).contains(90, 5)
    south = polygon([[0, -80], [10, -80], [5, -90]])
    assert south.contains(-90, -120)
    assert not south.contains(math.nextafter(-90, 0), -120)
    assert all(
        z.contains_many([90, 90, -90], [5, 170, 5]).tolist() == [True, True, False] for z in (cap, spike)
    )


@pytest.mark.parametrize(
    ("geometry", "message"),
    [
        ({"type": "Point", "coordinates": [0, 0]}, "expected a GeoJSON Polygon or MultiPolygon"),
        ({"type": "Polygon"}, "expected a GeoJSON Polygon or MultiPolygon"),
        ({"type": "Polygon", "coordinates": []}, r"coordinates: a polygon needs at least its outer ring"),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 95], [1, 0]]]},
            r"coordinates\[0\]\[1\]: latitude 95",
        ),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [181, 1], [1, 0]]]},
            r"\[0\]\[1\]: longitude 181 is outside",
        ),
        ({"type": "Polygon", "coordinates": [[[0, 0], [math.nan, 1], [1, 0]]]}, "not NaN"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [True, 1], [1, 0]]]}, "expected a number, got True"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1], [1, 0]]]}, r"expected a position \[lon, lat\]"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}, "at least 3 distinct positions"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [2, 2]]]}, "encloses no area"),
        ({"type": "Polygon", "coordinates": [SQUARE, [[0, 0], [1, 1]]]}, r"coordinates\[1\]: a ring needs"),
        (
            {"type": "Polygon", "coordinates": [[[0, 80], [90, 80], [180, 80], [-90, 80]]]},
            "the ring circles a pole",
        ),
        (
            {"type": "Polygon", "coordinates": [[[-180, 80], [180, 80], [180, 90], [-180, 90]]]},
            "an edge from longitude -180 to 180 has no length",
        ),
        (
            {"type": "MultiPolygon", "coordinates": [[SQUARE], [[[0, 0], [1, 0]]]]},
            r"coordinates\[1\]\[0\]: a ring needs at least 3",
        ),
    ],
)
def test_invalid_geometry_is_refused_with_where_and_why(geometry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Zone.from_geojson("z", "Z", geometry)


def test_nan_points_are_in_no_zone() -> None:
    zones = [polygon(SQUARE), Zone.rectangle("r", "R", -90, -180, 90, 180)]
    for zone in zones:
        assert not zone.contains(math.nan, 5)
        assert not zone.contains(90, math.nan)
        assert zone.contains_many([math.nan, 90, 5], [5, math.nan, math.nan]).tolist() == [False] * 3


def test_zone_index_crossings() -> None:
    assert ZoneIndex.crossings(set(), {"a"}) == ({"a"}, set())
    assert ZoneIndex.crossings({"a", "b"}, {"b", "c"}) == ({"c"}, {"a"})
    assert ZoneIndex.crossings({"a"}, {"a"}) == (set(), set())


def test_zone_index_refuses_duplicate_ids_and_uneven_cells() -> None:
    zone = polygon(SQUARE)
    with pytest.raises(ValueError, match="zone id 'z' appears twice"):
        ZoneIndex([zone, zone])
    with pytest.raises(ValueError, match="cell_deg must divide 180 evenly, got 7"):
        ZoneIndex([zone], cell_deg=7)


# -- properties ------------------------------------------------------------------------------------------

# Quarter degrees: every product in the ray test is exact, so results must equal shapely's robust ones.
grid = st.integers(-40 * 4, 40 * 4).map(lambda n: n / 4)


@st.composite
def star_rings(draw: st.DrawFn, cx: float, cy: float, scale: float) -> list[tuple[float, float]]:
    """A ring around (cx, cy): corners at increasing angles, snapped to the quarter-degree grid."""
    n = draw(st.integers(3, 9))
    angles = sorted(draw(st.lists(st.floats(0, 2 * math.pi, exclude_max=True), min_size=n, max_size=n)))
    radii = draw(st.lists(st.floats(0.2, 1.0), min_size=n, max_size=n))
    return [
        (round((cx + scale * r * math.cos(a)) * 4) / 4, round((cy + scale * r * math.sin(a)) * 4) / 4)
        for a, r in zip(angles, radii, strict=True)
    ]


@st.composite
def polygons_with_oracle(draw: st.DrawFn, frame: tuple[float, float]) -> tuple[Any, list[list[list[float]]]]:
    """(shapely polygon, its rings of [lon, lat]) with lon in ``frame``, lat in [-80, 80]."""
    cx = draw(st.integers(int(frame[0]) + 30, int(frame[1]) - 30))
    cy = draw(st.integers(-50, 50))
    scale = draw(st.sampled_from([2.0, 10.0, 30.0]))
    outer = draw(star_rings(cx, cy, scale))
    rings = [outer]
    if draw(st.booleans()):
        rings.append(draw(star_rings(cx, cy, scale / 3)))
    oracle = shapely.geometry.Polygon(rings[0], rings[1:])
    assume(oracle.is_valid)
    return oracle, [[list(p) for p in ring] for ring in rings]


def probe_points(data: st.DataObject, rings: list[list[list[float]]]) -> list[tuple[float, float]]:
    """Grid points near the polygon, plus its corners and edge midpoints (lon, lat)."""
    corners = [(lon, lat) for ring in rings for lon, lat in ring]
    mids = [
        ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
        for ring in rings
        for a, b in zip(ring, ring[1:] + ring[:1], strict=True)
    ]
    lon0, lat0 = corners[0]
    near = st.tuples(grid.map(lambda d: lon0 + d), grid.map(lambda d: max(-89.0, min(89.0, lat0 + d))))
    return corners + mids + data.draw(st.lists(near, min_size=20, max_size=60))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_polygon_contains_equals_shapely_covers(data: st.DataObject) -> None:
    oracle, rings = data.draw(polygons_with_oracle((-180, 180)))
    zone = polygon(*rings)
    points = probe_points(data, rings)
    expected = [oracle.covers(shapely.geometry.Point(lon, lat)) for lon, lat in points]
    assert [zone.contains(lat, lon) for lon, lat in points] == expected
    lons, lats = np.array(points).T
    assert zone.contains_many(lats, lons).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_polygon_across_the_antimeridian_equals_shapely_on_the_unwrapped_map(data: st.DataObject) -> None:
    # Drawn on a map running from 60 to 300 east, written in GeoJSON's [-180, 180], tested at either name.
    oracle, rings = data.draw(polygons_with_oracle((60, 300)))
    wrapped = [[[lon - 360 if lon > 180 else lon, lat] for lon, lat in ring] for ring in rings]
    zone = polygon(*wrapped)
    points = probe_points(data, rings)
    expected = [oracle.covers(shapely.geometry.Point(lon, lat)) for lon, lat in points]
    named = [(lon - 360 if lon >= 180 else lon, lat) for lon, lat in points]
    assert [zone.contains(lat, lon) for lon, lat in named] == expected
    lons, lats = np.array(named).T
    assert zone.contains_many(lats, lons).tolist() == expected


@st.composite
def any_zone(draw: st.DrawFn, zid: str = "z") -> Zone:
    if draw(st.booleans()):
        south, north = sorted(
            draw(st.lists(grid.map(lambda v: v * 2.25), min_size=2, max_size=2, unique=True))
        )
        west, east = draw(st.lists(st.integers(-180, 180), min_size=2, max_size=2, unique=True))
        assume({west, east} != {-180, 180} or (west, east) == (-180, 180))
        return Zone.rectangle(zid, zid, south, west, north, east)
    frame = draw(st.sampled_from([(-180, 180), (60, 300)]))
    _, rings = draw(polygons_with_oracle(frame))
    if draw(st.booleans()):  # a polar spike, to exercise the pole rule
        rings = [[*rings[0][:1], [rings[0][0][0], 90.0], *rings[0][1:]], *rings[1:]]
        assume(shapely.geometry.Polygon(rings[0], rings[1:]).is_valid)
    wrapped = [[[lon - 360 if lon > 180 else lon, lat] for lon, lat in ring] for ring in rings]
    return Zone.from_geojson(zid, zid, {"type": "Polygon", "coordinates": wrapped})


points_anywhere = st.lists(
    st.tuples(
        st.one_of(st.floats(-90, 90), st.sampled_from([90.0, -90.0, math.nan, math.inf])),
        st.one_of(st.floats(-180, 180), st.floats(-1000, 1000), st.sampled_from([math.nan, -math.inf])),
    ),
    min_size=1,
    max_size=50,
)


@settings(max_examples=300, deadline=None)
@given(zone=any_zone(), points=points_anywhere)
def test_contains_many_equals_contains(zone: Zone, points: list[tuple[float, float]]) -> None:
    lats, lons = np.array(points).T
    assert zone.contains_many(lats, lons).tolist() == [zone.contains(lat, lon) for lat, lon in points]


def test_longitudes_outside_the_range_wrap_round() -> None:
    zone = polygon(DATELINE)
    lons = np.array([175.0, 535.0, -185.0, -545.0, 5.0, 365.0])
    expected = [True, True, True, True, False, False]
    assert zone.contains_many(np.zeros(6), lons).tolist() == expected
    assert [zone.contains(0, lon) for lon in lons] == expected


@settings(max_examples=150, deadline=None)
@given(
    zones=st.lists(st.integers(0, 10**6), min_size=1, max_size=6, unique=True).flatmap(
        lambda ids: st.tuples(*(any_zone(str(i)) for i in ids))
    ),
    cell=st.sampled_from([0.25, 1.0, 7.5, 45.0]),
    points=points_anywhere,
)
def test_zone_index_finds_exactly_the_zones_that_contain_the_point(
    zones: tuple[Zone, ...], cell: float, points: list[tuple[float, float]]
) -> None:
    index = ZoneIndex(zones, cell_deg=cell)
    for lat, lon in points:
        assert index.zones_at(lat, lon) == {z.id for z in zones if z.contains(lat, lon)}
