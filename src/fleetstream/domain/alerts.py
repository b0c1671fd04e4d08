"""Alerts: the lifecycle a rule's transitions drive, one alert per (device, rule) at a time.

A rule emits :class:`~fleetstream.domain.rules.RuleTransition` objects (``open``,
``escalate``, ``clear``); an :class:`AlertBook` turns them into :class:`Alert`
records with a lifecycle::

    active ──ack (by API: who, why)──▶ acknowledged
      │                                    │
      └───────────── clear (by the rule) ──┴──▶ cleared

A cleared alert is final: when the rule opens again for the same device, that
is a new alert. An alert's id is ``"{rule_id}:{device_id}:{opened_at}"``, so
replaying the same log after a restart gives the same ids. Escalation raises
the severity of the alert in place.

Only open alerts (active or acknowledged) are kept in memory and in the
snapshot; cleared ones live in the store.

Example:
    >>> from fleetstream.domain.rules import RuleTransition
    >>> book = AlertBook()
    >>> [c.kind for c in book.on_transitions([RuleTransition("open", "hot", "d1", "warning", 81, 81, 10)])]
    ['opened']
    >>> book.acknowledge("hot:d1:10", "ana", "on it", 12).state
    'acknowledged'
    >>> change = book.on_transitions([RuleTransition("clear", "hot", "d1", "warning", 81, 70, 20)])[0]
    >>> change.kind, change.alert.state, change.alert.cleared_at, book.get("hot:d1:10") is None
    ('cleared', 'cleared', 20, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from fleetstream.domain.timeutil import us_to_iso

ACTIVE, ACKNOWLEDGED, CLEARED = "active", "acknowledged", "cleared"
STATES = (ACTIVE, ACKNOWLEDGED, CLEARED)
OPENED, ESCALATED, ACKED, CLEARED_KIND = "opened", "escalated", "acknowledged", "cleared"
SNAPSHOT_FORMAT = 1


class Transition(Protocol):
    """What the alert book reads of a rule transition (a ``RuleTransition``)."""

    @property
    def kind(self) -> str: ...
    @property
    def rule_id(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def first_value(self) -> float: ...
    @property
    def last_value(self) -> float: ...
    @property
    def ts(self) -> int: ...


def alert_id(rule_id: str, device_id: str, opened_at: int) -> str:
    """The stable id of the alert a rule opened for a device at event time ``opened_at`` (µs)."""
    return f"{rule_id}:{device_id}:{opened_at}"


@dataclass(slots=True)
class Alert:
    """One alert: a rule's condition on one device, from when it opened until it cleared.

    Times are µs since the epoch (UTC); the open, escalate and clear times are event times, the
    acknowledgement time is when the API took it.
    """

    id: str
    device_id: str
    rule_id: str
    severity: str
    state: str
    opened_at: int
    first_value: float
    last_value: float
    message: str
    acknowledged_at: int | None = None
    acknowledged_by: str | None = None
    ack_note: str | None = None
    cleared_at: int | None = None
    updated_at: int = 0

    def as_json(self) -> dict[str, Any]:
        """The alert as the API shows it: times in RFC 3339."""

        def iso(us: int | None) -> str | None:
            return None if us is None else us_to_iso(us)

        return {
            "id": self.id,
            "device_id": self.device_id,
            "rule_id": self.rule_id,
            "severity": self.severity,
            "state": self.state,
            "opened_at": iso(self.opened_at),
            "acknowledged_at": iso(self.acknowledged_at),
            "acknowledged_by": self.acknowledged_by,
            "ack_note": self.ack_note,
            "cleared_at": iso(self.cleared_at),
            "first_value": self.first_value,
            "last_value": self.last_value,
            "message": self.message,
        }

    def to_state(self) -> dict[str, Any]:
        """Builtins only (JSON-ready); :meth:`from_state` reads it back."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Alert:
        """The alert of a :meth:`to_state` dict.

        Example:
            >>> a = Alert("r:d:1", "d", "r", "warning", "active", 1, 2.0, 3.0, "hot")
            >>> Alert.from_state(a.to_state()) == a
            True
        """
        return cls(**{k: state[k] for k in cls.__dataclass_fields__ if k in state})


@dataclass(frozen=True, slots=True)
class AlertChange:
    """What happened to an alert: ``opened``, ``escalated``, ``acknowledged`` or ``cleared``.

    ``alert`` is a copy taken at that moment (safe to store or send while the book moves on).
    """

    kind: str
    alert: Alert


