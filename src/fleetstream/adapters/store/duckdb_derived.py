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

The writes live in :mod:`~fleetstream.adapters.store.duckdb_derived_writes`, the queries in
:mod:`~fleetstream.adapters.store.duckdb_derived_reads`; this module holds the tables' DDL and
re-exports both, which the store calls through it.
"""

from __future__ import annotations

# Re-exported: the store and its schema reach the reads and writes through this module.
from fleetstream.adapters.store.duckdb_derived_reads import checkpoint as checkpoint
from fleetstream.adapters.store.duckdb_derived_reads import device_events as device_events
from fleetstream.adapters.store.duckdb_derived_reads import late_counts as late_counts
from fleetstream.adapters.store.duckdb_derived_reads import list_twins as list_twins
from fleetstream.adapters.store.duckdb_derived_reads import load_twins as load_twins
from fleetstream.adapters.store.duckdb_derived_reads import query_windows as query_windows
from fleetstream.adapters.store.duckdb_derived_writes import write_derived as write_derived

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
