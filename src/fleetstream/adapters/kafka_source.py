"""``kafka://host:port/device-events``: devices (or a bridge) produce raw messages to a Kafka topic,
fleetstream consumes them in a consumer group.

Committed means durable, as acknowledged does for HTTP and MQTT: auto-commit is
off, and the offset after a message is committed only once its readings are
stored (and its bad part is in the dead-letter table). A message consumed but
not committed when fleetstream stops, crashes or loses its partitions is
delivered again, to this process or another member of the group; dedup stores
it once. Each message is decoded with the Kafka message's timestamp as its
receive time, so a re-delivered message without a timestamp of its own decodes
to the same readings and dedup recognises it.

confluent-kafka (librdkafka) blocks: a thread polls batches (``consume``),
hands each to the event loop and waits until it is ingested, then commits, and
only then polls again. Rebalances run inside ``consume``, so a revoked
partition never has a batch in hand; reconnecting is librdkafka's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from fleetstream.domain.records import is_valid_device_id
from fleetstream.ingest.intake import Intake
from fleetstream.ingest.kafka import parse_kafka_url

if TYPE_CHECKING:
    from fleetstream.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Record:
    partition: int
    offset: int
    payload: bytes
    device_id: str | None
    timestamp_us: int | None


class KafkaSource:
    """The Kafka :class:`~fleetstream.ports.Source`; see the module docstring.

    Args:
        url: ``kafka://host[:port][/topic][?group=NAME]`` (topic ``device-events``, group
            ``fleetstream-gateway`` by default).
        intake: ingests each message (gateway + dead letters).
        batch_size: most messages taken per poll; they are ingested concurrently.
        workers: messages of a batch ingested at once (they share group commits).
        config: extra librdkafka settings (they override the defaults).
        stop_timeout_s: how long ``stop`` waits for the batch in hand.
    """

    name = "kafka"

    def __init__(
        self,
        url: str,
        *,
        intake: Intake,
        batch_size: int = 500,
        workers: int = 500,
        config: dict[str, Any] | None = None,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = parse_kafka_url(url)
        self.intake = intake
        self.batch_size = batch_size
        self.workers = workers
        self.stop_timeout_s = stop_timeout_s
        self.config: dict[str, Any] = {
            "bootstrap.servers": self.endpoint.bootstrap,
            "group.id": self.endpoint.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # A group join waits up to half the session timeout on some brokers (Tansu): keep it short.
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            # A topic created after the subscription (by the first producer) is seen within seconds.
            "topic.metadata.refresh.interval.ms": 5000,
            "error_cb": self._on_error,
            # librdkafka says when a broker goes down (error_cb), not when it is back: its statistics do.
            "statistics.interval.ms": 2000,
            "stats_cb": self._on_stats,
            **(config or {}),
        }
        self.connected = False
        self.received_total = 0
        self.committed_total = 0
        self.commit_failures = 0
        self.partitions: list[int] = []
        self.last_error: str | None = None
        self._in_hand = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._halt = threading.Event()  # the poll thread's view of _stop
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._halt.clear()
        consumer = Consumer(self.config)
        consumer.subscribe([self.endpoint.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._consumer = consumer
        self._thread = threading.Thread(target=self._poll, name="fleetstream-kafka", daemon=True)
        self._thread.start()
        log.info(
            "Kafka: consuming %r on %s in group %r",
            self.endpoint.topic,
            self.endpoint.bootstrap,
            self.endpoint.group,
        )

    async def stop(self) -> None:
        """Take no new batch, finish (and commit) the one in hand, then leave the group."""
        self._stop.set()
        self._halt.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, self.stop_timeout_s + 10)
        self.connected = False

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "broker": self.endpoint.display,
            "topic": self.endpoint.topic,
            "group": self.endpoint.group,
            "connected": self.connected,
            "partitions": list(self.partitions),
            "messages_received": self.received_total,
            "messages_committed": self.committed_total,
            "in_progress": self._in_hand,
            "dead_letters": self.intake.dead_letters_total,
            "retries": self.intake.retries_total,
            "commit_failures": self.commit_failures,
            "last_error": self.last_error or self.intake.last_error,
        }

    def metrics(self) -> dict[str, tuple[str, str, float]]:
        return {
            "kafka_source_connected": (
                "gauge",
                "1 while the Kafka source has partitions.",
                int(self.connected),
            ),
            "kafka_source_messages_received_total": (
                "counter",
                "Kafka messages consumed.",
                self.received_total,
            ),
            "kafka_source_messages_committed_total": (
                "counter",
                "Kafka messages whose offset was committed once durable.",
                self.committed_total,
            ),
            "kafka_source_uncommitted": (
                "gauge",
                "Kafka messages consumed and not yet committed.",
                self.received_total - self.committed_total,
            ),
            "kafka_source_dead_letters_total": (
                "counter",
                "Kafka messages kept in the dead-letter table (wholly or partly bad).",
                self.intake.dead_letters_total,
            ),
            "kafka_source_retries_total": (
                "counter",
                "Kafka ingest attempts refused by back-pressure and retried.",
                self.intake.retries_total,
            ),
            "kafka_source_commit_failures_total": (
                "counter",
                "Offset commits the broker refused (the messages are delivered again).",
                self.commit_failures,
            ),
        }

    # -- the poll thread ---------------------------------------------------------------------

    def _poll(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        assert self._loop is not None
        try:
            while not self._halt.is_set():
                try:
                    messages = consumer.consume(num_messages=self.batch_size, timeout=0.2)
                except KafkaException as exc:
                    self._set_error(str(exc))
                    continue
                records = [r for r in map(self._record, messages) if r is not None]
                if not records:
                    continue
                self.connected = True
                future = asyncio.run_coroutine_threadsafe(self._ingest(records), self._loop)
                done = future.result()
                self._commit(consumer, records, done)
        except Exception:
            log.exception("Kafka: the consumer thread failed")
        finally:
            with contextlib.suppress(Exception):
                consumer.close()  # leaves the group: its partitions go to the other members now

    def _record(self, message: Message) -> _Record | None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                self._set_error(error.str())
            return None
        key = message.key()
        device = None
        if key:
            with contextlib.suppress(UnicodeDecodeError):
                text = key.decode()
                device = text if is_valid_device_id(text) else None
        kind, ms = message.timestamp()
        stamp = ms * 1000 if kind != 0 and ms > 0 else None  # 0: TIMESTAMP_NOT_AVAILABLE
        partition, offset = message.partition(), message.offset()
        assert partition is not None
        assert offset is not None
        return _Record(partition, offset, message.value() or b"", device, stamp)

    def _commit(self, consumer: Consumer, records: list[_Record], done: list[bool]) -> None:
        """Commit, per partition, the offset after the last message of an unbroken run of done ones."""
        upto: dict[int, int] = {}
        broken: set[int] = set()
        count = 0
        for record, ok in zip(records, done, strict=True):
            if record.partition in broken:
                continue
            if not ok:
                broken.add(record.partition)
                continue
            upto[record.partition] = record.offset + 1
            count += 1
        if not upto:
            return
        offsets = [TopicPartition(self.endpoint.topic, p, o) for p, o in upto.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self.commit_failures += 1
            self._set_error(f"offset commit failed: {exc}")
            return
        self.committed_total += count

    def _set_error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("Kafka: %s", text)
        self.last_error = text

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.connected = False
        self._set_error(error.str())

    def _on_stats(self, text: str) -> None:
        try:
            brokers = json.loads(text).get("brokers", {}).values()
        except (ValueError, AttributeError):
            return
        # the bootstrap entry stays down once the real broker connections are made: judge by those
        states = [b.get("state") for b in brokers if b.get("nodeid", -1) >= 0]
        up = any(state == "UP" for state in states)
        if up and not self.connected and self.partitions:
            self.last_error = None
        self.connected = up and bool(self.partitions)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.partitions = sorted({*self.partitions, *(p.partition for p in partitions)})
        self.connected = True
        self.last_error = None

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {p.partition for p in partitions}
        self.partitions = [p for p in self.partitions if p not in gone]

    # -- the event loop's side -----------------------------------------------------------------

    async def _ingest(self, records: list[_Record]) -> list[bool]:
        self.received_total += len(records)
        gate = asyncio.Semaphore(self.workers)

        async def one(record: _Record) -> bool:
            async with gate:
                self._in_hand += 1
                try:
                    return await self.intake.take(
                        record.payload, self.endpoint.topic, record.device_id, self._stop, record.timestamp_us
                    )
                finally:
                    self._in_hand -= 1

        return list(await asyncio.gather(*(one(r) for r in records)))


def add_kafka_source(runtime: Runtime, url: str) -> KafkaSource:
    """Consume a runtime's device messages from the Kafka topic of ``url``, feeding its gateway."""
    intake = Intake(runtime.gateway, runtime.store, runtime.clock, "kafka")
    source = KafkaSource(url, intake=intake)
    runtime.add_source(source)
    return source
