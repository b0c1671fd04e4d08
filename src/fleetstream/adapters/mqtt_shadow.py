"""The device shadow over MQTT, beside the telemetry subscription of ``--mqtt``.

- ``devices/{id}/desired``: fleetstream publishes the desired document
  (``{"device_id", "version", "desired"}``) **retained**, QoS 1, whenever it
  changes, so a device that connects later gets the current one at once; on
  every (re)connection to the broker it publishes again the documents of the
  twins in memory (the broker may have lost its retained messages).
- ``devices/{id}/reported``: a device publishes a JSON merge patch of its
  reported state (QoS 1); it is acknowledged to the broker once stored (or
  refused: not JSON, not an object, over the limits, an unknown device; such a
  message is logged and dropped, a retry would not help).

It is a client of its own (``<client id>-shadow``, persistent session), so the
telemetry subscription is untouched. :class:`ShadowBridge` is the MQTT side;
:class:`MqttShadow` connects it to the embedded engine, and
:class:`~fleetstream.cluster.mqtt_shadow.ClusterMqttShadow` to a cluster's store
and workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fleetstream.domain.events import DESIRED_CHANGED
from fleetstream.domain.shadow import REPORTED
from fleetstream.errors import FleetstreamError
from fleetstream.ingest.mqtt import parse_mqtt_url

if TYPE_CHECKING:
    from fleetstream.domain.twin import DeviceEvent, DeviceTwin
    from fleetstream.engine.pipeline import Engine

log = logging.getLogger(__name__)

REPORTED_FILTER = "devices/+/reported"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def desired_topic(device_id: str) -> str:
    """Where a device's desired state is published."""
    return f"devices/{device_id}/desired"


def reporting_device(topic: str) -> str | None:
    """The device of a ``devices/{id}/reported`` topic (``None`` for any other topic).

    Example:
        >>> reporting_device("devices/t-1/reported"), reporting_device("devices/t-1/telemetry")
        ('t-1', None)
    """
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "devices" and parts[2] == "reported" and parts[1]:
        return parts[1]
    return None


class ShadowBridge:
    """The MQTT client of the shadow: publishes desired documents, takes reported patches.

    Where the desired changes come from and where reports go is a subclass's: :meth:`_follow`
    (start following the changes, calling :meth:`publish`), :meth:`_republish` (after every
    connection: publish the current documents again) and :meth:`_report` (apply a report).
    """

    reported_filter = REPORTED_FILTER

    def __init__(self, url: str, client_id: str) -> None:
        self.endpoint = parse_mqtt_url(url)
        self.client_id = client_id
        self.published_total = 0
        self.reported_total = 0
        self.refused_total = 0
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._work: asyncio.Queue[tuple[int, int, str, bytes] | None] = asyncio.Queue()
        self._connection = 0  # bumped on every connect and disconnect: a PUBACK is only valid on its own
        self._lock = threading.Lock()
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect (in the background) and follow desired changes."""
        self._loop = asyncio.get_running_loop()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        if self.endpoint.username is not None:
            client.username_pw_set(self.endpoint.username, self.endpoint.password)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self._client = client
        await self._follow()
        self._worker = asyncio.create_task(self._take_reports(), name="fleetstream-mqtt-reported")
        client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=30)
        client.loop_start()

    async def stop(self) -> None:
        """Stop and disconnect (a report not acknowledged yet comes again; patches are idempotent)."""
        self._work.put_nowait(None)
        for task in (self._task, self._worker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._unfollow()
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    def publish(self, twin: DeviceTwin) -> None:
        """Publish a twin's desired document, retained (paho queues it while disconnected)."""
        if self._client is None:
            return
        body = {"device_id": twin.device_id, "version": twin.desired_version, "desired": twin.desired}
        self._client.publish(desired_topic(twin.device_id), _encode(body), qos=1, retain=True)
        self.published_total += 1

    # -- where changes come from and reports go (a subclass's) -----------------------------------

    async def _follow(self) -> None:
        """Start following desired changes (and set ``_task``, cancelled at stop)."""
        raise NotImplementedError

    async def _unfollow(self) -> None:
        """Release what :meth:`_follow` holds beside ``_task``."""

    def _republish(self) -> None:
        """Publish the current desired documents again (on the event loop, after a connection)."""
        raise NotImplementedError

    async def _report(self, device: str, patch: Any) -> None:
        """Apply a device's reported patch.

        Raises:
            FleetstreamError: It was refused (logged and dropped).
        """
        raise NotImplementedError

    # -- the event loop's side -----------------------------------------------------------------

    async def _take_reports(self) -> None:
        while True:
            item = await self._work.get()
            if item is None:
                return
            connection, mid, device, payload = item
            try:
                patch = _decode(payload)
                await self._report(device, patch)
                self.reported_total += 1
            except (msgspec.DecodeError, FleetstreamError) as exc:
                self.refused_total += 1
                text = exc.message if isinstance(exc, FleetstreamError) else f"not JSON: {exc}"
                log.warning("MQTT: reported state of %s refused: %s", device, text)
            with self._lock:  # a message of a lost connection comes again: leave it
                if self._client is not None and mid and connection == self._connection:
                    self._client.ack(mid, 1)

    # -- paho's thread ---------------------------------------------------------------------------

    def _call(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed: we are shutting down
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT shadow: the broker refused the connection: %s", reason)
            return
        with self._lock:
            self._connection += 1
        client.subscribe(self.reported_filter, qos=1)
        self._call(self._republish)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._lock:
            self._connection += 1

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        device = reporting_device(message.topic)
        if device is None:
            if message.qos:
                client.ack(message.mid, message.qos)
            return
        item = (self._connection, message.mid if message.qos else 0, device, bytes(message.payload))
        self._call(self._work.put_nowait, item)


class MqttShadow(ShadowBridge):
    """The shadow over MQTT of the embedded engine; see the module docstring."""

    def __init__(self, url: str, engine: Engine, client_id: str) -> None:
        super().__init__(url, client_id)
        self.engine = engine

    async def _follow(self) -> None:
        sub = self.engine.events.subscribe(lambda e: e.type == DESIRED_CHANGED)
        self._task = asyncio.create_task(self._forward(sub), name="fleetstream-mqtt-desired")

    async def _forward(self, sub: Any) -> None:
        try:
            while True:
                event: DeviceEvent | None = await sub.get()
                if event is None:
                    return
                twin = self.engine.processors.twins.get(event.device_id)
                if twin is not None and twin.desired_version == event.payload["version"]:
                    self.publish(twin)  # else a newer change is queued behind this one
        finally:
            sub.close()

    def _republish(self) -> None:
        for twin in list(self.engine.processors.twins.twins()):
            if twin.desired_version:
                self.publish(twin)

    async def _report(self, device: str, patch: Any) -> None:
        await self.engine.update_shadow(device, REPORTED, patch)
