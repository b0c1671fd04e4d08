"""One Kafka consumer's state and fetching: consuming and decoding on a worker thread, buffering.

:class:`SubscriptionFetch` holds the state of a :class:`~.kafka_subscription.Subscription`
and the steps that feed it records: the blocking fetch run in a worker thread (waiting for
the first message only, then taking what librdkafka holds), decoding each message into a
:class:`_Record`, buffering the records of partitions still ours and taking a batch's worth
of them. Opening the consumer, handing out batches, commits and rebalances are in
:mod:`.kafka_subscription`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from fleetstream.adapters.bus.codec import Pack, UndecodableMessage, read_pack
from fleetstream.ports import PartitionsHook

if TYPE_CHECKING:
    from fleetstream.adapters.bus.kafka import KafkaBus
    from fleetstream.adapters.bus.kafka_subscription import KafkaBatch

# The subscription's logger, as before fetching had a module of its own.
log = logging.getLogger("fleetstream.adapters.bus.kafka_subscription")

_FETCH_TIMEOUT_S = 0.2  # how often the consume thread looks whether the bus closed


@dataclass(frozen=True, slots=True)
class _Record:
    partition: int
    offset: int
    piece: Pack | None  # None: not a pack (skipped, but committed past)
    records: int


class SubscriptionFetch:
    """The state of a :class:`~.kafka_subscription.Subscription` and the steps that fetch its records."""

    def __init__(
        self,
        bus: KafkaBus,
        topic: str,
        config: dict[str, Any],
        max_records: int,
        on_assign: PartitionsHook | None,
        on_revoke: PartitionsHook | None,
    ) -> None:
        self.bus = bus
        self.topic = topic
        self.config = config
        self.max_records = max(1, max_records)
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.assigned: set[int] = set()
        self.committed: dict[int, int] = {}
        self.floor: dict[int, int] = {}  # partition -> offset of a failed record not yet committed
        # partition -> revocations so far: a batch taken before one may have been skipped by its
        # consumer (the partition was not its own then), so its offsets must not be committed
        # after the partition comes back (the group would start past records never processed)
        self.generation: dict[int, int] = {}
        self.commit_failures = 0
        self.unsettled: set[KafkaBatch] = set()  # handed out, neither committed nor failed yet
        self._buffer: deque[_Record] = deque()
        self._rewound: dict[int, int] = {}  # partition -> offset it was rewound to, not fetched yet
        self._committing = asyncio.Lock()
        self._in_client = threading.Lock()  # consume and close never run at once
        self._consumer: Consumer | None = None
        self._refused: int | None = None  # a session timeout the broker refused, not acted on yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prefetch: asyncio.Future[list[_Record]] | None = None  # the fetch running ahead
        # messages per fetch: a message holds a partition's share of a publish (often hundreds of
        # records), so this many fill a batch of max_records without waiting for more fetches
        self._fetch_messages = min(self.max_records, 1000)

    async def _prefetched(self, consumer: Consumer) -> list[_Record]:
        """The records of the fetch started ahead, or of a new one."""
        fetch, self._prefetch = self._prefetch, None
        if fetch is None:
            return await asyncio.to_thread(self._fetch, consumer)
        return await fetch

    def _close(self, consumer: Consumer) -> None:
        """Close once a fetch still running (its task was cancelled) has returned."""
        with self._in_client, contextlib.suppress(KafkaException, RuntimeError):
            consumer.close()

    async def _ready(self) -> bool:
        """Whether the topic exists (created now if needed); False (after a log line) if unreachable."""
        try:
            await self.bus.ensure_topic(self.topic)
        except Exception as exc:
            if self.bus.closing:
                return True
            log.warning("Kafka bus: cannot subscribe to %r yet: %s", self.topic, exc)
            return False
        return True

    def _keep(self, records: list[_Record]) -> None:
        """Buffer fetched records of partitions still ours.

        Records fetched before a rebalance or a rewind finished can come back after it: those of a
        partition no longer assigned are dropped, and after a rewind a partition's records are
        dropped until the one rewound to comes again (they follow it).
        """
        for r in records:
            if r.partition not in self.assigned:
                continue
            rewound = self._rewound.get(r.partition)
            if rewound is not None:
                if r.offset != rewound:
                    continue
                del self._rewound[r.partition]
            self._buffer.append(r)

    def _take(self) -> list[_Record]:
        taken = [self._buffer.popleft()]
        count = taken[0].records
        while self._buffer and count + self._buffer[0].records <= self.max_records:
            record = self._buffer.popleft()
            taken.append(record)
            count += record.records
        return taken

    def _fetch(self, consumer: Consumer) -> list[_Record]:
        """Consume and decode (on a worker thread).

        Waits for the first message only, then takes what else librdkafka already holds:
        ``consume(n, timeout)`` alone would wait the whole timeout whenever fewer than n messages
        are there, which is every fetch once messages are packs of many records.
        """
        try:
            with self._in_client:
                first = consumer.poll(_FETCH_TIMEOUT_S)
                if first is None:
                    return []
                messages = [first]
                if self._fetch_messages > 1:
                    messages += consumer.consume(num_messages=self._fetch_messages - 1, timeout=0)
        except (KafkaException, RuntimeError) as exc:
            log.warning("Kafka bus: consume failed: %s", exc)
            return []
        return [r for r in map(self._record, messages) if r is not None]

    def _record(self, message: Message) -> _Record | None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError.INVALID_SESSION_TIMEOUT:
                self._refused = int(self.config["session.timeout.ms"])
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("Kafka bus: %s", error.str())
            return None
        partition, offset = message.partition(), message.offset()
        assert partition is not None
        assert offset is not None
        try:
            piece = read_pack(message.value() or b"")
        except UndecodableMessage as exc:
            # kept, empty, so that committing moves past it
            log.error("Kafka bus: skipping %s[%d]@%d: %s", self.topic, partition, offset, exc)
            return _Record(partition, offset, None, 0)
        return _Record(partition, offset, piece, piece.records)
