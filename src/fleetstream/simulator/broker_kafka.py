"""The simulator's Kafka transport (confluent-kafka): one message per device (or pack bucket) of
a batch, keyed by device id, ``acks=all``, done once every delivery report succeeded.

See :mod:`~fleetstream.simulator.brokers` for the keys and the packing.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from typing import Any

import msgspec

from fleetstream.errors import ConfigError, DeliveryFailed
from fleetstream.simulator.broker_common import (
    _fail,
    _resolve,
    bucket_of,
    by_device,
    packed,
    parse_kafka_target,
)


class KafkaTransport:
    """Produces a batch as one message (a JSON array) per device, keyed by device id, ``acks=all``.

    librdkafka retries within ``message.timeout.ms`` (``timeout_s``); a delivery
    report that still fails raises :class:`DeliveryFailed` for the whole batch.
    Delivery reports are served by ``poll`` on a thread of this transport.

    Args:
        target: ``kafka://host[:port][/topic][?pack=N]`` (topic ``device-events`` by default).
        timeout_s: how long librdkafka keeps trying a message.
        linger_ms: how long librdkafka gathers messages before a request.
    """

    def __init__(self, target: str, *, timeout_s: float = 15.0, linger_ms: int = 5) -> None:
        endpoint, self.pack = parse_kafka_target(target)
        self.bootstrap = endpoint.bootstrap
        self.topic = endpoint.topic
        self.timeout_s = timeout_s
        self.linger_ms = linger_ms
        self.published = 0
        self._producer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    async def start(self) -> None:
        """Create the producer and its poll thread."""
        try:
            import confluent_kafka
        except ImportError:
            msg = "kafka:// targets need confluent-kafka: pip install 'fleetstream[kafka]'"
            raise ConfigError(msg) from None
        if self._producer is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "acks": "all",
                "linger.ms": self.linger_ms,
                "message.timeout.ms": int(self.timeout_s * 1000),
                "client.id": "fleetstream-simulator",
            }
        )
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name="fleetstream-kafka-sim", daemon=True)
        self._poller.start()

    async def close(self) -> None:
        """Flush what is in flight (bounded), then stop the poll thread."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        await asyncio.to_thread(producer.flush, 5.0)
        self._stop.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 5.0)

    async def send(self, batch: list[dict[str, Any]]) -> None:
        """Produce the batch and wait for every delivery report.

        Raises:
            DeliveryFailed: a message could not be delivered.
        """
        if self._producer is None or self._loop is None:
            msg = "KafkaTransport.send() before start()"
            raise RuntimeError(msg)
        futures: list[asyncio.Future[None]] = []
        for key, messages in self._keyed(batch):
            fut: asyncio.Future[None] = self._loop.create_future()
            body = msgspec.json.encode(messages)
            while True:
                try:
                    self._producer.produce(self.topic, body, key=key, on_delivery=self._reporter(fut))
                    break
                except BufferError:  # librdkafka's queue is full: let deliveries drain it
                    await asyncio.sleep(0.05)
            futures.append(fut)
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            msg = f"{len(failed)} of {len(futures)} Kafka messages to {self.topic} failed: {failed[0]}"
            raise DeliveryFailed(msg)
        self.published += len(futures)

    def _keyed(self, batch: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
        """(key, messages) per Kafka message: per device, or packs per bucket of devices."""
        if not self.pack:
            return list(by_device(batch).items())
        buckets: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for message in batch:
            buckets[bucket_of(str(message.get("device_id", "")))].append(message)
        # "pack/<n>" is not a device id ('/' is not allowed in one): the server reads the ids
        # from the payload instead of checking them against the key.
        return [(f"pack/{b}", part) for b, ms in buckets.items() for part in packed(ms, self.pack)]

    def _reporter(self, fut: asyncio.Future[None]) -> Any:
        loop = self._loop
        assert loop is not None

        def delivered(err: Any, _msg: Any) -> None:  # on the poll thread
            if err is None:
                loop.call_soon_threadsafe(_resolve, fut)
            else:
                loop.call_soon_threadsafe(_fail, fut, DeliveryFailed(str(err)))

        return delivered

    def _poll(self) -> None:
        while not self._stop.is_set():
            producer = self._producer
            if producer is None:
                return
            producer.poll(0.05)
