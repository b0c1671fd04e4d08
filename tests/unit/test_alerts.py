"""Alert lifecycle: one alert per (device, rule), ack, clear, re-open as a new alert, escalation, state."""

from __future__ import annotations

import pytest

from fleetstream.domain.alerts import AlertBook, AlertNotOpen, alert_id
from fleetstream.domain.rules import RuleTransition


def t(
    kind: str, ts: int, value: float, device: str = "d1", rule: str = "hot", sev: str = "warning"
) -> RuleTransition:
    return RuleTransition(kind, rule, device, sev, 81.0, value, ts)


def test_open_ack_clear_then_reopen_is_a_new_alert() -> None:
    book = AlertBook()
    [opened] = book.on_transitions([t("open", 10, 81.0)], {"hot": "Too hot"})
    assert opened.kind == "opened"
    assert opened.alert.id == "hot:d1:10"
    assert (opened.alert.state, opened.alert.opened_at, opened.alert.severity) == ("active", 10, "warning")
    assert opened.alert.message == "Too hot on d1 (value 81)"

    acked = book.acknowledge("hot:d1:10", "ana", "checking the fan", 15)
    assert (acked.state, acked.acknowledged_by, acked.ack_note, acked.acknowledged_at) == (
        "acknowledged",
        "ana",
        "checking the fan",
        15,
    )
    [cleared] = book.on_transitions([t("clear", 20, 70.0)])
    assert (cleared.kind, cleared.alert.state, cleared.alert.cleared_at) == ("cleared", "cleared", 20)
    assert (cleared.alert.acknowledged_by, cleared.alert.last_value, cleared.alert.first_value) == (
        "ana",
        70.0,
        81.0,
    )
    assert len(book) == 0
    with pytest.raises(AlertNotOpen):
        book.acknowledge("hot:d1:10", "bob", None, 21)

    [again] = book.on_transitions([t("open", 30, 85.0)])
    assert again.alert.id == alert_id("hot", "d1", 30) == "hot:d1:30"
    assert (again.alert.state, again.alert.acknowledged_by) == ("active", None)


def test_one_open_alert_per_device_and_rule() -> None:
    book = AlertBook()
    changes = book.on_transitions(
        [
            t("open", 1, 81.0),
            t("open", 2, 82.0),
            t("open", 3, 90.0, device="d2"),
            t("open", 4, 1.0, rule="cold"),
        ]
    )
    assert [c.alert.id for c in changes] == ["hot:d1:1", "hot:d2:3", "cold:d1:4"]
    assert sorted(a.id for a in book.open_alerts()) == ["cold:d1:4", "hot:d1:1", "hot:d2:3"]
    assert book.get("hot:d1:1") is not None
    assert book.get("hot:d1:1").last_value == 82.0  # type: ignore[union-attr]


def test_escalation_raises_the_severity_in_place() -> None:
    book = AlertBook()
    book.on_transitions([t("open", 1, 81.0)])
    [esc] = book.on_transitions([t("escalate", 31, 83.0, sev="critical")])
    assert (esc.kind, esc.alert.id, esc.alert.severity, esc.alert.state) == (
        "escalated",
        "hot:d1:1",
        "critical",
        "active",
    )
    [cleared] = book.on_transitions([t("clear", 40, 70.0, sev="critical")])
    assert cleared.alert.severity == "critical"


def test_a_clear_without_an_open_alert_changes_nothing() -> None:
    book = AlertBook()
    assert book.on_transitions([t("clear", 5, 1.0)]) == []
    assert len(book) == 0


def test_snapshot_and_restore_keep_open_alerts_and_acks() -> None:
    book = AlertBook()
    book.on_transitions([t("open", 1, 81.0), t("open", 2, 82.0, device="d2")])
    book.acknowledge("hot:d2:2", "ana", None, 3)
    copy = AlertBook.restore(book.snapshot())
    assert copy.open_alerts() == book.open_alerts()
    [cleared] = copy.on_transitions([t("clear", 9, 70.0, device="d2")])
    assert (cleared.alert.id, cleared.alert.acknowledged_by) == ("hot:d2:2", "ana")
    with pytest.raises(ValueError, match="unknown format"):
        AlertBook.restore({"format": 99})


def test_as_json_shows_rfc3339_times() -> None:
    book = AlertBook()
    [c] = book.on_transitions([t("open", 1_700_000_000_000_000, 81.0)])
    shown = c.alert.as_json()
    assert shown["opened_at"] == "2023-11-14T22:13:20Z"
    assert shown["cleared_at"] is None
    assert set(shown) == {
        "id",
        "device_id",
        "rule_id",
        "severity",
        "state",
        "opened_at",
        "acknowledged_at",
        "acknowledged_by",
        "ack_note",
        "cleared_at",
        "first_value",
        "last_value",
        "message",
    }
