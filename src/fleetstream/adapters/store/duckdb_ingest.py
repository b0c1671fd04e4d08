"""What the ingest path writes to DuckDB and the lookups it makes there: readings and
reading-less messages appended from Arrow columns, dead letters, the keys dedup checks against,
and the log's last position.

Functions over a connection (or a reader's cursor), called by
:class:`~fleetstream.adapters.store.duckdb.DuckDBStore` on its writer or reader threads.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import msgspec
import numpy as np
import pyarrow as pa

from fleetstream.adapters.store.duckdb_schema import (
    _DEAD_LETTERS_SCHEMA,
    _MESSAGES_SCHEMA,
    _READINGS_SCHEMA,
)
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DedupKey
from fleetstream.ports import DeadLetter


def write(con: duckdb.DuckDBPyConnection, readings: pa.Table | None, bare: pa.Table | None) -> None:
    """Append the readings and reading-less messages of :func:`_to_arrow`, in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        if readings is not None:
            con.register("incoming_readings", readings)
            con.execute("INSERT INTO readings SELECT * FROM incoming_readings ORDER BY ts")
            con.unregister("incoming_readings")
        if bare is not None:
            con.register("incoming_messages", bare)
            con.execute("INSERT INTO device_messages SELECT * FROM incoming_messages ORDER BY ts")
            con.unregister("incoming_messages")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def dead_letters_table(letters: Sequence[DeadLetter]) -> pa.Table:
    """The Arrow columns of ``letters``, as :func:`write_dead_letters` appends them."""
    return pa.Table.from_arrays(
        [
            pa.array([d.received_at for d in letters], pa.timestamp("us")),
            pa.array([d.source for d in letters], pa.string()),
            pa.array([d.topic for d in letters], pa.string()),
            pa.array([d.reason for d in letters], pa.string()),
            pa.array([msgspec.json.encode(list(d.errors)).decode() for d in letters], pa.string()),
            pa.array([d.payload for d in letters], pa.binary()),
        ],
        schema=_DEAD_LETTERS_SCHEMA,
    )


