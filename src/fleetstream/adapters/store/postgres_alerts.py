"""The PostgreSQL tables of alerts, of the rule and zone definitions, and of the model registry.

Functions over the writer or a reader connection of
:class:`~fleetstream.adapters.store.postgres.PostgresStore`, answering as the DuckDB ones do
(:mod:`~fleetstream.adapters.store.duckdb_alerts`, :mod:`~fleetstream.adapters.store.duckdb_models`).
Alerts are upserted by id (a replay after a crash writes them again). An acknowledgement is made
through the API, not the log, so a replayed copy of an alert that says less (``active``, no
acknowledgement) never erases one stored since. Ids sort with ``COLLATE "C"``: the byte order
DuckDB and Python use, whatever the database's locale. PostgreSQL text cannot hold a NUL character
(the API refuses one in definitions and acknowledgements), so a lookup by such a text finds nothing
without asking the server, which would refuse the parameter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from fleetstream.adapters.store.alert_rows import COLUMNS, ON_CONFLICT, alert_from_row, alert_rows
from fleetstream.domain.alerts import Alert
from fleetstream.domain.federated import ModelRound
from fleetstream.ports import AlertQuery

if TYPE_CHECKING:
    from fleetstream.adapters.store.postgres import Connection

DDL = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,             -- rule_id:device_id:opened_at (µs)
    device_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,             -- active | acknowledged | cleared
    opened_at BIGINT NOT NULL,       -- event time, µs since the epoch
    cleared_at BIGINT,
    acknowledged_at BIGINT,
    acknowledged_by TEXT,
    ack_note TEXT,
    first_value DOUBLE PRECISION NOT NULL,
    last_value DOUBLE PRECISION NOT NULL,
    message TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- The alert list pages newest opened first.
CREATE INDEX IF NOT EXISTS alerts_opened_at ON alerts (opened_at DESC);
CREATE TABLE IF NOT EXISTS rules (
    id TEXT PRIMARY KEY,
    definition TEXT NOT NULL         -- JSON, as the API took it (jsonb would reorder its keys)
);
CREATE TABLE IF NOT EXISTS zones (
    id TEXT PRIMARY KEY,
    definition TEXT NOT NULL         -- JSON, as the API took it
);
CREATE TABLE IF NOT EXISTS model_rounds (
    round INTEGER PRIMARY KEY,       -- 1, 2, ... across training runs (a run continues the numbering)
    version TEXT NOT NULL,
    created_at BIGINT NOT NULL,      -- µs since the epoch (UTC), as every time in this store
    n_sites INTEGER NOT NULL,
    n_samples BIGINT NOT NULL,
    params TEXT NOT NULL,            -- JSON: the averaged model (standardisation included)
    metrics TEXT NOT NULL            -- JSON: e.g. {"log_loss": 0.15, "auc": 0.94}
);
"""

KINDS = ("rules", "zones")
_encode = msgspec.json.Encoder().encode


async def write_alerts(con: Connection, alerts: list[Alert]) -> None:
    """Upsert alerts (inside the caller's transaction); the last copy of an id wins."""
    # Alerts are few per commit (one per rule and device that changed): executemany pipelines them.
    async with con.cursor() as cur:
        await cur.executemany(
            f"INSERT INTO alerts ({COLUMNS}) VALUES ({', '.join(['%s'] * 14)}) {ON_CONFLICT}",
            alert_rows(alerts),
        )


async def query_alerts(con: Connection, query: AlertQuery) -> tuple[int, list[Alert]]:
    """A page of alerts, newest opened first, and how many match."""
    where: list[str] = []
    params: list[Any] = []
    if any(v is not None and "\0" in v for v in (query.state, query.device_id, query.rule_id)):
        return 0, []
    for column, value in (("state", query.state), ("device_id", query.device_id), ("rule_id", query.rule_id)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if query.start is not None:
        where.append("opened_at >= %s")
        params.append(query.start)
    if query.end is not None:
        where.append("opened_at < %s")
        params.append(query.end)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    cur = await con.execute(f"SELECT count(*) FROM alerts {clause}", params)
    total = await cur.fetchone()
    assert total is not None
    cur = await con.execute(
        f'SELECT {COLUMNS} FROM alerts {clause} ORDER BY opened_at DESC, id COLLATE "C" LIMIT %s OFFSET %s',
        [*params, query.limit, query.offset],
    )
    return int(total[0]), [alert_from_row(r) for r in await cur.fetchall()]


async def get_alert(con: Connection, alert_id: str) -> Alert | None:
    """One alert by id."""
    if "\0" in alert_id:
        return None
    cur = await con.execute(f"SELECT {COLUMNS} FROM alerts WHERE id = %s", [alert_id])
    row = await cur.fetchone()
    return None if row is None else alert_from_row(row)


def _table(kind: str) -> str:
    if kind not in KINDS:
        msg = f"unknown kind of definition {kind!r} (use {', '.join(KINDS)})"
        raise ValueError(msg)
    return kind


async def definitions(con: Connection, kind: str) -> dict[str, dict[str, Any]]:
    """Stored definitions of one kind, by id."""
    cur = await con.execute(f'SELECT id, definition FROM {_table(kind)} ORDER BY id COLLATE "C"')
    return {rid: msgspec.json.decode(text) for rid, text in await cur.fetchall()}


async def put_definition(con: Connection, kind: str, def_id: str, definition: dict[str, Any]) -> None:
    """Create or replace one definition."""
    await con.execute(
        f"""INSERT INTO {_table(kind)} VALUES (%s, %s)
            ON CONFLICT (id) DO UPDATE SET definition = excluded.definition""",
        [def_id, _encode(definition).decode()],
    )


async def delete_definition(con: Connection, kind: str, def_id: str) -> bool:
    """Remove one definition; whether it existed."""
    table = _table(kind)
    if "\0" in def_id:
        return False
    cur = await con.execute(f"DELETE FROM {table} WHERE id = %s RETURNING id", [def_id])
    return bool(await cur.fetchall())


async def save_model_round(con: Connection, r: ModelRound) -> None:
    """Store one training round (replacing a stored round of the same number)."""
    await con.execute(
        """INSERT INTO model_rounds VALUES (%s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (round) DO UPDATE SET
             version = excluded.version, created_at = excluded.created_at, n_sites = excluded.n_sites,
             n_samples = excluded.n_samples, params = excluded.params, metrics = excluded.metrics""",
        [
            r.round,
            r.version,
            r.created_at,
            r.n_sites,
            r.n_samples,
            _encode(r.params).decode(),
            _encode(r.metrics).decode(),
        ],
    )


async def list_model_rounds(con: Connection) -> list[ModelRound]:
    """Every stored round, oldest first."""
    cur = await con.execute(
        """SELECT round, version, created_at, n_sites, n_samples, params, metrics
           FROM model_rounds ORDER BY round"""
    )
    return [
        ModelRound(int(n), str(v), msgspec.json.decode(p), int(s), int(k), msgspec.json.decode(m), int(c))
        for n, v, c, s, k, p, m in await cur.fetchall()
    ]
