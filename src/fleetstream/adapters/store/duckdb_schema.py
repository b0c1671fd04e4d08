"""The DuckDB file's core schema: the tables of readings, reading-less messages and dead letters,
their Arrow shapes for appends, and opening (and migrating) a file.

Functions over nothing but a path, called by :class:`~fleetstream.adapters.store.duckdb.DuckDBStore`
on its writer thread; the derived, alert and model tables add their own DDL from their modules.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import duckdb
import pyarrow as pa

from fleetstream.adapters.store import duckdb_alerts as alerts_db
from fleetstream.adapters.store import duckdb_derived as derived
from fleetstream.adapters.store import duckdb_models as models
from fleetstream.errors import ConfigError, StoreError

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


def connect(path: Path | None, memory_limit: str | None) -> duckdb.DuckDBPyConnection:
    """A connection to the file at ``path`` (in memory if ``None``), its tables created or migrated.

    Raises:
        StoreError: the file cannot be opened, or a newer fleetstream wrote it.
    """
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    config: dict[str, str | bool | int | float | list[str]] = {}
    if memory_limit:
        config["memory_limit"] = memory_limit
    try:
        con = duckdb.connect(str(path) if path else ":memory:", config=config)
    except duckdb.Error as exc:
        msg = f"cannot open DuckDB file {path}: {exc}"
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
        msg = f"{path} was written by a newer fleetstream (schema {row[0]} > {SCHEMA_VERSION})"
        raise StoreError(msg)
    con.execute("DELETE FROM meta WHERE key = 'schema_version'")
    con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
    return con