def write_dead_letters(con: duckdb.DuckDBPyConnection, table: pa.Table) -> None:
    """Append the dead letters of :func:`dead_letters_table`, in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.register("incoming_dead_letters", table)
        con.execute(
            """INSERT INTO dead_letters (received_at, source, topic, reason, errors, payload)
               SELECT * FROM incoming_dead_letters"""
        )
        con.unregister("incoming_dead_letters")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def dead_letters(cursor: duckdb.DuckDBPyConnection, source: str | None, limit: int) -> list[DeadLetter]:
    """The latest ``limit`` dead letters (of ``source`` if given), newest first."""
    where, params = ("WHERE source = ?", [source]) if source is not None else ("", [])
    rows = cursor.execute(
        f"""SELECT id, epoch_us(received_at), source, topic, reason, errors, payload
                FROM dead_letters {where} ORDER BY id DESC LIMIT ?""",
        [*params, limit],
    ).fetchall()
    return [
        DeadLetter(at, src, topic, reason, bytes(payload), tuple(msgspec.json.decode(errors)), id_)
        for id_, at, src, topic, reason, errors, payload in rows
    ]


def candidates_table(items: Sequence[tuple[DedupKey, int]]) -> pa.Table:
    """The Arrow columns of dedup keys and their event times, as :func:`stored_keys` joins them."""
    return pa.Table.from_arrays(
        [
            pa.array([k[0] for k, _ in items], pa.string()),
            pa.array([k[1] for k, _ in items], pa.string()),
            pa.array([ts for _, ts in items], pa.timestamp("us")),
            pa.array([k[2] if isinstance(k[2], str) else None for k, _ in items], pa.string()),
        ],
        names=["device_id", "part", "ts", "msg_id"],
    )


def stored_keys(con: duckdb.DuckDBPyConnection, candidates: pa.Table) -> set[DedupKey]:
    """The keys of :func:`candidates_table` already stored, as readings or reading-less messages."""
    found: set[DedupKey] = set()
    con.register("candidates", candidates)
    try:
        for table, part in (("readings", "r.sensor"), ("device_messages", "'@' || r.kind")):
            # Keys by event time: the ts range lets DuckDB skip row groups by their min/max.
            by_ts = con.execute(
                f"""SELECT DISTINCT r.device_id, {part}, epoch_us(r.ts)
                    FROM {table} r JOIN candidates c
                      ON r.device_id = c.device_id AND {part} = c.part AND r.ts = c.ts
                    WHERE c.msg_id IS NULL AND r.msg_id IS NULL
                      AND r.ts BETWEEN (SELECT min(ts) FROM candidates)
                                   AND (SELECT max(ts) FROM candidates)"""
            ).fetchall()
            by_id = con.execute(
                f"""SELECT DISTINCT r.device_id, {part}, r.msg_id
                    FROM {table} r JOIN candidates c
                      ON r.device_id = c.device_id AND {part} = c.part AND r.msg_id = c.msg_id
                    WHERE c.msg_id IS NOT NULL"""
            ).fetchall()
            found.update((d, p, k) for d, p, k in by_ts)
            found.update((d, p, k) for d, p, k in by_id)
    finally:
        con.unregister("candidates")
    return found


def recent_keys(con: duckdb.DuckDBPyConnection, since: int) -> list[tuple[DedupKey, int]]:
    """The dedup key and event time of every row with event time ``since`` or later."""
    rows = con.execute(
        """SELECT device_id, sensor, msg_id, epoch_us(ts) FROM readings WHERE ts >= make_timestamp(?)
           UNION ALL
           SELECT device_id, '@' || kind, msg_id, epoch_us(ts) FROM device_messages
           WHERE ts >= make_timestamp(?)""",
        [since, since],
    ).fetchall()
    return [((d, s, m if m is not None else ts), ts) for d, s, m, ts in rows]


def log_position(con: duckdb.DuckDBPyConnection) -> tuple[int, int | None]:
    """The last stored log position (0 if none) and the latest event time (``None`` if none)."""
    row = con.execute(
        """SELECT max(seq), max(t) FROM (
             SELECT max(seq) AS seq, epoch_us(max(ts)) AS t FROM readings
             UNION ALL
             SELECT max(seq), epoch_us(max(ts)) FROM device_messages)"""
    ).fetchall()[0]
    return (int(row[0]) if row[0] is not None else 0, row[1])


def _message_positions(batch: Batch) -> np.ndarray | list[None]:
    """Each row's message's first log position (rows of one message are adjacent and share ``msg``)."""
    if len(batch.seq) != len(batch) or len(batch.msg) != len(batch):
        return [None] * len(batch)
    msg = np.asarray(batch.msg, np.int64)
    starts = np.empty(len(msg), bool)
    starts[:1] = True
    np.not_equal(msg[1:], msg[:-1], out=starts[1:])
    first = np.maximum.accumulate(np.where(starts, np.arange(len(msg)), 0))
    return np.asarray(batch.seq, np.int64)[first]


def _to_arrow(batch: Batch) -> tuple[pa.Table | None, pa.Table | None]:
    # Straight from the batch's columns: one conversion per column, in C.
    table = (
        pa.Table.from_arrays(
            [
                pa.array(batch.seq, pa.int64()),
                pa.array(batch.device_id, pa.string()),
                pa.array(batch.ts, pa.timestamp("us")),
                pa.array(batch.sensor, pa.string()),
                pa.array(batch.value, pa.float64()),
                pa.array(batch.unit, pa.string()),
                pa.array(batch.device_type, pa.string()),
                pa.array(batch.msg_id, pa.string()),
                pa.array(batch.received_at, pa.timestamp("us")),
                pa.array(batch.kind, pa.string()),
                pa.array(_message_positions(batch), pa.int64()),
            ],
            schema=_READINGS_SCHEMA,
        )
        if len(batch)
        else None
    )
    bare = batch.events
    bare_table = (
        pa.Table.from_arrays(
            [
                pa.array([m.seq for m in bare], pa.int64()),
                pa.array([m.device_id for m in bare], pa.string()),
                pa.array([m.ts for m in bare], pa.timestamp("us")),
                pa.array([m.kind for m in bare], pa.string()),
                pa.array([m.device_type for m in bare], pa.string()),
                pa.array([m.msg_id for m in bare], pa.string()),
                pa.array([m.received_at for m in bare], pa.timestamp("us")),
            ],
            schema=_MESSAGES_SCHEMA,
        )
        if bare
        else None
    )
    return table, bare_table
