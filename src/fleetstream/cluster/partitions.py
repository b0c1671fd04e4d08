"""Per-partition state of a worker and where it is kept in PostgreSQL.

A worker keeps one :class:`~fleetstream.engine.processors.StreamProcessors` per assigned
partition of the readings topic. Each batch's new readings, what the processors made of them and
the checkpoint of every partition the batch touched (its state and the offset after the batch)
are written in ONE transaction; only then are the Kafka offsets committed. So:

- the store never holds readings whose processing is not checkpointed, and the reverse;
- a committed Kafka offset is never ahead of a partition's checkpoint;
- a partition's next owner restores its checkpoint and skips records below the checkpoint's
  offset (they come again when a worker died between the transaction and the offset commit):
  every reading is stored, and processed, exactly once.

Log positions are derived from (partition, offset): ``seq = (offset + 1) << 24 | partition << 16 |
i`` for the ``i``-th record of a message, so they grow in each partition's log order (the
processors compare positions only within a device, and a device is in one partition) and a record
has the same position whoever processes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from fleetstream.adapters.bus.codec import Pack, join_packs
from fleetstream.adapters.store import postgres_derived
from fleetstream.adapters.store.postgres import Connection, PostgresStore, write_batch
from fleetstream.domain.batch import Batch
from fleetstream.errors import StoreError
from fleetstream.ports import Derived

MAX_PARTITIONS = 1 << 8
MAX_RECORDS_PER_MESSAGE = 1 << 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS partition_checkpoints (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT  NOT NULL,
    state       BYTEA   NOT NULL,
    written_at  BIGINT  NOT NULL,
    PRIMARY KEY (topic, partition)
);
ALTER TABLE partition_checkpoints ADD COLUMN IF NOT EXISTS stored_until BIGINT;
ALTER TABLE partition_checkpoints ADD COLUMN IF NOT EXISTS partitions INTEGER
"""


class CheckpointMoved(StoreError):
    """A partition's stored checkpoint is no longer the one this worker's state started from:
    another worker took the partition over and stored past it (this one lost the partition, e.g.
    stalled longer than the group's session timeout)."""


@dataclass(frozen=True, slots=True)
class PartitionCheckpoint:
    """A partition's processor state and the offset of the first record it does not reflect.

    ``stored_until`` is the newest event time the partition ever stored, under the topic's
    ``partitions`` count (:mod:`.stored_bound`). ``since``, when writing, is the offset of the
    checkpoint the state started from: the write fails with :class:`CheckpointMoved` if the stored
    one is no longer at it, so two workers never both store a partition's records.
    """

    partition: int
    next_offset: int
    state: bytes
    stored_until: int | None = None
    partitions: int | None = None
    since: int | None = None


def log_position(partition: int, offset: int, index: int) -> int:
    """The log position of record ``index`` of the message at ``offset`` in ``partition``."""
    return ((offset + 1) << 24) | (partition << 16) | index


def partition_batch(partition: int, pieces: Sequence[tuple[int, Pack]]) -> Batch:
    """One partition's (offset, pack) pairs as a batch, each record at its :func:`log_position`."""
    batch = join_packs([piece for _, piece in pieces])
    seq: list[int] = []
    event_seq: list[int] = []
    for offset, piece in pieces:
        rows = len(piece.ts)
        if rows + len(piece.events) > MAX_RECORDS_PER_MESSAGE:
            msg = f"a message of {rows + len(piece.events)} records is over {MAX_RECORDS_PER_MESSAGE}"
            raise ValueError(msg)
        seq += [log_position(partition, offset, i) for i in range(rows)]
        event_seq += [log_position(partition, offset, rows + j) for j in range(len(piece.events))]
    batch.seq = seq
    for event, position in zip(batch.events, event_seq, strict=True):
        event.seq = position
    return batch


class PartitionStore:
    """Partition checkpoints, and the one transaction of a batch, on the PostgreSQL store."""

    def __init__(self, store: PostgresStore, topic: str) -> None:
        self.store = store
        self.topic = topic

    async def start(self) -> None:
        """Create the checkpoint table if missing (the store itself is already open)."""
        async with self.store._writing() as con:  # the store's single writer: one transaction at a time
            # workers starting together would race in CREATE TABLE IF NOT EXISTS (a unique violation
            # in pg_type): one at a time, the lock ends with the transaction
            await con.execute("SELECT pg_advisory_xact_lock(hashtext('partition_checkpoints'))")
            await con.execute(_SCHEMA)

    async def load(self, partition: int) -> PartitionCheckpoint | None:
        """The partition's checkpoint, if it has one."""
        async with self.store._writing() as con:
            cur = await con.execute(
                """SELECT next_offset, state, stored_until, partitions FROM partition_checkpoints
                   WHERE topic = %s AND partition = %s""",
                [self.topic, partition],
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return PartitionCheckpoint(partition, int(row[0]), bytes(row[1]), row[2], row[3])

    async def commit(
        self,
        batches: Sequence[Batch],
        derived: Derived,
        checkpoints: Sequence[PartitionCheckpoint],
        now_us: int,
        then: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        """Store new readings, derived records and partition checkpoints in one durable transaction
        (with what ``then`` writes, e.g. the results of the commands applied)."""
        async with self.store._writing() as con:
            for batch in batches:
                if batch.records:
                    await write_batch(con, batch)
            await postgres_derived.write_derived(con, derived, None)
            for cp in checkpoints:
                cur = await con.execute(
                    """INSERT INTO partition_checkpoints
                           (topic, partition, next_offset, state, written_at, stored_until, partitions)
                       VALUES (%(topic)s, %(partition)s, %(next)s, %(state)s, %(now)s, %(until)s, %(count)s)
                       ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset,
                           state = EXCLUDED.state, written_at = EXCLUDED.written_at,
                           stored_until = EXCLUDED.stored_until, partitions = EXCLUDED.partitions
                       WHERE %(since)s::bigint IS NULL OR partition_checkpoints.next_offset = %(since)s""",
                    {
                        "topic": self.topic,
                        "partition": cp.partition,
                        "next": cp.next_offset,
                        "state": cp.state,
                        "now": now_us,
                        "until": cp.stored_until,
                        "count": cp.partitions,
                        "since": cp.since,
                    },
                )
                if cur.rowcount != 1:  # the transaction rolls back: nothing of the batch is stored
                    msg = f"partition {cp.partition}'s checkpoint moved on from offset {cp.since}: taken over"
                    raise CheckpointMoved(msg)
            if then is not None:
                await then(con)
