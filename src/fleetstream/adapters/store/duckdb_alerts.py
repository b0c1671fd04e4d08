"""The DuckDB tables of alerts and of the rule and zone definitions.

Functions over a connection, called by :class:`~fleetstream.adapters.store.duckdb.DuckDBStore`.
Alerts are upserted by id (a replay after a crash writes them again). An acknowledgement is
made through the API, not the log, so a replayed copy of an alert that says less (``active``,
no acknowledgement) never erases one stored since.
"""

from __future__ import annotations

from typing import Any

import duckdb
import msgspec

from fleetstream.adapters.store.alert_rows import COLUMNS, ON_CONFLICT, alert_from_row, alert_rows
from fleetstream.domain.alerts import Alert
from fleetstream.ports import AlertQuery

DDL = """
CREATE TABLE IF NOT EXISTS alerts (
    id VARCHAR PRIMARY KEY,          -- rule_id:device_id:opened_at (µs)
    device_id VARCHAR NOT NULL,
    rule_id VARCHAR NOT NULL,
    severity VARCHAR NOT NULL,
    state VARCHAR NOT NULL,          -- active | acknowledged | cleared
    opened_at BIGINT NOT NULL,       -- event time, µs since the epoch
    cleared_at BIGINT,
    acknowledged_at BIGINT,
    acknowledged_by VARCHAR,
    ack_note VARCHAR,
    first_value DOUBLE NOT NULL,
    last_value DOUBLE NOT NULL,
    message VARCHAR NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS rules (
    id VARCHAR PRIMARY KEY,
    definition VARCHAR NOT NULL      -- JSON, as the API took it
);
CREATE TABLE IF NOT EXISTS zones (
    id VARCHAR PRIMARY KEY,
    definition VARCHAR NOT NULL      -- JSON, as the API took it
);
"""

KINDS = ("rules", "zones")
_encode = msgspec.json.Encoder().encode


def write_alerts(con: duckdb.DuckDBPyConnection, alerts: list[Alert]) -> None:
    """Upsert alerts (inside the caller's transaction); the last copy of an id wins."""
    con.executemany(
        f"INSERT INTO alerts ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) {ON_CONFLICT}",
        alert_rows(alerts),
    )


def query_alerts(con: duckdb.DuckDBPyConnection, query: AlertQuery) -> tuple[int, list[Alert]]:
    """A page of alerts, newest opened first, and how many match."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("state", query.state), ("device_id", query.device_id), ("rule_id", query.rule_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if query.start is not None:
        where.append("opened_at >= ?")
        params.append(query.start)
    if query.end is not None:
        where.append("opened_at < ?")
        params.append(query.end)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    total = con.execute(f"SELECT count(*) FROM alerts {clause}", params).fetchall()[0][0]
    rows = con.execute(
        f"SELECT {COLUMNS} FROM alerts {clause} ORDER BY opened_at DESC, id LIMIT ? OFFSET ?",
        [*params, query.limit, query.offset],
    ).fetchall()
    return int(total), [alert_from_row(r) for r in rows]


def get_alert(con: duckdb.DuckDBPyConnection, alert_id: str) -> Alert | None:
    """One alert by id."""
    rows = con.execute(f"SELECT {COLUMNS} FROM alerts WHERE id = ?", [alert_id]).fetchall()
    return alert_from_row(rows[0]) if rows else None


def _table(kind: str) -> str:
    if kind not in KINDS:
        msg = f"unknown kind of definition {kind!r} (use {', '.join(KINDS)})"
        raise ValueError(msg)
    return kind


def definitions(con: duckdb.DuckDBPyConnection, kind: str) -> dict[str, dict[str, Any]]:
    """Stored definitions of one kind, by id."""
    rows = con.execute(f"SELECT id, definition FROM {_table(kind)} ORDER BY id").fetchall()
    return {rid: msgspec.json.decode(text) for rid, text in rows}


def put_definition(
    con: duckdb.DuckDBPyConnection, kind: str, def_id: str, definition: dict[str, Any]
) -> None:
    """Create or replace one definition."""
    con.execute(
        f"INSERT OR REPLACE INTO {_table(kind)} VALUES (?, ?)", [def_id, _encode(definition).decode()]
    )


def delete_definition(con: duckdb.DuckDBPyConnection, kind: str, def_id: str) -> bool:
    """Remove one definition; whether it existed."""
    rows = con.execute(f"DELETE FROM {_table(kind)} WHERE id = ? RETURNING id", [def_id])
    return bool(rows.fetchall())
