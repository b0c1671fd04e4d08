"""The rule book: every rule kind, zone crossings, hot reload, snapshots, and batch-split invariance."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetstream.domain.rule_kinds import AnomalyRule, OfflineRule, RateRule, ZoneRule
from fleetstream.domain.rulebook import RuleBook, RuleOutput, ZoneCrossing, parse_rule, parse_zone
from fleetstream.domain.rules import RangeRule, RuleEvaluator, RuleTransition

S = 1_000_000
Row = tuple[str, str, str, float, int]  # device, type, sensor, value, ts

DEPOT = {"id": "depot", "name": "Depot", "rectangle": {"south": 0, "west": 0, "north": 10, "east": 10}}
YARD = {"id": "yard", "name": "Yard", "rectangle": {"south": 5, "west": 5, "north": 15, "east": 15}}
HOT = {"id": "hot", "name": "Hot", "when": {"sensor": "temp", "op": ">", "threshold": 80, "clear_at": 78}}


def feed(book: RuleBook, rows: list[Row]) -> RuleOutput:
    if not rows:
        return RuleOutput()
    dev, typ, sensor, value, ts = (list(c) for c in zip(*rows, strict=True))
    return book.on_batch(dev, typ, sensor, value, ts)


def kinds(out: RuleOutput | list[RuleTransition]) -> list[tuple[str, str, str, int]]:
    ts = out.transitions if isinstance(out, RuleOutput) else out
    return [(t.kind, t.rule_id, t.device_id, t.ts) for t in ts]


def at(device: str, lat: float, lon: float, ts: int, typ: str = "Tracker") -> list[Row]:
    return [(device, typ, "latitude", lat, ts), (device, typ, "longitude", lon, ts)]


# -- definitions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "d",
    [
        {**HOT, "kind": "range", "severity": "critical", "webhook": "http://127.0.0.1:9/hook"},
        {"id": "r", "when": {"any": [{"sensor": "a", "op": "outside", "threshold": [1, 2], "for_us": 5},
                                     {"sensor": "b", "op": "<=", "threshold": 0}]},
         "scope": {"devices": ["x", "y"]}, "escalate_after_us": 10, "escalate_to": "critical",
         "auto_clear_after_us": 3},
        {"kind": "zone", "id": "z", "name": "Z", "zone_id": "depot", "must": "stay_outside",
         "scope": {"device_type": "Tracker"}},
        {"kind": "offline", "id": "o", "after_s": 120, "severity": "critical"},
        {"kind": "rate", "id": "q", "sensor": "temp", "max_per_s": 0.5, "webhook": "https://example.org/x"},
        {"kind": "anomaly", "id": "a", "sensor": "temp", "k": 3.5, "warmup": 20, "alpha": 0.1},
    ],
)  # fmt: skip
def test_every_kind_round_trips_through_to_dict(d: dict[str, Any]) -> None:
    rule = parse_rule(d)
    again = parse_rule(json.loads(json.dumps(rule.to_dict())))
    assert again == rule
    assert again.id == d["id"]
    assert again.webhook == d.get("webhook")


def test_kinds_parse_to_their_classes_with_defaults() -> None:
    assert isinstance(parse_rule(HOT), RangeRule)
    z = parse_rule({"kind": "zone", "id": "z", "zone_id": "depot"})
    assert isinstance(z, ZoneRule)
    assert (z.must, z.name, z.severity, z.devices, z.device_type) == (
        "stay_inside",
        "z",
        "warning",
        None,
        None,
    )
    o = parse_rule({"kind": "offline", "id": "o", "after_s": 1.5})
    assert isinstance(o, OfflineRule)
    assert o.after_us == 1_500_000
    a = parse_rule({"kind": "anomaly", "id": "a", "sensor": "t"})
    assert isinstance(a, AnomalyRule)
    assert (a.k, a.warmup) == (4.0, 30)
    assert isinstance(parse_rule({"kind": "rate", "id": "q", "sensor": "t", "max_per_s": 2}), RateRule)


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"kind": "nope", "id": "x"}, "rule 'x': unknown kind 'nope'"),
        ({"kind": "zone", "zone_id": "depot"}, "rule: id must be a non-empty string"),
        ({"kind": "zone", "id": "z"}, "rule 'z': zone_id must be a non-empty string, got None"),
        ({"kind": "zone", "id": "z", "zone_id": "d", "must": "hover"}, "rule 'z': must is 'stay_inside'"),
        ({"kind": "offline", "id": "o"}, "rule 'o': after_s must be a finite number, got None"),
        ({"kind": "offline", "id": "o", "after_s": 0}, "rule 'o': after_s must be a positive number, got 0"),
        (
            {"kind": "offline", "id": "o", "after_s": "10"},
            "rule 'o': after_s must be a finite number, got '10'",
        ),
        (
            {"kind": "rate", "id": "q", "sensor": "t", "max_per_s": -1},
            "rule 'q': max_per_s must be a positive",
        ),
        (
            {"kind": "anomaly", "id": "a", "sensor": "t", "warmup": 1},
            "rule 'a': warmup must be an integer >= 2",
        ),
        ({"kind": "anomaly", "id": "a", "sensor": "t", "alpha": 1}, "rule 'a': alpha must be in (0, 1)"),
        ({"kind": "anomaly", "id": "a"}, "rule 'a': sensor must be a non-empty string"),
        (
            {"kind": "rate", "id": "q", "sensor": "t", "max_per_s": 1, "k": 3},
            "rule 'q': unknown field(s) 'k'",
        ),
        ({**HOT, "webhook": "ftp://x"}, "rule 'hot': webhook must be an http:// or https:// URL"),
        ({**HOT, "scope": {"devices": "d1"}}, "rule 'hot': scope.devices must be a list of device ids"),
        ({"id": "r"}, "rule: missing field 'when'"),
        ({**HOT, "treshold": 3}, "rule 'hot': unknown field(s) 'treshold'"),
        ({"id": "r", "when": {"sensor": "t", "op": "~"}}, "condition on 't': unknown operator '~'"),
        ({"id": "r", "when": {"sensor": "t", "op": ">", "threshold": "hot"}}, "rule 'r': could not convert"),
        ({"id": "r", "when": {"all": []}}, "rule 'r': 'all' needs a non-empty list"),
        ([1, 2], "rule: expected a JSON object"),
    ],
)
def test_bad_rules_raise_value_error_naming_the_field(d: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_rule(d)


def test_zones_parse_from_a_rectangle_or_geojson() -> None:
    rect = parse_zone(DEPOT)
    assert (rect.id, rect.name, rect.contains(5, 5), rect.contains(11, 5)) == ("depot", "Depot", True, False)
    square = {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]}
    poly = parse_zone({"id": "sq", "geometry": square})
    assert (poly.name, poly.contains(2, 2), poly.contains(2, 5)) == ("sq", True, False)


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"name": "x", "rectangle": {}}, "zone: id must be a non-empty string"),
        ({"id": "z"}, "zone 'z': give exactly one of rectangle or geometry"),
        ({"id": "z", "rectangle": {"south": 0, "west": 0, "north": 1}}, "zone 'z': rectangle: east must be"),
        (
            {"id": "z", "rectangle": {"south": 0, "west": 0, "north": 95, "east": 1}},
            "zone 'z': north-east corner",
        ),
        (
            {"id": "z", "rectangle": {"south": 2, "west": 0, "north": 1, "east": 1}},
            "zone 'z': south (2) must be",
        ),
        (
            {"id": "z", "geometry": {"type": "Point", "coordinates": [0, 0]}},
            "zone 'z': expected a GeoJSON Polygon",
        ),
        (
            {"id": "z", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 95], [1, 0]]]}},
            "zone 'z': coordinates[0][1]: latitude 95",
        ),
        ({"id": "z", "geometry": "square"}, "zone 'z': geometry must be a GeoJSON"),
    ],
)
def test_bad_zones_raise_value_error_naming_the_field(d: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_zone(d)


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="rule id 'hot' appears twice"):
        RuleBook([parse_rule(HOT), parse_rule(HOT)])
    with pytest.raises(ValueError, match="zone id 'depot' appears twice"):
        RuleBook([], [parse_zone(DEPOT), parse_zone(DEPOT)])


# -- each kind -----------------------------------------------------------------------------------------


def test_range_rules_run_as_the_evaluator_with_hysteresis_and_messages() -> None:
    book = RuleBook([parse_rule(HOT)])
    rows = [("d1", "Oven", "temp", v, i * S) for i, v in enumerate([79, 81, 79, 80.5, 77.9, 81.25])]
    out = feed(book, rows)
    assert kinds(out) == [
        ("open", "hot", "d1", 1 * S),
        ("clear", "hot", "d1", 4 * S),
        ("open", "hot", "d1", 5 * S),
    ]
    assert [(t.first_value, t.last_value, t.message) for t in out.transitions] == [
        (81.0, 81.0, "temp > 80 (value 81)"),
        (81.0, 77.9, "cleared: temp > 80 no longer holds (value 77.9)"),
        (81.25, 81.25, "temp > 80 (value 81.25)"),
    ]
    assert book.active() == {("d1", "hot"): "warning"}


def test_zone_rules_and_crossings_follow_the_tracker() -> None:
    rules = [
        parse_rule({"kind": "zone", "id": "home", "zone_id": "depot", "must": "stay_inside"}),
        parse_rule({"kind": "zone", "id": "no-yard", "zone_id": "yard", "must": "stay_outside"}),
    ]
    book = RuleBook(rules, [parse_zone(DEPOT), parse_zone(YARD)])
    path = [(2, 2), (7, 7), (12, 12), (13, 13), (2, 2)]
    outs = [feed(book, at("t1", lat, lon, (i + 1) * S)) for i, (lat, lon) in enumerate(path)]
    assert [kinds(o) for o in outs] == [
        [],
        [("open", "no-yard", "t1", 2 * S)],
        [("open", "home", "t1", 3 * S)],
        [],
        [("clear", "home", "t1", 5 * S), ("clear", "no-yard", "t1", 5 * S)],
    ]
    assert [t.message for o in outs for t in o.transitions] == [
        "entered zone yard", "left zone depot", "back in zone depot", "out of zone yard again",
    ]  # fmt: skip
    assert [c for o in outs for c in o.crossings] == [
        ZoneCrossing("t1", "depot", True, 1 * S, 2.0, 2.0),
        ZoneCrossing("t1", "yard", True, 2 * S, 7.0, 7.0),
        ZoneCrossing("t1", "depot", False, 3 * S, 12.0, 12.0),
        ZoneCrossing("t1", "depot", True, 5 * S, 2.0, 2.0),
        ZoneCrossing("t1", "yard", False, 5 * S, 2.0, 2.0),
    ]


def test_a_position_pairs_latitude_and_longitude_of_the_same_event_time_across_batches() -> None:
    book = RuleBook([], [parse_zone(DEPOT)])
    assert feed(book, [("t1", "Tracker", "latitude", 2.0, 1 * S)]).crossings == []
    assert feed(book, [("t1", "Tracker", "longitude", 2.0, 2 * S)]).crossings == []  # another time: no pair
    assert feed(
        book, [("t1", "Tracker", "speed", 3.0, 2 * S), ("t1", "Tracker", "latitude", 3.0, 2 * S)]
    ).crossings == [ZoneCrossing("t1", "depot", True, 2 * S, 3.0, 2.0)]


def test_non_finite_readings_are_no_position_and_no_rate() -> None:
    rules = [
        parse_rule({"kind": "zone", "id": "home", "zone_id": "depot"}),
        parse_rule({"kind": "rate", "id": "jump", "sensor": "temp", "max_per_s": 2}),
    ]
    book = RuleBook(rules, [parse_zone(DEPOT)])
    nan = math.nan
    out = feed(book, at("t1", 2, 2, S) + at("t1", nan, 2, 2 * S) + at("t1", 2, math.inf, 3 * S))
    assert (kinds(out), len(out.crossings)) == ([], 1)
    temps = [("d1", "Oven", "temp", v, t * S) for t, v in [(0, 10.0), (1, nan), (2, 11.0), (3, 20.0)]]
    assert kinds(feed(book, temps)) == [("open", "jump", "d1", 3 * S)]


def test_a_zone_rule_naming_an_unknown_zone_never_fires() -> None:
    book = RuleBook([parse_rule({"kind": "zone", "id": "z", "zone_id": "nowhere"})], [parse_zone(DEPOT)])
    assert kinds(feed(book, at("t1", 50, 50, S))) == []


OFFLINE = {"kind": "offline", "id": "quiet", "after_s": 60}


def test_offline_opens_at_the_deadline_once_the_watermark_reaches_it_and_clears_on_the_next_reading() -> None:
    book = RuleBook([parse_rule(OFFLINE)])
    feed(book, [("d1", "Oven", s, 1.0, 0) for s in ("a", "b", "c")] + [("d2", "Oven", "a", 1.0, 10 * S)])
    assert kinds(book.on_time(60 * S - 1)) == []
    opened = book.on_time(60 * S)
    assert kinds(opened) == [("open", "quiet", "d1", 60 * S)]
    assert (opened.transitions[0].message, opened.transitions[0].first_value) == ("no reading for 60 s", 60.0)
    assert kinds(book.on_time(71 * S)) == [("open", "quiet", "d2", 70 * S)]  # stamped at its deadline
    cleared = feed(book, [("d1", "Oven", "a", 1.0, 75 * S)])
    assert kinds(cleared) == [("clear", "quiet", "d1", 75 * S)]
    assert cleared.transitions[0].message == "reading again after 75 s"
    assert kinds(book.on_time(135 * S - 1)) == []
    assert kinds(book.on_time(135 * S)) == [("open", "quiet", "d1", 135 * S)]
    assert kinds(book.on_time(10_000 * S)) == []  # d2 sent once and stays offline: one alert, not a stream
    assert book.active() == {("d1", "quiet"): "warning", ("d2", "quiet"): "warning"}


def test_offline_gap_inside_one_batch_opens_at_the_deadline_without_a_timer() -> None:
    book = RuleBook([parse_rule(OFFLINE)])
    out = feed(
        book,
        [("d1", "Oven", "a", 1.0, 0), ("d1", "Oven", "a", 1.0, 59 * S), ("d1", "Oven", "a", 1.0, 130 * S)],
    )
    assert kinds(out) == [("open", "quiet", "d1", 119 * S), ("clear", "quiet", "d1", 130 * S)]


def test_offline_scope_by_device_type() -> None:
    book = RuleBook([parse_rule({**OFFLINE, "scope": {"device_type": "Host"}})])
    feed(book, [("h1", "Host", "cpu", 1.0, 0), ("o1", "Oven", "temp", 1.0, 0)])
    assert kinds(book.on_time(100 * S)) == [("open", "quiet", "h1", 60 * S)]


def test_rate_of_change_between_consecutive_readings() -> None:
    book = RuleBook([parse_rule({"kind": "rate", "id": "jump", "sensor": "temp", "max_per_s": 2})])
    series = [(0, 10.0), (1, 11.0), (2, 15.0), (2, 30.0), (3, 18.0), (5, 19.0), (6, 21.0)]
    out = feed(
        book, [("d1", "Oven", "temp", v, t * S) for t, v in series] + [("d1", "Oven", "fan", 1e9, 7 * S)]
    )
    # rates: 1, 4 (opens), Δt = 0 ignored, 3 (still open), 0.5 (clears), 2 (not above the limit)
    assert kinds(out) == [("open", "jump", "d1", 2 * S), ("clear", "jump", "d1", 5 * S)]
    assert [(t.first_value, t.last_value, t.message) for t in out.transitions] == [
        (4.0, 4.0, "temp changing 4/s > 2/s"),
        (4.0, 0.5, "temp changing 0.5/s <= 2/s"),
    ]


def test_anomaly_scores_against_the_statistics_before_each_reading() -> None:
    rule = {"kind": "anomaly", "id": "odd", "sensor": "temp", "k": 3, "warmup": 4}
    book = RuleBook([parse_rule(rule)])
    # After 9, 11, 9, 11 the mean is 10 and the variance 1 (warm-up weights 1/n): 13.5 is 3.5 deviations.
    values = [9.0, 11.0, 9.0, 11.0, 13.5, 11.0]
    out = feed(book, [("d1", "Oven", "temp", v, i * S) for i, v in enumerate(values)])
    assert kinds(out) == [("open", "odd", "d1", 4 * S), ("clear", "odd", "d1", 5 * S)]
    assert out.transitions[0].message == "anomaly: 3.5 deviations"
    assert (out.transitions[1].first_value, out.transitions[1].last_value) == (13.5, 11.0)


def anomaly_oracle(values: list[float], k: float, warmup: int, alpha: float) -> list[tuple[str, int]]:
    """The same statistics one reading at a time, in plain Python."""
    mean, var, is_open, out = 0.0, 0.0, False, []
    for n, v in enumerate(values):  # n: readings before this one
        if n >= warmup:
            sd = math.sqrt(var)
            z = abs(v - mean) / sd if sd > 0 else (0.0 if v == mean else math.inf)
            if (z > k) != is_open:
                is_open = z > k
                out.append(("open" if is_open else "clear", n))
        w = max(alpha, 1 / (n + 1))
        diff = v - mean
        mean += w * diff
        var = (1 - w) * (var + diff * w * diff)
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["d1", "d2"]), st.floats(-5, 5) | st.sampled_from([40.0, -40.0])),
                max_size=80), st.integers(1, 30))  # fmt: skip
def test_anomaly_matches_a_scalar_oracle_per_device(rows: list[tuple[str, float]], cut: int) -> None:
    book = RuleBook([parse_rule({"kind": "anomaly", "id": "a", "sensor": "x", "k": 2.5, "warmup": 5})])
    batch = [(d, "T", "x", v, i) for i, (d, v) in enumerate(rows)]
    got = kinds(feed(book, batch[:cut])) + kinds(feed(book, batch[cut:]))
    for dev in ("d1", "d2"):
        idx = [i for i, (d, _) in enumerate(rows) if d == dev]
        expected = [(kind, idx[j]) for kind, j in anomaly_oracle([rows[i][1] for i in idx], 2.5, 5, 0.05)]
        assert [(kind, ts) for kind, _, d, ts in got if d == dev] == expected


# -- hot reload ----------------------------------------------------------------------------------------


def test_update_keeps_the_state_of_unchanged_rules() -> None:
    book = RuleBook([parse_rule(HOT), parse_rule(OFFLINE)])
    feed(book, [("d1", "Oven", "temp", 81.0, S)])
    out = book.update([parse_rule(HOT), parse_rule(OFFLINE)], [], 2 * S)
    assert kinds(out) == []
    assert book.active() == {("d1", "hot"): "warning"}
    assert kinds(feed(book, [("d1", "Oven", "temp", 79.0, 3 * S)])) == []  # hysteresis state kept: 79 > 78
    assert kinds(feed(book, [("d1", "Oven", "temp", 77.0, 4 * S)])) == [("clear", "hot", "d1", 4 * S)]
    assert kinds(book.on_time(64 * S)) == [("open", "quiet", "d1", 64 * S)]  # offline deadline kept


def test_update_clears_the_open_alerts_of_changed_and_removed_rules_at_now() -> None:
    book = RuleBook([parse_rule(HOT), parse_rule(OFFLINE)])
    feed(book, [("d1", "Oven", "temp", 81.0, S), ("d2", "Oven", "temp", 90.0, S)])
    book.on_time(61 * S)
    assert len(book.active()) == 4
    hotter = parse_rule({**HOT, "when": {"sensor": "temp", "op": ">", "threshold": 85}})
    out = book.update([hotter], [], 70 * S)
    got = sorted((t.kind, t.rule_id, t.device_id, t.ts, t.message) for t in out.transitions)
    assert got == [
        ("clear", "hot", "d1", 70 * S, "cleared: rule hot redefined"),
        ("clear", "hot", "d2", 70 * S, "cleared: rule hot redefined"),
        ("clear", "quiet", "d1", 70 * S, "cleared: rule quiet removed"),
        ("clear", "quiet", "d2", 70 * S, "cleared: rule quiet removed"),
    ]
    assert book.active() == {}
    assert kinds(feed(book, [("d2", "Oven", "temp", 90.0, 71 * S)])) == [("open", "hot", "d2", 71 * S)]


def test_update_of_a_zone_restarts_the_rules_that_name_it() -> None:
    rule = parse_rule({"kind": "zone", "id": "home", "zone_id": "depot"})
    book = RuleBook([rule], [parse_zone(DEPOT)])
    assert kinds(feed(book, at("t1", 20, 20, S))) == [("open", "home", "t1", S)]
    assert kinds(book.update([rule], [parse_zone(DEPOT)], 2 * S)) == []
    wider = parse_zone({**DEPOT, "rectangle": {"south": 0, "west": 0, "north": 30, "east": 30}})
    cleared = book.update([rule], [wider], 3 * S)
    assert kinds(cleared) == [("clear", "home", "t1", 3 * S)]
    assert cleared.transitions[0].message == "cleared: zone depot changed"
    out = feed(book, at("t1", 20, 20, 4 * S))
    assert (kinds(out), out.crossings) == ([], [ZoneCrossing("t1", "depot", True, 4 * S, 20.0, 20.0)])


# -- streams: splits, snapshots, the evaluator as oracle ------------------------------------------------

ALL_KINDS = [
    HOT,
    {
        "id": "slow-hot",
        "when": {"sensor": "temp", "op": ">", "threshold": 50, "for_us": 3 * S},
        "escalate_after_us": 4 * S,
        "escalate_to": "critical",
        "auto_clear_after_us": 2 * S,
    },
    {
        "id": "both",
        "when": {
            "all": [
                {"sensor": "temp", "op": ">", "threshold": 60},
                {"sensor": "fan", "op": "<", "threshold": 10},
            ]
        },
        "scope": {"device_type": "Oven"},
    },
    {"kind": "zone", "id": "home", "zone_id": "depot"},
    {
        "kind": "zone",
        "id": "no-yard",
        "zone_id": "yard",
        "must": "stay_outside",
        "scope": {"devices": ["d1"]},
    },
    {"kind": "offline", "id": "quiet", "after_s": 5},
    {"kind": "rate", "id": "jump", "sensor": "temp", "max_per_s": 20},
    {"kind": "anomaly", "id": "odd", "sensor": "fan", "k": 2, "warmup": 3},
]


def make_book() -> RuleBook:
    return RuleBook([parse_rule(r) for r in ALL_KINDS], [parse_zone(DEPOT), parse_zone(YARD)])


reading = st.tuples(
    st.sampled_from(["d0", "d1", "d2"]),
    st.sampled_from(["temp", "fan", "pos"]),
    st.sampled_from([0.0, 5.0, 8.0, 12.0, 55.0, 70.0, 79.0, 81.0]),
    st.integers(0, 4),  # seconds after the previous reading
)


def rows_of(raw: list[tuple[str, str, float, int]]) -> list[Row]:
    rows: list[Row] = []
    t = 0
    for dev, sensor, v, dt in raw:
        t += dt * S
        typ = "Oven" if dev != "d2" else "Tracker"
        if sensor == "pos":
            rows += at(dev, v / 5, v / 5, t, typ)
        else:
            rows.append((dev, typ, sensor, v, t))
    return rows


def by_key(out: list[RuleTransition]) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    keyed: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
    for t in out:
        keyed[(t.rule_id, t.device_id)].append(
            (t.kind, t.ts, t.severity, t.first_value, t.last_value, t.message)
        )
    return dict(keyed)


def run_split(rows: list[Row], cuts: list[int]) -> tuple[list[RuleTransition], list[ZoneCrossing]]:
    """Feed ``rows`` in batches cut at ``cuts``; the watermark between batches is the next row's time."""
    book = make_book()
    transitions: list[RuleTransition] = []
    crossings: list[ZoneCrossing] = []
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(rows)}), len(rows)]
    for lo, hi in itertools.pairwise(bounds):
        out = feed(book, rows[lo:hi])
        if hi < len(rows):
            later = book.on_time(min(r[4] for r in rows[hi:]))
            out.transitions += later.transitions
        transitions += out.transitions
        crossings += out.crossings
    transitions += book.on_time(rows[-1][4] + 100 * S).transitions if rows else []
    return transitions, crossings


