"""Writing derived state to DuckDB: windows, late readings, device events, twins and the checkpoint.

:func:`write_derived` writes a batch of what the processors emitted, and the
checkpoint it completes, in one transaction; each kind of record goes through
a pyarrow table registered for the statement that merges it, so a replay
writes every record once (the rules are in
:mod:`~fleetstream.adapters.store.duckdb_derived`).
"""

from __future__ import annotations

import duckdb
import msgspec
import pyarrow as pa

from fleetstream.adapters.store.duckdb_alerts import write_alerts
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.domain.windows import LateReadings, WindowAggregate
from fleetstream.ports import Checkpoint, Derived

_encode = msgspec.json.Encoder().encode

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
