"""The simulator's MQTT transport (paho-mqtt 2): one QoS 1 message per device (or pack) of a
batch, done once every PUBACK came, published again after a backoff when they do not.

See :mod:`~fleetstream.simulator.brokers` for the topics and the packing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import msgspec

from fleetstream.errors import DeliveryFailed
from fleetstream.simulator.broker_common import _backoff, _resolve, by_device, packed, parse_mqtt_target

# The name it has always logged under, before the transports had modules of their own.
log = logging.getLogger("fleetstream.simulator.brokers")


class MqttTransport:
    """Publishes a batch as one QoS 1 message (a JSON array) per device; done when every PUBACK came.

    paho's network loop runs on its own thread and reconnects by itself. A batch
    whose PUBACKs do not all arrive within ``timeout_s`` (the connection dropped), or
    that finds no connection within ``connect_wait_s`` (the broker is down), is
    published again after a backoff, ``max_retries`` times, then raises
    :class:`DeliveryFailed`, which the simulator counts as errors.

    Args:
        target: ``mqtt://host[:port][/topic-prefix][?keepalive=S&client_id=NAME]``.
        timeout_s: how long a batch waits for its PUBACKs.
        max_retries: re-publications of a batch before it fails.
        backoff_s: first pause before a retry; doubles each time (with jitter).
        max_wait_s: longest pause before a retry.
        connect_wait_s: how long an attempt waits for a lost connection before it counts as failed.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_wait_s: float = 10.0,
        connect_wait_s: float = 1.0,
    ) -> None:
        self.target = parse_mqtt_target(target)
        self.connect_wait_s = connect_wait_s
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.published = 0  # broker messages acknowledged
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # guards _pending and _early
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._early: set[int] = set()  # PUBACKs that came before their future was registered
        self._connected = threading.Event()

    async def start(self) -> None:
        """Connect (in the background: a broker that is not up yet is waited for by :meth:`send`)."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.target.client_id)
        if self.target.username:
            client.username_pw_set(self.target.username, self.target.password)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(1, 10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(self.target.host, self.target.port, keepalive=self.target.keepalive_s)
        client.loop_start()
        self._client = client
        await asyncio.to_thread(self._connected.wait, min(self.timeout_s, 2.0))

    async def close(self) -> None:
        """Disconnect and stop paho's thread; batches in flight fail."""
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        with self._lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(DeliveryFailed("the MQTT transport was closed"))

    async def send(self, batch: list[dict[str, Any]]) -> None:
        """Publish the batch, retrying as the class docstring says.

        Raises:
            DeliveryFailed: PUBACKs still missing after every retry.
        """
        if self._client is None:
            msg = "MqttTransport.send() before start()"
            raise RuntimeError(msg)
        target = self.target
        if target.pack:
            bodies = [(target.pack_topic, msgspec.json.encode(ms)) for ms in packed(batch, target.pack)]
        else:
            bodies = [(target.topic(d), msgspec.json.encode(ms)) for d, ms in by_device(batch).items()]
        attempt = 0
        while True:
            futures: list[asyncio.Future[None]] = []
            try:
                if not self._connected.is_set():  # fail fast while the broker is away
                    up = await asyncio.to_thread(
                        self._connected.wait, min(self.timeout_s, self.connect_wait_s)
                    )
                    if not up:
                        raise TimeoutError
                futures = self._publish(bodies)
                async with asyncio.timeout(self.timeout_s):
                    await asyncio.gather(*futures)
            except TimeoutError:
                for fut in futures:
                    fut.cancel()
                if attempt >= self.max_retries:
                    where = f"{self.target.host}:{self.target.port}"
                    if self._connected.is_set():
                        msg = f"no PUBACK from {where} for a batch of {len(batch)} ({attempt + 1} attempts)"
                    else:
                        msg = f"cannot reach the MQTT broker at {where} ({attempt + 1} attempts)"
                    raise DeliveryFailed(msg) from None
                await asyncio.sleep(_backoff(attempt, self.backoff_s, self.max_wait_s))
                attempt += 1
            else:
                self.published += len(bodies)
                return

    def _publish(self, bodies: list[tuple[str, bytes]]) -> list[asyncio.Future[None]]:
        assert self._loop is not None
        futures: list[asyncio.Future[None]] = []
        for topic, body in bodies:
            fut = self._loop.create_future()
            # Not under self._lock: paho holds its own lock while it calls on_publish (which
            # takes self._lock), so holding ours across publish() would deadlock.
            info = self._client.publish(topic, body, qos=1)
            with self._lock:
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    fut.set_result(None)
                else:
                    self._pending[info.mid] = fut
            futures.append(fut)
        return futures

    # paho's thread
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            self._connected.set()
        else:
            log.warning("MQTT broker %s refused the simulator: %s", self.target.host, reason)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            fut = self._pending.pop(mid, None)
            if fut is None:
                self._early.add(mid)
                return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(_resolve, fut)
