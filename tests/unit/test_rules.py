"""Range rules: operators, duration, hysteresis, all/any, scope, escalation, auto-clear, restore."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleetstream.domain.rules import Condition, RangeRule, RuleEvaluator, RuleTransition

S = 1_000_000


def rule(when: dict[str, Any], **extra: Any) -> RangeRule:
    return RangeRule.from_dict({"id": "r1", "name": "R", "severity": "warning", "when": when, **extra})


def feed(
    ev: RuleEvaluator, readings: list[tuple[str, float, int]], device: str = "d1"
) -> list[tuple[str, int]]:
    out: list[RuleTransition] = []
    for sensor, value, ts in readings:
        out += ev.on_reading(device, "Oven", sensor, value, ts)
    return [(t.kind, t.ts) for t in out]


HOT = {"sensor": "temp", "op": ">", "threshold": 80}


@pytest.mark.parametrize(
    ("op", "threshold", "values", "expected"),
    [
        (">", 80, [80, 80.5, 80, 81], [("open", 2), ("clear", 3), ("open", 4)]),
        (">=", 80, [79.9, 80, 79.9], [("open", 2), ("clear", 3)]),
        ("<", 10, [10, 9.9, 10], [("open", 2), ("clear", 3)]),
        ("<=", 10, [10.1, 10, 10.1], [("open", 2), ("clear", 3)]),
        ("outside", [10, 20], [10, 20, 20.1, 15, 9.9], [("open", 3), ("clear", 4), ("open", 5)]),
        ("inside", [10, 20], [9.9, 10, 20, 20.1], [("open", 2), ("clear", 4)]),
    ],
)
def test_each_operator_opens_and_clears_on_its_boundary(
    op: str, threshold: Any, values: list[float], expected: list[tuple[str, int]]
) -> None:
    ev = RuleEvaluator([rule({"sensor": "temp", "op": op, "threshold": threshold})])
    assert feed(ev, [("temp", v, i + 1) for i, v in enumerate(values)]) == expected


def test_transition_carries_rule_device_severity_and_values() -> None:
    ev = RuleEvaluator([rule(HOT)])
    opened = ev.on_reading("d7", "Oven", "temp", 81.0, 5)
    ev.on_reading("d7", "Oven", "temp", 85.0, 6)
    cleared = ev.on_reading("d7", "Oven", "temp", 70.0, 7)
    assert opened == [RuleTransition("open", "r1", "d7", "warning", 81.0, 81.0, 5)]
    assert cleared == [RuleTransition("clear", "r1", "d7", "warning", 81.0, 70.0, 7)]


def test_duration_opens_only_after_holding_continuously() -> None:
    ev = RuleEvaluator([rule({**HOT, "for_us": 30 * S})])
    # Holds 0..20 s, breaks at 25 s, holds again from 26 s: opens at 26 + 30 = 56 s.
    got = feed(ev, [("temp", 81, 0), ("temp", 82, 20 * S), ("temp", 79, 25 * S), ("temp", 81, 26 * S)])
    assert got == []
    assert [(t.kind, t.ts) for t in ev.on_time(55 * S)] == []
    assert [(t.kind, t.ts, t.first_value) for t in ev.on_time(60 * S)] == [("open", 56 * S, 81.0)]
    assert ev.on_time(90 * S) == []


def test_duration_deadline_fires_before_a_later_reading() -> None:
    ev = RuleEvaluator([rule({**HOT, "for_us": 30 * S})])
    # The deadline at 30 s passes before the 40 s reading, which then clears the alert.
    assert feed(ev, [("temp", 81, 0), ("temp", 50, 40 * S)]) == [("open", 30 * S), ("clear", 40 * S)]


def test_hysteresis_value_hovering_at_edge_opens_once_and_clears_below_clear_at() -> None:
    ev = RuleEvaluator([rule({**HOT, "clear_at": 78})])
    values = [79.9, 80.1, 79.9, 80.1, 79.9, 78.5, 78.0, 80.1, 77.9, 79.9, 80.1]
    got = feed(ev, [("temp", v, i) for i, v in enumerate(values)])
    # Opens at the first 80.1 (index 1), stays open through 78.0 (not < 78), clears at 77.9 (index 8),
    # reopens at 80.1 (index 10).
    assert got == [("open", 1), ("clear", 8), ("open", 10)]


def test_hysteresis_on_a_low_threshold() -> None:
    ev = RuleEvaluator([rule({"sensor": "bat", "op": "<", "threshold": 20, "clear_at": 25})])
    got = feed(ev, [("bat", v, i) for i, v in enumerate([19, 21, 24.9, 25, 25.1])])
    assert got == [("open", 0), ("clear", 4)]


def test_all_and_any_nesting() -> None:
    when = {
        "any": [
            {"sensor": "smoke", "op": ">", "threshold": 0.5},
            {"all": [HOT, {"sensor": "door", "op": "<", "threshold": 1}]},
        ]
    }
    ev = RuleEvaluator([rule(when)])
    got = feed(
        ev,
        [
            ("temp", 90, 1),  # hot but door open (door unseen counts as false): nothing
            ("door", 0, 2),  # hot and closed: open
            ("temp", 70, 3),  # all-branch false, smoke unseen: clear
            ("smoke", 0.9, 4),  # any-branch alone: open
            ("temp", 95, 5),  # still open, no second open
            ("smoke", 0.1, 6),  # hot + closed still holds: stays open
            ("door", 1, 7),  # nothing holds: clear
        ],
    )
    assert got == [("open", 2), ("clear", 3), ("open", 4), ("clear", 7)]


def test_scope_by_devices_and_by_type() -> None:
    by_id = RangeRule.from_dict({"id": "a", "severity": "info", "when": HOT, "scope": {"devices": ["d1"]}})
    by_type = RangeRule.from_dict(
        {"id": "b", "severity": "info", "when": HOT, "scope": {"device_type": "Oven"}}
    )
    fleet = RangeRule.from_dict({"id": "c", "severity": "info", "when": HOT})
    ev = RuleEvaluator([by_id, by_type, fleet])
    seen = {
        (t.device_id, t.rule_id)
        for dev, dtype in [("d1", "Fridge"), ("d2", "Oven"), ("d3", "Fridge")]
        for t in ev.on_reading(dev, dtype, "temp", 90.0, 1)
    }
    assert seen == {("d1", "a"), ("d1", "c"), ("d2", "b"), ("d2", "c"), ("d3", "c")}


def test_escalation_once_after_delay_then_clear_keeps_escalated_severity() -> None:
    ev = RuleEvaluator([rule(HOT, escalate_after_us=60 * S, escalate_to="critical")])
    ev.on_reading("d1", "Oven", "temp", 90.0, 10 * S)
    assert ev.on_time(69 * S) == []
    esc = ev.on_time(100 * S)
    assert [(t.kind, t.ts, t.severity) for t in esc] == [("escalate", 70 * S, "critical")]
    assert ev.on_time(200 * S) == []
    assert ev.active() == {("d1", "r1"): "critical"}
    cleared = ev.on_reading("d1", "Oven", "temp", 10.0, 201 * S)
    assert [(t.kind, t.severity) for t in cleared] == [("clear", "critical")]
    assert ev.active() == {}


def test_escalation_not_reached_when_cleared_first() -> None:
    ev = RuleEvaluator([rule(HOT, escalate_after_us=60 * S, escalate_to="critical")])
    assert feed(ev, [("temp", 90, 0), ("temp", 50, 30 * S)]) == [("open", 0), ("clear", 30 * S)]
    assert ev.on_time(500 * S) == []


def test_auto_clear_after_quiet_period_and_recurrence_keeps_alert_open() -> None:
    ev = RuleEvaluator([rule(HOT, auto_clear_after_us=60 * S)])
    got = feed(ev, [("temp", 90, 0), ("temp", 50, 10 * S), ("temp", 91, 50 * S), ("temp", 50, 55 * S)])
    # Recurred at 50 s within the 60 s window: no clear, no second open.
    assert got == [("open", 0)]
    assert ev.on_time(114 * S) == []
    assert [(t.kind, t.ts) for t in ev.on_time(200 * S)] == [("clear", 115 * S)]


def test_snapshot_restore_continues_pending_duration_and_open_alert() -> None:
    rules = [
        rule({**HOT, "for_us": 30 * S, "clear_at": 78}, escalate_after_us=100 * S, escalate_to="critical")
    ]
    a = RuleEvaluator(rules)
    feed(a, [("temp", 81, 0)], device="d1")
    feed(a, [("temp", 81, 0), ("temp", 81, 40 * S)], device="d2")  # d2 open at 30 s
    state = json.loads(json.dumps(a.snapshot()))
    b = RuleEvaluator(rules)
    b.restore(state)
    assert b.snapshot() == a.snapshot()
    # d1 was pending since 0: opens at 30 s; both (open since 30 s) escalate at 130 s.
    got = sorted((t.kind, t.device_id, t.ts) for t in b.on_time(130 * S))
    assert got == [("escalate", "d1", 130 * S), ("escalate", "d2", 130 * S), ("open", "d1", 30 * S)]
    # Hysteresis state survived: 79 does not clear d2.
    assert b.on_reading("d2", "Oven", "temp", 79.0, 131 * S) == []


def test_restore_drops_tracks_of_removed_rules() -> None:
    a = RuleEvaluator([rule(HOT)])
    feed(a, [("temp", 90, 0)])
    b = RuleEvaluator([])
    b.restore(a.snapshot())
    assert b.snapshot() == {"format": 1, "tracks": []}
    with pytest.raises(ValueError, match="unknown format"):
        b.restore({"format": 99, "tracks": []})


@pytest.mark.parametrize(
    ("cond", "message"),
    [
        ({"sensor": "t", "op": "~", "threshold": 1}, "unknown operator '~'"),
        ({"sensor": "t", "op": "outside", "threshold": [5, 1]}, "min 5.0 is greater than max 1.0"),
        ({"sensor": "t", "op": ">", "threshold": 80, "clear_at": 82}, "clear_at 82.0 must be at or below"),
        ({"sensor": "t", "op": "<", "threshold": 20, "clear_at": 15}, "clear_at 15.0 must be at or above"),
        ({"sensor": "t", "op": ">", "threshold": 1, "for_us": -1}, "for_us must not be negative"),
        ({"sensor": "t", "op": ">"}, "needs a threshold"),
        ({"op": ">", "threshold": 1}, "missing field 'sensor'"),
        ({"sensor": "t", "op": "inside", "threshold": [1, 2], "clear_at": 3}, "clear_at applies to"),
    ],
)
def test_invalid_conditions_are_rejected_with_a_clear_message(cond: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        rule(cond)


def test_invalid_rules_are_rejected() -> None:
    with pytest.raises(ValueError, match="escalate_after_us and escalate_to go together"):
        rule(HOT, escalate_after_us=5)
    with pytest.raises(ValueError, match="auto_clear_after_us must not be negative"):
        rule(HOT, auto_clear_after_us=-1)
    with pytest.raises(ValueError, match="'all' needs a non-empty list"):
        rule({"all": []})


def test_condition_from_dict_reads_a_range() -> None:
    assert Condition.from_dict({"sensor": "t", "op": "inside", "threshold": [1, 2]}) == Condition(
        "t", "inside", None, 1.0, 2.0
    )


_RULES = [
    rule({**HOT, "clear_at": 78, "for_us": 3}, escalate_after_us=5, escalate_to="critical"),
    RangeRule.from_dict(
        {
            "id": "r2",
            "severity": "info",
            "auto_clear_after_us": 4,
            "when": {
                "any": [
                    {"sensor": "temp", "op": "outside", "threshold": [70, 79]},
                    {"sensor": "hum", "op": "<", "threshold": 30},
                ]
            },
        }
    ),
]
_STEP = st.one_of(
    st.tuples(
        st.sampled_from(["d1", "d2"]),
        st.sampled_from(["temp", "hum"]),
        st.floats(60, 90, allow_nan=False),
        st.integers(0, 4),
    ),
    st.tuples(st.just("tick"), st.just(""), st.just(0.0), st.integers(0, 6)),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_STEP, max_size=60), cut=st.integers(0, 60))
@example(  # two devices' deadlines due at one tick, after a restore that reordered the tracks
    steps=[("d2", "temp", 60.0, 0), *[("d1", "temp", 60.0, 0)] * 4, ("d1", "temp", 70.0, 0)]
    + [("d1", "hum", 60.0, 0)] * 3
    + [("d2", "temp", 70.0, 0), ("tick", "", 0.0, 4)],
    cut=2,
)
def test_opens_and_clears_alternate_per_device_and_rule(
    steps: list[tuple[str, str, float, int]], cut: int
) -> None:
    ev = RuleEvaluator(_RULES)
    plain = RuleEvaluator(_RULES)  # never restored: the restored one must say the same
    now = 0
    open_: dict[tuple[str, str], bool] = {}
    for i, (dev, sensor, value, dt) in enumerate(steps):
        if i == cut:
            state = json.loads(json.dumps(ev.snapshot()))
            ev = RuleEvaluator(_RULES)
            ev.restore(state)
        now += dt
        if dev == "tick":
            out, ref = ev.on_time(now), plain.on_time(now)
        else:
            out = ev.on_reading(dev, "Oven", sensor, value, now)
            ref = plain.on_reading(dev, "Oven", sensor, value, now)
        assert out == ref
        for t in out:
            key = (t.device_id, t.rule_id)
            if t.kind == "open":
                assert not open_.get(key), f"second open for {key}"
                open_[key] = True
            else:
                assert open_.get(key), f"{t.kind} without an open alert for {key}"
                if t.kind == "clear":
                    open_[key] = False
    assert {k for k, v in open_.items() if v} == set(ev.active())
