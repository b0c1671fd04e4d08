"""Changes that need a device's single writer, carried from an api instance to the owning worker.

An api instance cannot change what a worker holds in memory (a device's open alerts, its twin).
It writes a *command* row to the table ``cluster_commands`` in PostgreSQL, naming the partition
of the readings topic that holds the device (read from the device's stored twin: a log position
encodes its partition, see :func:`partition_of`), and waits for the row's result.

The worker that owns that partition polls the table (every 0.1 s, an index on the pending rows
makes it cheap), applies each command between two batches, and stores the command's result in
the SAME transaction as the partition's checkpoint and the rows the command changed. So a command
is applied exactly once: a worker that dies before that transaction leaves the row pending, and
the partition's next owner applies it to the restored state; one that dies after it has stored
its effect with the checkpoint. Why not a Kafka topic: see docs/deploy.md, "Cluster mode".
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from fleetstream.errors import (
    Conflict,
    FleetstreamError,
    InvalidReading,
    NotFound,
    Overloaded,
    PreconditionFailed,
)

if TYPE_CHECKING:
    from fleetstream.adapters.store.postgres import Connection, PostgresStore

log = logging.getLogger(__name__)

ACK, SHADOW = "ack", "shadow"
POLL_S = 0.05  # how often an api instance looks for its command's result

DDL = """
CREATE TABLE IF NOT EXISTS cluster_commands (
    id         BIGSERIAL PRIMARY KEY,
    partition  INTEGER NOT NULL,        -- of the readings topic: the owning worker applies it
    device_id  TEXT    NOT NULL,
    kind       TEXT    NOT NULL,        -- ack | shadow
    body       TEXT    NOT NULL,        -- JSON
    created_at BIGINT  NOT NULL,
    status     INTEGER,                 -- the HTTP status of the result, once applied
    result     TEXT,                    -- JSON: the answer's body
    done_at    BIGINT
);
CREATE INDEX IF NOT EXISTS cluster_commands_pending ON cluster_commands (partition, id) WHERE done_at IS NULL;
"""

_encode = msgspec.json.Encoder().encode
_ERRORS: dict[int, type[FleetstreamError]] = {
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    422: InvalidReading,
}


def partition_of(position: int) -> int:
    """The readings partition a log position comes from (see :func:`.partitions.log_position`)."""
    return (position >> 16) & 0xFF


@dataclass(frozen=True, slots=True)
class Command:
    """One pending command, as the owning worker reads it."""

    id: int
    partition: int
    device_id: str
    kind: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying a command answered: an HTTP status and a JSON body (or an error message)."""

    status: int
    body: dict[str, Any]


async def create_table(store: PostgresStore) -> None:
    """Create the command table if missing."""
    async with store._writing() as con:  # the store's single writer: one transaction at a time
        # api instances and workers start together: one creates, the others wait and find it
        await con.execute("SELECT pg_advisory_xact_lock(hashtext('fleetstream schema'))")
        await con.execute(DDL)


async def pending(store: PostgresStore, partitions: list[int], limit: int = 200) -> list[Command]:
    """The oldest commands not applied yet for these partitions, in the order they were made."""
    if not partitions:
        return []
    rows = await store.execute(
        """SELECT id, partition, device_id, kind, body FROM cluster_commands
           WHERE done_at IS NULL AND partition = ANY(%s) ORDER BY id LIMIT %s""",
        [partitions, limit],
    )
    return [Command(int(r[0]), int(r[1]), r[2], r[3], msgspec.json.decode(r[4])) for r in rows]


async def record_outcomes(con: Connection, outcomes: dict[int, Outcome], now_us: int) -> None:
    """Store commands' results (inside the worker's checkpoint transaction)."""
    for command_id, outcome in outcomes.items():
        await con.execute(
            """UPDATE cluster_commands SET status = %s, result = %s, done_at = %s
               WHERE id = %s AND done_at IS NULL""",
            [outcome.status, _encode(outcome.body).decode(), now_us, command_id],
        )


async def prune(store: PostgresStore, before_us: int) -> None:
    """Delete the commands done before ``before_us`` (their callers have long had the answer)."""
    async with store._writing() as con:
        await con.execute("DELETE FROM cluster_commands WHERE done_at < %s", [before_us])


async def submit(
    store: PostgresStore,
    partition: int,
    device_id: str,
    kind: str,
    body: dict[str, Any],
    *,
    now_us: int,
    timeout_s: float,
) -> dict[str, Any]:
    """Send a command to the owner of ``partition`` and wait for its result: the answer's body.

    Raises:
        NotFound, Conflict, PreconditionFailed, InvalidReading: What the worker answered (404, 409,
            412, 422).
        Overloaded: No worker applied it within ``timeout_s`` (503 with Retry-After); the command is
            withdrawn, unless a worker applied it at that very moment.
    """
    rows = await _write(
        store,
        """INSERT INTO cluster_commands (partition, device_id, kind, body, created_at)
           VALUES (%s, %s, %s, %s, %s) RETURNING id""",
        [partition, device_id, kind, _encode(body).decode(), now_us],
    )
    command_id = int(rows[0][0])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        found = await store.execute("SELECT status, result FROM cluster_commands WHERE id = %s", [command_id])
        status, result = found[0] if found else (None, None)
        if status is not None:
            break
        if loop.time() >= deadline:
            withdrawn = await _write(
                store,
                """UPDATE cluster_commands SET status = 503, result = '{}', done_at = %s
                   WHERE id = %s AND done_at IS NULL RETURNING id""",
                [now_us, command_id],
            )
            if withdrawn:
                msg = (
                    f"no worker applied the change within {timeout_s:g} s (is a `fleetstream worker` "
                    f"running and consuming partition {partition}?); it was withdrawn: retry"
                )
                raise Overloaded(msg, retry_after=1.0)
            continue  # applied meanwhile: read its result
        await asyncio.sleep(POLL_S)
    answer: dict[str, Any] = msgspec.json.decode(result)
    error = _ERRORS.get(int(status))
    if error is not None:
        raise error(str(answer.get("message", "")), details=answer.get("details"))
    return answer


async def _write(store: PostgresStore, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    async with store._writing() as con:
        cur = await con.execute(sql, params)
        return await cur.fetchall()