@settings(max_examples=150, deadline=None)
@given(st.lists(reading, min_size=1, max_size=60), st.lists(st.integers(0, 120), max_size=8))
def test_results_do_not_depend_on_batch_boundaries(
    raw: list[tuple[str, str, float, int]], cuts: list[int]
) -> None:
    rows = rows_of(raw)
    whole, whole_crossings = run_split(rows, [])
    split, split_crossings = run_split(rows, cuts)
    assert by_key(split) == by_key(whole)
    assert split_crossings == whole_crossings


@settings(max_examples=100, deadline=None)
@given(st.lists(reading, min_size=1, max_size=60), st.lists(st.integers(0, 120), max_size=6))
def test_range_rules_in_the_book_match_the_evaluator_fed_every_reading(
    raw: list[tuple[str, str, float, int]], cuts: list[int]
) -> None:
    rules = [r for r in map(parse_rule, ALL_KINDS) if isinstance(r, RangeRule)]
    rows = rows_of(raw)
    book = RuleBook(rules)
    ev = RuleEvaluator(rules)
    got: list[RuleTransition] = []
    expected: list[RuleTransition] = []
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(rows)}), len(rows)]
    for lo, hi in itertools.pairwise(bounds):
        got += feed(book, rows[lo:hi]).transitions
        for dev, typ, sensor, v, t in rows[lo:hi]:
            expected += ev.on_reading(dev, typ, sensor, v, t)
    end = rows[-1][4] + 100 * S
    got += book.on_time(end).transitions
    expected += ev.on_time(end)
    assert by_key(got) == by_key(expected)
    assert book.active() == ev.active()


