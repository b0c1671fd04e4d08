"""``kafka://host:port``: the bus on a Kafka-protocol broker (Apache Kafka, Redpanda, Tansu).

Publishing makes one message per partition a batch touches, each device's
partition chosen by :func:`.codec.partition_of` (a stable hash of its id, not
Kafka's key partitioner), so one device's records go to one partition and stay
in order (see :mod:`.codec` for the bytes). The producer is idempotent with
``acks=all``: ``publish`` returns only once the broker has acknowledged every
message of the batch (its delivery reports), so an acknowledged record is in
the log. When the broker cannot be reached within ``delivery_timeout_s``
(librdkafka's ``message.timeout.ms``) the publish raises
:class:`~fleetstream.errors.BusUnavailable`; when librdkafka's local queue is
full it raises :class:`~fleetstream.errors.Overloaded`. In both cases messages
of the batch may still reach the log (the sender retries and dedup drops the
repeats); none is ever acknowledged without being there.

librdkafka blocks, the event loop must not: ``produce`` only enqueues (it never
waits), a background thread polls for delivery reports and wakes the waiting
publish on the loop, and admin and consumer calls run in worker threads.

Topics are created when first used, if missing, with ``partitions`` partitions
(default 8); the readings topic's name is the URL's path (``readings`` when
empty). Consuming is :mod:`.kafka_subscription`.

The producer's making, polling and replacing are in :mod:`.kafka_producer`, the topics in
:mod:`.kafka_topics`; this module holds the bus's face, publishing and subscribing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from fleetstream.adapters.bus.codec import split_by_partition
from fleetstream.adapters.bus.kafka_group import GroupTimeouts, group_config
from fleetstream.adapters.bus.kafka_producer import KafkaProducing, _Delivery
from fleetstream.adapters.bus.kafka_subscription import KafkaBatch, Subscription
from fleetstream.domain.batch import Batch
from fleetstream.errors import BusUnavailable, ConfigError, Overloaded
from fleetstream.ingest.kafka import KafkaEndpoint, parse_kafka_url
from fleetstream.ports import READINGS_TOPIC, PartitionsHook

log = logging.getLogger(__name__)


def parse_bus_url(url: str) -> tuple[KafkaEndpoint, int | None]:
    """The broker and readings topic of ``kafka://host[:port][/topic][?partitions=N]``, and N if given.

    Raises:
        ConfigError: naming what is wrong.
    """
    parts = urlsplit(url.strip())
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"partitions"})
    if unknown:
        msg = f"invalid Kafka bus URL {url!r}: unknown parameter(s) {', '.join(unknown)}; known: partitions"
        raise ConfigError(msg)
    partitions = None
    if "partitions" in query:
        text = query["partitions"][-1]
        if not text.isdigit() or not 1 <= int(text) <= 10_000:
            msg = f"invalid Kafka bus URL {url!r}: partitions must be a number from 1 to 10000"
            raise ConfigError(msg)
        partitions = int(text)
    endpoint = parse_kafka_url(urlunsplit((parts.scheme, parts.netloc, parts.path, "", parts.fragment)))
    topic = endpoint.topic if parts.path.strip("/") else READINGS_TOPIC
    return KafkaEndpoint(endpoint.host, endpoint.port, topic, endpoint.group), partitions


class KafkaBus(KafkaProducing):
    """The Kafka :class:`~fleetstream.ports.Bus`; see the module docstring.

    Args:
        url: ``kafka://host[:port][/readings-topic][?partitions=N]``.
        partitions: partitions of topics this bus creates (the URL's ``partitions`` wins).
        replication_factor: of created topics; -1 takes the broker's default.
        delivery_timeout_s: how long a publish may wait for the broker before BusUnavailable.
        config: extra librdkafka settings for the producer, consumers and admin client.
        fail_backoff_s: pause after a consumer's ``fail`` before its records are taken again.
        max_pending: messages the producer may hold unacknowledged before Overloaded (the
            runtime passes its ingest queue bound; each message holds one or more records).
        ack_timeout_s: the runtime's longest wait for durability; the delivery timeout is the
            smaller of the two.
        group: session timeout and heartbeat of its consumers (:mod:`.kafka_group`: 3000 and
            500 ms by default, 6000 ms where the broker refuses less).
    """

    def __init__(
        self,
        url: str,
        *,
        partitions: int = 8,
        replication_factor: int = -1,
        delivery_timeout_s: float = 8.0,
        config: dict[str, Any] | None = None,
        fail_backoff_s: float = 0.5,
        max_pending: int | None = None,
        ack_timeout_s: float | None = None,
        group: GroupTimeouts | None = None,
    ) -> None:
        self.endpoint, from_url = parse_bus_url(url)
        self.url = url
        self.partitions = from_url or partitions
        self.replication_factor = replication_factor
        self.delivery_timeout_s = min(delivery_timeout_s, ack_timeout_s or delivery_timeout_s)
        self.max_pending = max_pending
        self.fail_backoff_s = fail_backoff_s
        self.extra_config = dict(config or {})
        self.group = group or GroupTimeouts()
        self.config: dict[str, Any] = {
            "bootstrap.servers": self.endpoint.bootstrap,
            "logger": log,
            "log_level": 2,  # librdkafka's own lines only when critical: error_cb says the rest once
            "error_cb": self._on_error,
            # topics come from ensure_topic with our partition count, never from a broker default
            "allow.auto.create.topics": False,
            **self.extra_config,
        }
        self.last_error: str | None = None
        self.closing = False
        self._producer: Producer | None = None
        self._admin: AdminClient | None = None
        self._poller: threading.Thread | None = None
        self._halt = threading.Event()
        self._ready: dict[str, int] = {}  # topic -> its partition count, once looked at
        self._topic_lock = asyncio.Lock()
        self._pending: set[_Delivery] = set()
        self._fatal = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the producer (connecting happens in the background; the broker may still be down)."""
        self.closing = False
        self._halt.clear()
        self._producer = self._new_producer()
        self._admin = AdminClient(self.config)
        self._poller = threading.Thread(target=self._poll, name="fleetstream-kafka-bus", daemon=True)
        self._poller.start()
        log.info(
            "Kafka bus: producing to %s, readings topic %r", self.endpoint.bootstrap, self.endpoint.topic
        )

    async def close(self) -> None:
        """Wait (up to the delivery timeout) for messages in flight; publishes still waiting fail."""
        self.closing = True
        producer, self._producer = self._producer, None
        self._halt.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join)
            self._poller = None
        if producer is not None:
            await asyncio.to_thread(producer.flush, self.delivery_timeout_s)
        for delivery in list(self._pending):
            if not delivery.future.done():
                delivery.future.set_exception(BusUnavailable("the bus closed before the broker acknowledged"))

    # -- publish -----------------------------------------------------------------------------

    async def publish(self, topic: str, batch: Batch) -> None:
        if not batch.records:
            return
        producer = self._producer
        if producer is None or self.closing:
            msg = "the bus is closed"
            raise BusUnavailable(msg)
        name = self.topic_name(topic)
        partitions = await self.partition_count(name)
        if self._fatal:
            producer = self._replace_producer()
        pieces = split_by_partition(batch, partitions)
        delivery = _Delivery(asyncio.get_running_loop(), len(pieces))
        try:
            for partition, value in pieces:
                producer.produce(name, value, partition=partition, on_delivery=delivery.report)
        except BufferError:
            delivery.abandoned = True
            msg = f"the Kafka producer's queue is full ({len(producer)} messages waiting for the broker)"
            raise Overloaded(msg, retry_after=1.0) from None
        except KafkaException as exc:
            delivery.abandoned = True
            msg = f"Kafka refused the batch: {exc.args[0].str()}"
            raise BusUnavailable(msg) from None
        self._pending.add(delivery)
        try:
            # librdkafka reports every message within message.timeout.ms; the margin covers the poll
            await asyncio.wait_for(asyncio.shield(delivery.future), self.delivery_timeout_s + 5)
        except TimeoutError:
            delivery.abandoned = True
            waited = self.delivery_timeout_s
            msg = f"Kafka broker {self.endpoint.bootstrap} did not acknowledge within {waited:g} s"
            raise BusUnavailable(msg) from None
        finally:
            self._pending.discard(delivery)
        if delivery.error is not None:
            self._ready.pop(name, None)  # a broker restarted empty has lost it: look again next time
            error = delivery.error
            reason = "unreachable" if error.code() == KafkaError._MSG_TIMED_OUT else "refused the batch"
            msg = f"Kafka broker {self.endpoint.bootstrap} {reason}: {error.str()}"
            raise BusUnavailable(msg)

    # -- subscribe ---------------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        group: str,
        max_records: int,
        *,
        on_assign: PartitionsHook | None = None,
        on_revoke: PartitionsHook | None = None,
    ) -> AsyncIterator[KafkaBatch]:
        """Consume ``topic`` as one member of ``group``; see :mod:`.kafka_subscription`.

        ``on_assign``/``on_revoke`` run on the event loop while the rebalance waits for them.
        """
        config = {**self.config, **group_config(group, self.group), **self.extra_config}
        sub = Subscription(self, self.topic_name(topic), config, max_records, on_assign, on_revoke)
        return sub.batches()
