"""``duckdb:///path/to/file.duckdb``: the embedded store.

Readings are appended from Arrow columns in one transaction per group commit
(never row by row), sorted by event time within each append so range scans skip
row groups by their min/max. DuckDB is synchronous: writes run on one dedicated
thread with their own connection, queries on a small pool with a cursor each,
so neither blocks the event loop (DuckDB releases the GIL while it works).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import duckdb
import msgspec
import numpy as np
import pyarrow as pa

from fleetstream.adapters.store import duckdb_alerts as alerts_db
from fleetstream.adapters.store import duckdb_derived as derived
from fleetstream.adapters.store import duckdb_models as models
from fleetstream.adapters.store.duckdb_derived import write_derived
from fleetstream.domain.alerts import Alert
from fleetstream.domain.batch import Batch, message_numbers
from fleetstream.domain.buckets import Buckets
from fleetstream.domain.federated import ModelRound
from fleetstream.domain.records import DedupKey, DeviceMessage
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.domain.windows import WindowAggregate
from fleetstream.errors import ConfigError, StoreError
from fleetstream.ports import (
    AlertQuery,
    Checkpoint,
    DeadLetter,
    Derived,
    EventQuery,
    MetricsQuery,
    SeriesQuery,
    WindowQuery,
)

T = TypeVar("T")

SCHEMA_VERSION = 2
_DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS readings (
    seq BIGINT NOT NULL,            -- position of the message in the durable log
    device_id VARCHAR NOT NULL,
    ts TIMESTAMP NOT NULL,          -- event time, UTC
    sensor VARCHAR NOT NULL,
    value DOUBLE NOT NULL,
    unit VARCHAR,
    device_type VARCHAR NOT NULL,
    msg_id VARCHAR,
    received_at TIMESTAMP NOT NULL, -- UTC
    kind VARCHAR NOT NULL DEFAULT 'telemetry', -- the message's kind (heartbeat, ...); schema 2
    msg_seq BIGINT                  -- log position of the message's first row; schema 2
);
-- Messages that carry no reading (e.g. startup): kept so every acknowledged message is durable.
CREATE TABLE IF NOT EXISTS device_messages (
    seq BIGINT NOT NULL,
    device_id VARCHAR NOT NULL,
    ts TIMESTAMP NOT NULL,
    kind VARCHAR NOT NULL,
    device_type VARCHAR NOT NULL,
    msg_id VARCHAR,
    received_at TIMESTAMP NOT NULL
);
-- Payloads (or their items) that could not be ingested, with why: bad input never stops a source.
CREATE SEQUENCE IF NOT EXISTS dead_letter_ids;
CREATE TABLE IF NOT EXISTS dead_letters (
    id BIGINT NOT NULL DEFAULT nextval('dead_letter_ids'),
    received_at TIMESTAMP NOT NULL, -- UTC
    source VARCHAR NOT NULL,        -- e.g. mqtt
    topic VARCHAR,                  -- where it came from (MQTT topic)
    reason VARCHAR NOT NULL,
    errors VARCHAR NOT NULL,        -- JSON list of {"index", "error"} for rejected items
    payload BLOB NOT NULL           -- the raw bytes received
);
"""

_READINGS_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("device_id", pa.string()),
        ("ts", pa.timestamp("us")),
        ("sensor", pa.string()),
        ("value", pa.float64()),
        ("unit", pa.string()),
        ("device_type", pa.string()),
        ("msg_id", pa.string()),
        ("received_at", pa.timestamp("us")),
        ("kind", pa.string()),
        ("msg_seq", pa.int64()),
    ]
)
_DEAD_LETTERS_SCHEMA = pa.schema(
    [
        ("received_at", pa.timestamp("us")),
        ("source", pa.string()),
        ("topic", pa.string()),
        ("reason", pa.string()),
        ("errors", pa.string()),
        ("payload", pa.binary()),
    ]
)
_MESSAGES_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("device_id", pa.string()),
        ("ts", pa.timestamp("us")),
        ("kind", pa.string()),
        ("device_type", pa.string()),
        ("msg_id", pa.string()),
        ("received_at", pa.timestamp("us")),
    ]
)