class AlertNotOpen(LookupError):
    """The alert is not open (unknown here, or already cleared)."""


class AlertBook:
    """The open alerts of one partition; see the module docstring."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], Alert] = {}  # (device, rule) -> its one open alert
        self._by_id: dict[str, Alert] = {}

    def __len__(self) -> int:
        """Open alerts."""
        return len(self._open)

    def on_transitions(
        self, transitions: Iterable[Transition], messages: Mapping[str, str] | None = None
    ) -> list[AlertChange]:
        """Apply rule transitions in order; the changes they made.

        Args:
            transitions: ``open``, ``escalate`` and ``clear`` transitions of the rules.
            messages: optional rule id → human name, used in the alert's message.
        """
        out: list[AlertChange] = []
        names = messages or {}
        for t in transitions:
            key = (t.device_id, t.rule_id)
            alert = self._open.get(key)
            if t.kind == "open" or (t.kind == "escalate" and alert is None):
                if alert is not None:  # already open (a rule re-sent it): keep the one alert
                    alert.last_value, alert.updated_at = t.last_value, t.ts
                    continue
                alert = Alert(
                    id=alert_id(t.rule_id, t.device_id, t.ts),
                    device_id=t.device_id,
                    rule_id=t.rule_id,
                    severity=t.severity,
                    state=ACTIVE,
                    opened_at=t.ts,
                    first_value=t.first_value,
                    last_value=t.last_value,
                    message=_message(t, names.get(t.rule_id)),
                    updated_at=t.ts,
                )
                self._open[key] = alert
                self._by_id[alert.id] = alert
                out.append(AlertChange(OPENED, replace(alert)))
            elif alert is None:
                continue  # a clear of an alert this book never saw open (rule reloaded): nothing to do
            elif t.kind == "escalate":
                alert.severity, alert.last_value, alert.updated_at = t.severity, t.last_value, t.ts
                out.append(AlertChange(ESCALATED, replace(alert)))
            elif t.kind == "clear":
                alert.state, alert.cleared_at = CLEARED, t.ts
                alert.last_value, alert.updated_at = t.last_value, t.ts
                del self._open[key]
                del self._by_id[alert.id]
                out.append(AlertChange(CLEARED_KIND, replace(alert)))
        return out

    def acknowledge(self, alert_id: str, by: str, note: str | None, at_us: int) -> Alert:
        """Mark an open alert acknowledged (again: the newest who/why wins); a copy of it.

        Raises:
            AlertNotOpen: No open alert has this id.
        """
        alert = self._by_id.get(alert_id)
        if alert is None:
            msg = f"alert {alert_id!r} is not open"
            raise AlertNotOpen(msg)
        alert.state, alert.acknowledged_at, alert.acknowledged_by, alert.ack_note = (
            ACKNOWLEDGED,
            at_us,
            by,
            note,
        )
        alert.updated_at = max(alert.updated_at, at_us)
        return replace(alert)

    def get(self, alert_id: str) -> Alert | None:
        """A copy of an open alert, or None."""
        alert = self._by_id.get(alert_id)
        return None if alert is None else replace(alert)

    def open_alerts(self) -> list[Alert]:
        """Copies of the open alerts, by id."""
        return [replace(a) for _, a in sorted(self._by_id.items())]

    def snapshot(self) -> dict[str, Any]:
        """Builtins-only state, for :meth:`restore`."""
        return {"format": SNAPSHOT_FORMAT, "open": [a.to_state() for _, a in sorted(self._by_id.items())]}

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> AlertBook:
        """The book of a :meth:`snapshot`.

        Raises:
            ValueError: Unknown snapshot format.
        """
        if state.get("format") != SNAPSHOT_FORMAT:
            msg = f"alert snapshot: unknown format {state.get('format')!r}"
            raise ValueError(msg)
        book = cls()
        for raw in state["open"]:
            alert = Alert.from_state(raw)
            book._open[(alert.device_id, alert.rule_id)] = alert
            book._by_id[alert.id] = alert
        return book


def _message(t: Transition, name: str | None) -> str:
    given = getattr(t, "message", None)
    if given:
        return f"{name}: {given}" if name else str(given)
    return f"{name or t.rule_id} on {t.device_id} (value {t.last_value:g})"
