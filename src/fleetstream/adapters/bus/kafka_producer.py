"""The Kafka bus's producer: making it, polling its delivery reports, replacing it after a fatal error.

:class:`KafkaProducing` creates the idempotent ``acks=all`` producer, polls it on a thread of
its own (each publish's :class:`_Delivery` wakes the waiting publish on the event loop once
every message of it is reported), replaces it after a fatal error and logs each new broker
error once. Publishing itself is in :mod:`.kafka`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from fleetstream.adapters.bus.kafka_topics import KafkaTopics

# The bus's logger, as before this part had a module of its own.
log = logging.getLogger("fleetstream.adapters.bus.kafka")


class _Delivery:
    """The delivery reports of one publish; called on the producer's poll thread."""

    __slots__ = ("abandoned", "error", "future", "loop", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, messages: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.waiting = messages
        self.error: KafkaError | None = None
        self.abandoned = False

    def report(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None and self.error is None:
            self.error = err
        self.waiting -= 1
        if self.waiting == 0 and not self.abandoned:
            self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class KafkaProducing(KafkaTopics):
    """The producer steps of :class:`~fleetstream.adapters.bus.kafka.KafkaBus`."""

    config: dict[str, Any]
    max_pending: int | None
    last_error: str | None
    _producer: Producer | None
    _halt: threading.Event
    _fatal: bool

    def _new_producer(self) -> Producer:
        self._fatal = False
        return Producer(
            {
                **({"queue.buffering.max.messages": self.max_pending} if self.max_pending else {}),
                **self.config,
                "acks": "all",
                "enable.idempotence": True,
                "message.timeout.ms": int(self.delivery_timeout_s * 1000),
                "linger.ms": 5,
            }
        )

    def _poll(self) -> None:
        while not self._halt.is_set():
            producer = self._producer
            if producer is None:
                return
            try:
                producer.poll(0.1)
            except KafkaException as exc:  # a fatal error: publish replaces the producer
                self._fatal = True
                self._on_error(exc.args[0])
                self._halt.wait(0.1)

    def _replace_producer(self) -> Producer:
        """A new producer after a fatal error (the idempotent producer's state is gone on the broker,
        e.g. it restarted empty); what the old one still held fails its publishes."""
        old = self._producer
        self._producer = new = self._new_producer()
        if old is not None:
            old.purge()
            old.poll(0)  # delivers the purge reports: their publishes raise BusUnavailable
        log.warning("Kafka bus: the producer hit a fatal error and was replaced")
        return new

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = True
        text = error.str()
        if text != self.last_error:
            log.warning("Kafka bus: %s", text)
        self.last_error = text
