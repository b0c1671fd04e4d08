"""The Kafka bus's topics: their names, and creating them (once, if missing) with our partition count.

:class:`KafkaTopics` maps a bus topic to its Kafka topic (the readings topic is named by the
URL) and looks each topic up once per process on a worker thread, creating it with
``partitions`` partitions when the broker lacks it; a broker that does not answer is
:class:`~fleetstream.errors.BusUnavailable`. :class:`~fleetstream.adapters.bus.kafka.KafkaBus`
builds on it.
"""

from __future__ import annotations

import asyncio
import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from fleetstream.errors import BusUnavailable
from fleetstream.ingest.kafka import KafkaEndpoint
from fleetstream.ports import READINGS_TOPIC

# The bus's logger, as before this part had a module of its own.
log = logging.getLogger("fleetstream.adapters.bus.kafka")


class KafkaTopics:
    """The topic steps of :class:`~fleetstream.adapters.bus.kafka.KafkaBus`."""

    endpoint: KafkaEndpoint
    partitions: int
    replication_factor: int
    delivery_timeout_s: float
    _admin: AdminClient | None
    _ready: dict[str, int]
    _topic_lock: asyncio.Lock

    def topic_name(self, topic: str) -> str:
        """The Kafka topic of a bus topic (the readings topic is renamed by the URL)."""
        return self.endpoint.topic if topic == READINGS_TOPIC else topic

    async def ensure_topic(self, name: str) -> None:
        """Create ``name`` if the broker does not have it (once per process, or after a failure).

        Raises:
            BusUnavailable: the broker did not answer within the delivery timeout.
        """
        await self.partition_count(name)

    async def partition_count(self, name: str) -> int:
        """The partition count of topic ``name`` (created first if missing), looked up once.

        Raises:
            BusUnavailable: the broker did not answer within the delivery timeout.
        """
        count = self._ready.get(name)
        if count is not None:
            return count
        # one look at a time, and waiters resume in arrival order: publishes stay in call order
        async with self._topic_lock:
            if name not in self._ready:
                self._ready[name] = await asyncio.to_thread(self._create_if_missing, name)
            return self._ready[name]

    def _create_if_missing(self, name: str) -> int:
        admin = self._admin
        if admin is None:
            msg = "the Kafka bus is not started"
            raise BusUnavailable(msg)
        timeout = self.delivery_timeout_s
        try:
            topics = admin.list_topics(name, timeout=timeout).topics
            found = topics.get(name)
            if found is not None and found.error is None:
                log.info("Kafka bus: topic %r has %d partitions", name, len(found.partitions))
                return len(found.partitions)
            new = NewTopic(name, num_partitions=self.partitions, replication_factor=self.replication_factor)
            try:
                admin.create_topics([new], operation_timeout=timeout, request_timeout=timeout)[name].result(
                    timeout
                )
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                return self._existing_partitions(admin, name)
        except KafkaException as exc:
            msg = f"Kafka broker {self.endpoint.bootstrap} unavailable: {exc.args[0].str()}"
            raise BusUnavailable(msg) from None
        log.info("Kafka bus: created topic %r with %d partitions", name, self.partitions)
        return self.partitions

    def _existing_partitions(self, admin: AdminClient, name: str) -> int:
        """The partition count of a topic another process created a moment ago."""
        found = admin.list_topics(name, timeout=self.delivery_timeout_s).topics.get(name)
        if found is None or found.error is not None or not found.partitions:
            msg = f"Kafka broker {self.endpoint.bootstrap} does not describe topic {name!r}"
            raise BusUnavailable(msg)
        return len(found.partitions)