AGGREGATES: dict[str, str] = {
    "count": "count(value)",
    "min": "min(value)",
    "max": "max(value)",
    "avg": "avg(value)",
    "mean": "avg(value)",
    "sum": "sum(value)",
    "stddev": "stddev_samp(value)",
    "p50": "quantile_cont(value, 0.5)",
    "p95": "quantile_cont(value, 0.95)",
    "p99": "quantile_cont(value, 0.99)",
}


def path_of(url: str) -> Path | None:
    """The file of a ``duckdb:///path`` URL; ``None`` for ``duckdb:///:memory:``."""
    parts = urlsplit(url)
    if parts.scheme != "duckdb":
        msg = f"not a duckdb URL: {url!r}"
        raise ConfigError(msg)
    raw = unquote(parts.netloc + parts.path)
    if raw in ("", "/", "/:memory:", ":memory:"):
        return None
    # duckdb:///data/x.duckdb is relative (three slashes, like sqlite), duckdb:////abs/x.duckdb absolute.
    return Path(raw[1:] if raw.startswith("/") else raw)


class DuckDBStore:
    """The :class:`~fleetstream.ports.Store` on a DuckDB file."""

    def __init__(self, url: str, *, memory_limit: str | None = None) -> None:
        self.url = url
        self.path = path_of(url)
        self._memory_limit = memory_limit
        self._con: duckdb.DuckDBPyConnection | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="duckdb-write")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="duckdb-read")
        self._local = threading.local()

    async def start(self) -> None:
        await self._on_writer(self._open)

    def _open(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, str | bool | int | float | list[str]] = {}
        if self._memory_limit:
            config["memory_limit"] = self._memory_limit
        try:
            con = duckdb.connect(str(self.path) if self.path else ":memory:", config=config)
        except duckdb.Error as exc:
            msg = f"cannot open DuckDB file {self.path}: {exc}"
            raise StoreError(msg) from exc
        con.execute(_DDL)
        # Schema 1 files: readings gain the message kind (replays rebuild heartbeats from it).
        con.execute("ALTER TABLE readings ADD COLUMN IF NOT EXISTS kind VARCHAR DEFAULT 'telemetry'")
        con.execute("ALTER TABLE readings ADD COLUMN IF NOT EXISTS msg_seq BIGINT")
        con.execute(derived.DDL)
        con.execute(models.DDL)
        con.execute(alerts_db.DDL)
        # A larger WAL than the default 16 MB: fewer checkpoints stalling a commit under load, at the
        # cost of a longer WAL replay after a crash (seconds).
        con.execute("SET checkpoint_threshold = '128MB'")
        rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
        row = rows[0] if rows else None
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            con.close()
            msg = f"{self.path} was written by a newer fleetstream (schema {row[0]} > {SCHEMA_VERSION})"
            raise StoreError(msg)
        con.execute("DELETE FROM meta WHERE key = 'schema_version'")
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        self._con = con

    async def close(self) -> None:
        if self._con is not None:
            await self._on_writer(self._close)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)

    def _close(self) -> None:
        assert self._con is not None
        self._con.execute("CHECKPOINT")
        self._con.close()
        self._con = None

    # -- writing ---------------------------------------------------------------

    async def write(self, batch: Batch) -> None:
        readings, bare = _to_arrow(batch)
        await self._on_writer(self._write, readings, bare)

    def _write(self, readings: pa.Table | None, bare: pa.Table | None) -> None:
        con = self._connection()
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

    # -- dead letters ------------------------------------------------------------

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        table = pa.Table.from_arrays(
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
        await self._on_writer(self._write_dead_letters, table)

    def _write_dead_letters(self, table: pa.Table) -> None:
        con = self._connection()
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

    async def dead_letters(self, source: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self._on_reader(self._dead_letters, source, limit)

    def _dead_letters(self, source: str | None, limit: int) -> list[DeadLetter]:
        where, params = ("WHERE source = ?", [source]) if source is not None else ("", [])
        rows = (
            self._cursor()
            .execute(
                f"""SELECT id, epoch_us(received_at), source, topic, reason, errors, payload
                    FROM dead_letters {where} ORDER BY id DESC LIMIT ?""",
                [*params, limit],
            )
            .fetchall()
        )
        return [
            DeadLetter(at, src, topic, reason, bytes(payload), tuple(msgspec.json.decode(errors)), id_)
            for id_, at, src, topic, reason, errors, payload in rows
        ]

    # -- dedup support -----------------------------------------------------------

    async def stored_keys(self, items: Sequence[tuple[DedupKey, int]]) -> set[DedupKey]:
        if not items:
            return set()
        candidates = pa.Table.from_arrays(
            [
                pa.array([k[0] for k, _ in items], pa.string()),
                pa.array([k[1] for k, _ in items], pa.string()),
                pa.array([ts for _, ts in items], pa.timestamp("us")),
                pa.array([k[2] if isinstance(k[2], str) else None for k, _ in items], pa.string()),
            ],
            names=["device_id", "part", "ts", "msg_id"],
        )
        return await self._on_writer(self._stored_keys, candidates)

    def _stored_keys(self, candidates: pa.Table) -> set[DedupKey]:
        con = self._connection()
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

    async def recent_keys(self, since: int) -> list[tuple[DedupKey, int]]:
        return await self._on_writer(self._recent_keys, since)

    def _recent_keys(self, since: int) -> list[tuple[DedupKey, int]]:
        con = self._connection()
        rows = con.execute(
            """SELECT device_id, sensor, msg_id, epoch_us(ts) FROM readings WHERE ts >= make_timestamp(?)
               UNION ALL
               SELECT device_id, '@' || kind, msg_id, epoch_us(ts) FROM device_messages
               WHERE ts >= make_timestamp(?)""",
            [since, since],
        ).fetchall()
        return [((d, s, m if m is not None else ts), ts) for d, s, m, ts in rows]

    async def log_position(self) -> tuple[int, int | None]:
        return await self._on_writer(self._log_position)

    def _log_position(self) -> tuple[int, int | None]:
        row = (
            self._connection()
            .execute(
                """SELECT max(seq), max(t) FROM (
                 SELECT max(seq) AS seq, epoch_us(max(ts)) AS t FROM readings
                 UNION ALL
                 SELECT max(seq), epoch_us(max(ts)) FROM device_messages)"""
            )
            .fetchall()[0]
        )
        return (int(row[0]) if row[0] is not None else 0, row[1])

    # -- queries -----------------------------------------------------------------

    async def query_metrics(self, query: MetricsQuery) -> dict[str, dict[str, Any]]:
        return await self._on_reader(self._query_metrics, query)

    def _query_metrics(self, query: MetricsQuery) -> dict[str, dict[str, Any]]:
        names = list(dict.fromkeys(query.aggs))
        select = ", ".join(AGGREGATES[name] for name in names)
        where, params = _filters(
            query.start, query.end, query.sensors, query.device_ids, end_inclusive=query.end_inclusive
        )
        sql = f"SELECT sensor, {select} FROM readings WHERE {where} GROUP BY sensor"
        rows = self._cursor().execute(sql, params).fetchall()
        result: dict[str, dict[str, Any]] = {s: _empty(names) for s in query.sensors}
        for sensor, *values in rows:
            result[sensor] = dict(zip(names, values, strict=True))
        return dict(sorted(result.items()))

    async def query_series(self, query: SeriesQuery) -> dict[str, list[dict[str, Any]]]:
        return await self._on_reader(self._query_series, query)

    def _query_series(self, query: SeriesQuery) -> dict[str, list[dict[str, Any]]]:
        names = list(dict.fromkeys(query.aggs))
        select = ", ".join(AGGREGATES[name] for name in names)
        where, params = _filters(query.start, query.end, query.sensors, query.device_ids)
        rows_sql = f"SELECT sensor, ts, value FROM readings WHERE {where}"
        buckets = Buckets(query.bucket, query.tz)
        if buckets.by_day:
            # Day starts come from the domain's time zone data, not DuckDB's own (ICU's differs from
            # the system's, e.g. where clocks go back at midnight): every store agrees. At most one
            # edge per bucket of the range, so the as-of join stays small.
            edges = buckets.starts(query.start, query.end)
            sql = f"""WITH edges AS (SELECT make_timestamp(unnest(?::BIGINT[])) AS start)
                      SELECT r.sensor, epoch_us(e.start) AS t, {select}
                      FROM ({rows_sql}) r ASOF JOIN edges e ON r.ts >= e.start
                      GROUP BY r.sensor, t ORDER BY r.sensor, t"""
            params = [edges, *params]
        else:
            width = int(buckets.width)  # inlined in the SQL: an int, nothing else
            # Floor to the epoch-aligned bucket in integers (% keeps the dividend's sign in SQL).
            sql = f"""SELECT sensor, epoch_us(ts) - ((epoch_us(ts) % {width}) + {width}) % {width} AS t,
                             {select}
                      FROM ({rows_sql}) GROUP BY sensor, t ORDER BY sensor, t"""
        result: dict[str, list[dict[str, Any]]] = {s: [] for s in query.sensors}
        for sensor, t, *values in self._cursor().execute(sql, params).fetchall():
            result.setdefault(sensor, []).append({"t": t, **dict(zip(names, values, strict=True))})
        return dict(sorted(result.items()))

    async def sensors(self) -> set[str]:
        return await self._on_reader(self._sensors)

    def _sensors(self) -> set[str]:
        return {row[0] for row in self._cursor().execute("SELECT DISTINCT sensor FROM readings").fetchall()}

    # -- derived state -------------------------------------------------------------

    async def write_derived(self, derived: Derived, checkpoint: Checkpoint | None = None) -> None:
        # The parameter keeps the port's name (callers may pass it by keyword), shadowing the module.
        await self._on_writer(lambda: write_derived(self._connection(), derived, checkpoint))

    async def checkpoint(self) -> Checkpoint | None:
        return await self._on_writer(lambda: derived.checkpoint(self._connection()))

    async def load_twins(self, device_ids: Collection[str]) -> list[DeviceTwin]:
        return await self._on_writer(lambda: derived.load_twins(self._connection(), device_ids))

    async def list_twins(
        self, device_type: str | None, status: str | None, limit: int, offset: int
    ) -> tuple[int, list[DeviceTwin]]:
        return await self._on_reader(
            lambda: derived.list_twins(self._cursor(), device_type, status, limit, offset)
        )

    async def query_windows(self, query: WindowQuery) -> list[WindowAggregate]:
        return await self._on_reader(lambda: derived.query_windows(self._cursor(), query))

    async def device_events(self, query: EventQuery) -> list[DeviceEvent]:
        return await self._on_reader(lambda: derived.device_events(self._cursor(), query))

    async def late_counts(self) -> dict[str, int]:
        return await self._on_reader(lambda: derived.late_counts(self._cursor()))

    async def query_alerts(self, query: AlertQuery) -> tuple[int, list[Alert]]:
        return await self._on_reader(lambda: alerts_db.query_alerts(self._cursor(), query))

    async def get_alert(self, alert_id: str) -> Alert | None:
        return await self._on_reader(lambda: alerts_db.get_alert(self._cursor(), alert_id))

    async def definitions(self, kind: str) -> dict[str, dict[str, Any]]:
        return await self._on_writer(lambda: alerts_db.definitions(self._connection(), kind))

    async def put_definition(self, kind: str, def_id: str, definition: dict[str, Any]) -> None:
        await self._on_writer(lambda: alerts_db.put_definition(self._connection(), kind, def_id, definition))

    async def delete_definition(self, kind: str, def_id: str) -> bool:
        return await self._on_writer(lambda: alerts_db.delete_definition(self._connection(), kind, def_id))

    async def device_rows(self, device_id: str, until: int) -> Batch:
        return await self._on_reader(self._device_rows, device_id, until)

    def _device_rows(self, device_id: str, until: int) -> Batch:
        cursor = self._cursor()
        rows = cursor.execute(
            """SELECT seq, device_id, epoch_us(ts), sensor, value, unit, device_type, msg_id,
                      epoch_us(received_at), kind, msg_seq
               FROM readings WHERE device_id = ? AND ts <= make_timestamp(?) ORDER BY seq""",
            [device_id, until],
        ).fetchall()
        bare = cursor.execute(
            """SELECT seq, device_id, epoch_us(ts), kind, device_type, msg_id, epoch_us(received_at)
               FROM device_messages WHERE device_id = ? AND ts <= make_timestamp(?) ORDER BY seq""",
            [device_id, until],
        ).fetchall()
        return _replayed(rows, bare)

    async def replay(self, after: int, max_records: int) -> Batch:
        return await self._on_writer(self._replay, after, max_records)

    def _replay(self, after: int, max_records: int) -> Batch:
        con = self._connection()
        spare = 1_000  # rows read past max_records so the last message is not cut in two
        # Log positions are dense (a failed write leaves a gap), so the next rows lie just after
        # ``after``: bounding the range lets DuckDB skip the row groups beyond it instead of
        # sorting the rest of the log for every batch. Unless the range holds all the rows asked
        # for (so they are exactly what the unbounded query returns), read without the bound.
        cols = self._replay_rows(after, after + 2 * max_records + spare, max_records + spare)
        if len(cols[0]) < max_records + spare:
            cols = self._replay_rows(after, None, max_records + spare)
        seq = np.asarray(cols[0], np.int64)
        starts = _message_starts(cols)
        if len(seq) > max_records:
            later = np.flatnonzero(starts[max_records:])
            cut = max_records + int(later[0]) if len(later) else len(seq)
            cols, seq, starts = [c[:cut] for c in cols], seq[:cut], starts[:cut]
            upper_sql, params = "seq > ? AND seq <= ?", [after, int(seq[-1])]
        else:  # the end of the readings: every reading-less message after them too
            upper_sql, params = "seq > ?", [after]
        bare = con.execute(
            f"""SELECT seq, device_id, epoch_us(ts), kind, device_type, msg_id, epoch_us(received_at)
                FROM device_messages WHERE {upper_sql} ORDER BY seq LIMIT ?""",
            [*params, max_records],
        ).fetchall()
        if len(seq) and bare:
            # Keep log order within the batch as the engine sees it live: rows, then reading-less
            # messages after all of them. Stop at the first row that follows a reading-less message.
            first_bare = bare[0][0]
            head = int(np.searchsorted(seq, first_bare, "left"))
            following = int(np.searchsorted(seq, first_bare, "right"))
            if following < len(seq):
                bare = [b for b in bare if b[0] < seq[following]]
            cols, starts = [c[:head] for c in cols], starts[:head]
        return _batch_of(cols, starts, bare)

    def _replay_rows(self, after: int, upto: int | None, limit: int) -> list[list[Any]]:
        """Columns of the first ``limit`` readings after ``after`` (up to ``upto``), in log order."""
        # Through Arrow, not a Python tuple per row: a replay reads the whole log.
        table = (
            self._connection()
            .sql(
                f"""SELECT seq, device_id, epoch_us(ts), sensor, value, unit, device_type, msg_id,
                           epoch_us(received_at), kind, msg_seq
                    FROM readings WHERE seq > ? {"AND seq <= ?" if upto is not None else ""}
                    ORDER BY seq LIMIT ?""",
                params=[after, *([upto] if upto is not None else []), limit],
            )
            .to_arrow_table()
        )
        return [column.to_pylist() for column in table.columns]

    async def save_model_round(self, model_round: ModelRound) -> None:
        await self._on_writer(lambda: models.save_model_round(self._connection(), model_round))

    async def list_model_rounds(self) -> list[ModelRound]:
        return await self._on_reader(lambda: models.list_model_rounds(self._cursor()))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query (for tests, benchmarks and the shell)."""
        return await self._on_reader(lambda: self._cursor().execute(sql, list(params)).fetchall())

    # -- plumbing ----------------------------------------------------------------

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            msg = "the DuckDB store is not open"
            raise StoreError(msg)
        return self._con

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._connection().cursor()
            self._local.cursor = cursor
        return cursor

    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        return await _run(self._writer, fn, *args)

    async def _on_reader(self, fn: Callable[..., T], *args: Any) -> T:
        return await _run(self._readers, fn, *args)


async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    except duckdb.Error as exc:
        msg = f"DuckDB: {exc}"
        raise StoreError(msg) from exc


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


def _message_of(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # A message's rows share its first row's position (older files: device, times and kind).
    return (row[10],) if row[10] is not None else (row[1], row[2], row[8], row[9])


def _replayed(rows: list[tuple[Any, ...]], bare: list[tuple[Any, ...]]) -> Batch:
    """The batch of stored rows (``seq, device_id, ts, sensor, value, unit, device_type, msg_id,
    received_at, kind, msg_seq``) and reading-less messages, in that order."""
    cols = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(11)]
    return _batch_of(cols, _message_starts(cols), bare)


def _message_starts(cols: Sequence[list[Any]]) -> np.ndarray:
    """Whether each stored row starts a message (see :func:`_message_of`), from the row columns."""
    n = len(cols[0])
    starts = np.ones(n, bool)
    msg_seq = cols[10]
    if n > 1 and None not in msg_seq:
        first = np.asarray(msg_seq, np.int64)
        np.not_equal(first[1:], first[:-1], out=starts[1:])
    elif n > 1:  # older files: rows without their message's position
        idents = [_message_of(row) for row in zip(*cols, strict=True)]
        starts[1:] = [a != b for a, b in zip(idents[1:], idents[:-1], strict=True)]
    return starts


def _batch_of(cols: Sequence[list[Any]], starts: np.ndarray, bare: list[tuple[Any, ...]]) -> Batch:
    """The batch of row columns (rows of a message adjacent, ``starts`` marking each message's
    first) and reading-less messages after them, each message with a fresh number."""
    messages = int(starts.sum())
    numbers = message_numbers(messages + len(bare))
    seq, device, ts, sensor, value, unit, device_type, msg_id, received_at, kind, _ = cols
    out = Batch(
        device_id=device,
        ts=ts,
        sensor=sensor,
        value=value,
        unit=unit,
        device_type=device_type,
        msg_id=msg_id,
        kind=kind,
        msg=(np.cumsum(starts) + (numbers.start - 1)).tolist(),
        received_at=received_at,
        seq=seq,
        messages_count=messages + len(bare),
    )
    for (seq_, device_, ts_, kind_, type_, msg_id_, received_), number in zip(
        bare, numbers[messages:], strict=True
    ):
        out.events.append(DeviceMessage(device_, ts_, kind_, type_, [], msg_id_, received_, seq_))
        out.event_msg.append(number)
    return out


def _filters(
    start: int, end: int, sensors: Sequence[str], device_ids: Sequence[str], *, end_inclusive: bool = False
) -> tuple[str, list[Any]]:
    # The time range first: rows are stored in time order, so it skips row groups by their min/max.
    where = [
        "ts >= make_timestamp(?)",
        "ts <= make_timestamp(?)" if end_inclusive else "ts < make_timestamp(?)",
    ]
    params: list[Any] = [start, end]
    if sensors:
        where.append(f"sensor IN ({', '.join('?' * len(sensors))})")
        params.extend(sensors)
    if device_ids:
        where.append(f"device_id IN ({', '.join('?' * len(device_ids))})")
        params.extend(device_ids)
    return " AND ".join(where), params


def _empty(names: list[str]) -> dict[str, Any]:
    return {name: (0 if name == "count" else None) for name in names}


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
