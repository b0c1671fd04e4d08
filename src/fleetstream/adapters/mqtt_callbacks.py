"""The MQTT source's callbacks: paho's thread hands each event to the event loop, which acts on it.

:class:`MqttCallbacks` holds the steps of :class:`~fleetstream.adapters.mqtt.MqttSource` that
react to the broker: on paho's network thread, a connection, a failure, a subscription or a
message is only handed over to the event loop; there, the connection state is kept, workers
ingest each delivery, and a delivery is acknowledged only on the connection it came on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

if TYPE_CHECKING:
    from collections.abc import Callable

    from fleetstream.ingest.intake import Intake
    from fleetstream.ingest.mqtt import MqttEndpoint, TopicFilter

# The source's logger, named after the module that held these steps before they moved here.
log = logging.getLogger("fleetstream.adapters.mqtt")


@dataclass(frozen=True, slots=True)
class _Delivery:
    mid: int
    qos: int
    topic: str
    payload: bytes
    connection: int  # which connection delivered it: a PUBACK is only valid on that one


class MqttCallbacks:
    """The broker-facing steps of :class:`~fleetstream.adapters.mqtt.MqttSource`, whose
    ``__init__`` sets up the state declared here."""

    endpoint: MqttEndpoint
    topic: TopicFilter
    client_id: str
    intake: Intake
    connected: bool
    received_total: int
    acked_total: int
    connects: int
    last_error: str | None
    _in_hand: int
    _connection: int
    _lock: threading.Lock
    _client: paho.Client | None
    _loop: asyncio.AbstractEventLoop | None
    _queue: asyncio.Queue[_Delivery | None]
    _stop: asyncio.Event
    _subscribed: asyncio.Event
    _outage_logged: bool
    _late: bool

    # -- the event loop's side -----------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            if delivery is None or self._stop.is_set():
                return
            device = self.topic.device_of(delivery.topic)
            self._in_hand += 1
            try:
                done = await self.intake.take(delivery.payload, delivery.topic, device, self._stop)
            finally:
                self._in_hand -= 1
            if done:
                self._ack(delivery)

    def _ack(self, delivery: _Delivery) -> None:
        with self._lock:
            client = self._client
            if client is None or delivery.connection != self._connection:
                # Its connection is gone; on the next one the broker delivers it again and dedup
                # stores it once. A PUBACK there could name another message with the same id.
                return
            if delivery.qos > 0:
                client.ack(delivery.mid, delivery.qos)
        self.acked_total += 1

    def _connected(self, session_present: bool) -> None:
        self.connected = True
        self.connects += 1
        self.last_error = None
        self._outage_logged = False
        if self.connects > 1:
            log.info("MQTT: reconnected to %s (session kept: %s)", self.endpoint.display, session_present)
        elif self._late:
            log.info("MQTT: connected to %s as %r", self.endpoint.display, self.client_id)

    def _disconnected(self, reason: str) -> None:
        was = self.connected
        self.connected = False
        self.last_error = reason
        if was and not self._stop.is_set():
            log.warning("MQTT: connection to %s lost (%s); reconnecting", self.endpoint.display, reason)

    def _failed(self, reason: str, subscription: bool = False) -> None:
        self.last_error = reason
        if subscription or not self._outage_logged:
            self._outage_logged = True
            log.warning("MQTT: %s; retrying with backoff", reason)

    # -- paho's thread: hand everything over to the event loop ----------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed: we are shutting down
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._call(self._failed, f"the broker refused the connection: {reason}")
            return
        with self._lock:
            self._connection += 1
        # Subscribe on every connection: a restarted broker without persistence forgot the session.
        client.subscribe(self.topic.subscription, qos=1)
        self._call(self._connected, flags.session_present)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        where = f"{self.endpoint.host}:{self.endpoint.port}"
        self._call(self._failed, f"cannot connect to the MQTT broker at {where}")

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._connection += 1
        # MQTT 3.1.1 has no reason codes: paho says "Unspecified error" for a dropped connection.
        text = "the connection closed" if reason.value == 0x80 else str(reason)
        self._call(self._disconnected, text)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(r.is_failure for r in reasons):
            text = f"the broker refused the subscription to {self.topic.subscription!r} (check its ACL)"
            self._call(self._failed, text, True)
            return
        self._call(self._subscribed.set)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        payload = bytes(message.payload)
        delivery = _Delivery(message.mid, message.qos, message.topic, payload, self._connection)
        self._call(self._received, delivery)

    def _received(self, delivery: _Delivery) -> None:
        self.received_total += 1
        self._queue.put_nowait(delivery)
