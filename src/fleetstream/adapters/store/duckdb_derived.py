"""The DuckDB tables of derived state: windows, late readings, device events, twins, checkpoints.

Functions over a connection, called by :class:`~fleetstream.adapters.store.duckdb.DuckDBStore` on
its writer or reader threads. Every write is idempotent, because a replay after a crash writes
again what the processors emitted after the last checkpoint:

- a window replaces the stored row of its key (sensor, device, size, start): one row per window;
- a late reading (log position, window size) and a device event (device, sequence number) are
  added only when not stored yet;
- a twin replaces its row.

The tables have no index: each check is a join restricted to the time or position range of the
incoming rows, which DuckDB prunes by the row groups' min/max (rows arrive roughly in that order).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from fleetstream.adapters.store.duckdb_alerts import write_alerts
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.domain.windows import LateReadings, WindowAggregate
from fleetstream.ports import Checkpoint, Derived, EventQuery, WindowQuery

DDL = """
CREATE TABLE IF NOT EXISTS windows (
    sensor VARCHAR NOT NULL,
    device_id VARCHAR NOT NULL,      -- '*' for the whole fleet
    size_us BIGINT NOT NULL,
    start TIMESTAMP NOT NULL,        -- UTC; the window is [start, "end")
    "end" TIMESTAMP NOT NULL,
    count BIGINT NOT NULL,
    sum DOUBLE NOT NULL,
    mean DOUBLE,
    min DOUBLE,
    max DOUBLE,
    stddev DOUBLE,
    first DOUBLE,
    last DOUBLE,
    p50 DOUBLE,
    p95 DOUBLE,
    p99 DOUBLE,
    version INTEGER NOT NULL,        -- 1 when first emitted, +1 for each late update
    state VARCHAR NOT NULL           -- JSON: the exact, mergeable aggregate (quantile sketch included)
);
CREATE TABLE IF NOT EXISTS late_readings (
    seq BIGINT NOT NULL,             -- log position of the reading (it is stored in readings too)
    device_id VARCHAR NOT NULL,
    sensor VARCHAR NOT NULL,
    ts TIMESTAMP NOT NULL,
    value DOUBLE NOT NULL,
    received_at TIMESTAMP NOT NULL,
    size_us BIGINT NOT NULL,         -- the window size it came too late for
    window_start TIMESTAMP NOT NULL,
    late_by_us BIGINT NOT NULL       -- how far the watermark was past the window's end
);
CREATE TABLE IF NOT EXISTS device_events (
    device_id VARCHAR NOT NULL,
    seq BIGINT NOT NULL,             -- per device: 1, 2, 3 ... (the twin's version after it)
    ts TIMESTAMP NOT NULL,           -- the event time it refers to
    type VARCHAR NOT NULL,
    payload VARCHAR NOT NULL,        -- JSON
    position BIGINT NOT NULL         -- log position of the record that caused it
);
CREATE TABLE IF NOT EXISTS twins (
    device_id VARCHAR NOT NULL,
    device_type VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    last_seen TIMESTAMP,
    version BIGINT NOT NULL,
    position BIGINT NOT NULL,
    state VARCHAR NOT NULL           -- JSON
);
CREATE TABLE IF NOT EXISTS checkpoints (
    name VARCHAR NOT NULL,
    position BIGINT NOT NULL,
    state BLOB NOT NULL,
    written_at TIMESTAMP NOT NULL
);
"""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

_WINDOWS = pa.schema(
    [
        ("sensor", pa.string()),
        ("device_id", pa.string()),
        ("size_us", pa.int64()),
        ("start", pa.timestamp("us")),
        ("end", pa.timestamp("us")),
        ("count", pa.int64()),
        ("sum", pa.float64()),
        ("mean", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("stddev", pa.float64()),
        ("first", pa.float64()),
        ("last", pa.float64()),
        ("p50", pa.float64()),
        ("p95", pa.float64()),
        ("p99", pa.float64()),
        ("version", pa.int32()),
        ("state", pa.string()),
    ]
)
_LATE = pa.schema(
    [
        ("seq", pa.int64()),
        ("device_id", pa.string()),
        ("sensor", pa.string()),
        ("ts", pa.timestamp("us")),
        ("value", pa.float64()),
        ("received_at", pa.timestamp("us")),
        ("size_us", pa.int64()),
        ("window_start", pa.timestamp("us")),
        ("late_by_us", pa.int64()),
    ]
)
_EVENTS = pa.schema(
    [
        ("device_id", pa.string()),
        ("seq", pa.int64()),
        ("ts", pa.timestamp("us")),
        ("type", pa.string()),
        ("payload", pa.string()),
        ("position", pa.int64()),
    ]
)
_TWINS = pa.schema(
    [
        ("device_id", pa.string()),
        ("device_type", pa.string()),
        ("status", pa.string()),
        ("last_seen", pa.timestamp("us")),
        ("version", pa.int64()),
        ("position", pa.int64()),
        ("state", pa.string()),
    ]
)


def write_derived(con: duckdb.DuckDBPyConnection, derived: Derived, checkpoint: Checkpoint | None) -> None:
    """One transaction: the derived records, then the checkpoint they complete."""
    con.execute("BEGIN TRANSACTION")
    try:
        if derived.windows:
            _write_windows(con, _latest_versions(derived.windows))
        if len(derived.late):
            _write_late(con, derived.late)
        if derived.events:
            _write_events(con, derived.events)
        if derived.twins:
            _write_twins(con, derived.twins)
        if derived.alerts:
            write_alerts(con, derived.alerts)
        if checkpoint is not None:
            con.execute("DELETE FROM checkpoints WHERE name = 'engine'")
            con.execute(
                "INSERT INTO checkpoints VALUES ('engine', ?, ?, make_timestamp(?))",
                [checkpoint.position, checkpoint.state, checkpoint.written_at],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _latest_versions(windows: list[WindowAggregate]) -> list[WindowAggregate]:
    latest: dict[tuple[str, str, int, int], WindowAggregate] = {}
    for w in windows:
        latest[(w.sensor, w.device_id, w.size_us, w.start)] = w
    return list(latest.values())


def _with(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table, *statements: str) -> None:
    con.register(name, table)
    try:
        for sql in statements:
            con.execute(sql)
    finally:
        con.unregister(name)


def _write_windows(con: duckdb.DuckDBPyConnection, windows: list[WindowAggregate]) -> None:
    q = [(w.quantile(0.5), w.quantile(0.95), w.quantile(0.99)) for w in windows]
    table = pa.Table.from_arrays(
        [
            pa.array([w.sensor for w in windows], pa.string()),
            pa.array([w.device_id for w in windows], pa.string()),
            pa.array([w.size_us for w in windows], pa.int64()),
            pa.array([w.start for w in windows], pa.timestamp("us")),
            pa.array([w.end for w in windows], pa.timestamp("us")),
            pa.array([w.count for w in windows], pa.int64()),
            pa.array([w.sum for w in windows], pa.float64()),
            pa.array([w.mean for w in windows], pa.float64()),
            pa.array([w.min for w in windows], pa.float64()),
            pa.array([w.max for w in windows], pa.float64()),
            pa.array([w.stddev for w in windows], pa.float64()),
            pa.array([w.first for w in windows], pa.float64()),
            pa.array([w.last for w in windows], pa.float64()),
            pa.array([p[0] for p in q], pa.float64()),
            pa.array([p[1] for p in q], pa.float64()),
            pa.array([p[2] for p in q], pa.float64()),
            pa.array([w.version for w in windows], pa.int32()),
            pa.array([_encode(w.to_state()).decode() for w in windows], pa.string()),
        ],
        schema=_WINDOWS,
    )
    _with(
        con,
        "incoming_windows",
        table,
        """DELETE FROM windows USING incoming_windows i
           WHERE windows.start BETWEEN (SELECT min(start) FROM incoming_windows)
                                   AND (SELECT max(start) FROM incoming_windows)
             AND windows.start = i.start AND windows.sensor = i.sensor
             AND windows.device_id = i.device_id AND windows.size_us = i.size_us""",
        "INSERT INTO windows SELECT * FROM incoming_windows ORDER BY start",
    )


def _write_late(con: duckdb.DuckDBPyConnection, late: LateReadings) -> None:
    table = pa.Table.from_arrays(
        [
            pa.array(late.seq, pa.int64()),
            pa.array(late.device_id, pa.string()),
            pa.array(late.sensor, pa.string()),
            pa.array(late.ts, pa.timestamp("us")),
            pa.array(late.value, pa.float64()),
            pa.array(late.received_at, pa.timestamp("us")),
            pa.array(late.size_us, pa.int64()),
            pa.array(late.window_start, pa.timestamp("us")),
            pa.array(late.late_by_us, pa.int64()),
        ],
        schema=_LATE,
    )
    _with(
        con,
        "incoming_late",
        table,
        """INSERT INTO late_readings SELECT * FROM incoming_late i WHERE NOT EXISTS (
             SELECT 1 FROM late_readings l
             WHERE l.seq BETWEEN (SELECT min(seq) FROM incoming_late) AND (SELECT max(seq) FROM incoming_late)
               AND l.seq = i.seq AND l.size_us = i.size_us)""",
    )


def _write_events(con: duckdb.DuckDBPyConnection, events: list[DeviceEvent]) -> None:
    table = pa.Table.from_arrays(
        [
            pa.array([e.device_id for e in events], pa.string()),
            pa.array([e.seq for e in events], pa.int64()),
            pa.array([e.ts for e in events], pa.timestamp("us")),
            pa.array([e.type for e in events], pa.string()),
            pa.array([_encode(e.payload).decode() for e in events], pa.string()),
            pa.array([e.position for e in events], pa.int64()),
        ],
        schema=_EVENTS,
    )
    _with(
        con,
        "incoming_events",
        table,
        """INSERT INTO device_events SELECT * FROM incoming_events i WHERE NOT EXISTS (
             SELECT 1 FROM device_events e
             WHERE e.position BETWEEN (SELECT min(position) FROM incoming_events)
                                  AND (SELECT max(position) FROM incoming_events)
               AND e.device_id = i.device_id AND e.seq = i.seq)""",
    )


def _write_twins(con: duckdb.DuckDBPyConnection, twins: list[DeviceTwin]) -> None:
    latest = {t.device_id: t for t in twins}
    chosen = list(latest.values())
    table = pa.Table.from_arrays(
        [
            pa.array([t.device_id for t in chosen], pa.string()),
            pa.array([t.device_type for t in chosen], pa.string()),
            pa.array([t.status for t in chosen], pa.string()),
            pa.array([t.last_seen if t.first_seen is not None else None for t in chosen], pa.timestamp("us")),
            pa.array([t.version for t in chosen], pa.int64()),
            pa.array([t.position for t in chosen], pa.int64()),
            pa.array([_encode(t.to_state()).decode() for t in chosen], pa.string()),
        ],
        schema=_TWINS,
    )
    _with(
        con,
        "incoming_twins",
        table,
        "DELETE FROM twins USING incoming_twins i WHERE twins.device_id = i.device_id",
        "INSERT INTO twins SELECT * FROM incoming_twins",
    )


def checkpoint(con: duckdb.DuckDBPyConnection) -> Checkpoint | None:
    """The engine's checkpoint."""
    rows = con.execute(
        "SELECT position, state, epoch_us(written_at) FROM checkpoints WHERE name = 'engine'"
    ).fetchall()
    if not rows:
        return None
    position, state, at = rows[0]
    return Checkpoint(int(position), bytes(state), int(at))


def load_twins(con: duckdb.DuckDBPyConnection, device_ids: Collection[str]) -> list[DeviceTwin]:
    """Stored twins of these devices."""
    if not device_ids:
        return []
    wanted = pa.table({"device_id": pa.array(list(device_ids), pa.string())})
    con.register("wanted_twins", wanted)
    try:
        rows = con.execute(
            "SELECT t.state FROM twins t JOIN wanted_twins w ON t.device_id = w.device_id"
        ).fetchall()
    finally:
        con.unregister("wanted_twins")
    return [DeviceTwin.from_state(_decode(state)) for (state,) in rows]


def list_twins(
    con: duckdb.DuckDBPyConnection, device_type: str | None, status: str | None, limit: int, offset: int
) -> tuple[int, list[DeviceTwin]]:
    """A page of stored twins, by device id, and how many match."""
    where: list[str] = []
    params: list[Any] = []
    if device_type is not None:
        where.append("lower(device_type) = lower(?)")
        params.append(device_type)
    if status is not None:
        where.append("status = ?")
        params.append(status)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    total = con.execute(f"SELECT count(*) FROM twins {clause}", params).fetchall()[0][0]
    rows = con.execute(
        f"SELECT state FROM twins {clause} ORDER BY device_id LIMIT ? OFFSET ?", [*params, limit, offset]
    ).fetchall()
    return int(total), [DeviceTwin.from_state(_decode(state)) for (state,) in rows]


def query_windows(con: duckdb.DuckDBPyConnection, query: WindowQuery) -> list[WindowAggregate]:
    """Stored windows of one size and device (or the fleet), by start then sensor."""
    where = ["size_us = ?", "device_id = ?", "start >= make_timestamp(?)", "start < make_timestamp(?)"]
    params: list[Any] = [query.size_us, query.device_id, query.start, query.end]
    if query.sensors:
        where.append(f"sensor IN ({', '.join('?' * len(query.sensors))})")
        params.extend(query.sensors)
    rows = con.execute(
        f"SELECT state FROM windows WHERE {' AND '.join(where)} ORDER BY start, sensor LIMIT ?",
        [*params, query.limit],
    ).fetchall()
    return [WindowAggregate.from_state(_decode(state)) for (state,) in rows]


def device_events(con: duckdb.DuckDBPyConnection, query: EventQuery) -> list[DeviceEvent]:
    """One device's events by sequence number."""
    where = ["device_id = ?", "seq > ?"]
    params: list[Any] = [query.device_id, query.after_seq]
    if query.start is not None:
        where.append("ts >= make_timestamp(?)")
        params.append(query.start)
    if query.end is not None:
        where.append("ts < make_timestamp(?)")
        params.append(query.end)
    if query.types:
        where.append(f"type IN ({', '.join('?' * len(query.types))})")
        params.extend(query.types)
    rows = con.execute(
        f"""SELECT device_id, seq, epoch_us(ts), type, payload, position FROM device_events
            WHERE {" AND ".join(where)} ORDER BY seq LIMIT ?""",
        [*params, query.limit],
    ).fetchall()
    return [DeviceEvent(d, int(s), int(t), k, _decode(p), int(pos)) for d, s, t, k, p, pos in rows]


def late_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Late readings per sensor, counted once (for the smallest window size)."""
    rows = con.execute(
        """SELECT sensor, count(*) FROM late_readings
           WHERE size_us = (SELECT min(size_us) FROM late_readings) GROUP BY sensor ORDER BY sensor"""
    ).fetchall()
    return {sensor: int(n) for sensor, n in rows}
