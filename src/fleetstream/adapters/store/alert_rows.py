"""The alerts table's columns, rows and upsert rule, shared by the DuckDB and PostgreSQL stores.

An acknowledgement is made through the API, not the log, so a replayed copy of an alert that says
less (``active``, no acknowledgement) never erases one stored since: that is :data:`ON_CONFLICT`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fleetstream.domain.alerts import Alert

COLUMNS = (
    "id, device_id, rule_id, severity, state, opened_at, cleared_at, acknowledged_at, acknowledged_by, "
    "ack_note, first_value, last_value, message, updated_at"
)
ON_CONFLICT = """ON CONFLICT (id) DO UPDATE SET
  severity = excluded.severity,
  state = CASE WHEN excluded.state = 'active' AND alerts.state = 'acknowledged'
               THEN 'acknowledged' ELSE excluded.state END,
  cleared_at = excluded.cleared_at,
  acknowledged_at = coalesce(excluded.acknowledged_at, alerts.acknowledged_at),
  acknowledged_by = coalesce(excluded.acknowledged_by, alerts.acknowledged_by),
  ack_note = coalesce(excluded.ack_note, alerts.ack_note),
  last_value = excluded.last_value,
  message = excluded.message,
  updated_at = greatest(excluded.updated_at, alerts.updated_at)"""


def alert_rows(alerts: Iterable[Alert]) -> list[tuple[Any, ...]]:
    """Rows in :data:`COLUMNS` order, the last copy of each id only (an upsert touches a row once)."""
    latest = {a.id: a for a in alerts}
    return [
        (
            a.id,
            a.device_id,
            a.rule_id,
            a.severity,
            a.state,
            a.opened_at,
            a.cleared_at,
            a.acknowledged_at,
            a.acknowledged_by,
            a.ack_note,
            a.first_value,
            a.last_value,
            a.message,
            a.updated_at,
        )
        for a in latest.values()
    ]


def alert_from_row(row: tuple[Any, ...]) -> Alert:
    """An alert from a row selected in :data:`COLUMNS` order."""
    (aid, device, rule, severity, state, opened, cleared, acked, by, note, first, last, message, updated) = (
        row
    )
    return Alert(
        id=aid,
        device_id=device,
        rule_id=rule,
        severity=severity,
        state=state,
        opened_at=int(opened),
        first_value=float(first),
        last_value=float(last),
        message=message,
        acknowledged_at=None if acked is None else int(acked),
        acknowledged_by=by,
        ack_note=note,
        cleared_at=None if cleared is None else int(cleared),
        updated_at=int(updated),
    )