@settings(max_examples=80, deadline=None)
@given(st.lists(reading, min_size=2, max_size=60), st.integers(1, 100))
def test_snapshot_and_restore_mid_stream_continue_exactly(
    raw: list[tuple[str, str, float, int]], cut: int
) -> None:
    rows = rows_of(raw)
    cut = min(cut, len(rows) - 1)
    book = make_book()
    feed(book, rows[:cut])
    book.on_time(rows[cut][4])
    saved = json.loads(json.dumps(book.snapshot()))
    twin = make_book()
    twin.restore(saved)
    assert twin.snapshot() == book.snapshot()
    assert twin.active() == book.active()
    a, b = feed(book, rows[cut:]), feed(twin, rows[cut:])
    end = rows[-1][4] + 100 * S
    a.transitions += book.on_time(end).transitions
    b.transitions += twin.on_time(end).transitions
    assert (kinds(b), b.crossings, [t.message for t in b.transitions]) == (
        kinds(a),
        a.crossings,
        [t.message for t in a.transitions],
    )
    assert twin.snapshot() == book.snapshot()


def test_restore_drops_the_state_of_a_redefined_rule_and_refuses_an_unknown_format() -> None:
    book = RuleBook([parse_rule(HOT)])
    feed(book, [("d1", "Oven", "temp", 81.0, S)])
    saved = book.snapshot()
    other = RuleBook([parse_rule({**HOT, "name": "Renamed"})])
    other.restore(saved)
    assert other.active() == {}
    with pytest.raises(ValueError, match="unknown format 9"):
        other.restore({**saved, "format": 9})
