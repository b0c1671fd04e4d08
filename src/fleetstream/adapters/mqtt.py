"""``mqtt://host:port``: devices publish to a broker (mosquitto, EMQX), fleetstream subscribes.

Acknowledged means durable, as for HTTP: the subscription is QoS 1 with manual
acknowledgement, and a message's PUBACK goes to the broker only once its
readings are stored (and its bad part is in the dead-letter table). Until then
the broker keeps the message; if the connection drops first, it delivers it
again and dedup stores it once.

The session is persistent (clean session off, a stable client id), so the broker
keeps the subscription and queues messages while fleetstream restarts or
reconnects. The broker limits the messages in flight to one client (mosquitto's
``max_inflight_messages``, 20 by default), which paces delivery to the speed of
durable storage.

paho-mqtt runs its network loop on its own thread; its callbacks hand messages
to the event loop, where they are ingested by a few workers.

The reactions to the broker (paho's callbacks and what the event loop does with
them) live in :mod:`~fleetstream.adapters.mqtt_callbacks`, a base of
:class:`MqttSource`; this module holds its set-up, lifecycle and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fleetstream.adapters.mqtt_callbacks import MqttCallbacks, _Delivery, log
from fleetstream.adapters.mqtt_shadow import MqttShadow
from fleetstream.ingest.intake import Intake
from fleetstream.ingest.mqtt import TopicFilter, parse_mqtt_url

if TYPE_CHECKING:
    from fleetstream.runtime import Runtime


class MqttSource(MqttCallbacks):
    """The MQTT :class:`~fleetstream.ports.Source`; see the module docstring.

    Args:
        url: ``mqtt://[user[:password]@]host[:port][?client_id=ID]``.
        topic: the subscription filter, plain or ``$share/<group>/<filter>``.
        intake: ingests each payload (gateway + dead letters).
        client_id: used when the URL names none; keep it stable across restarts, and distinct
            per gateway, so the broker keeps this gateway's session.
        workers: messages ingested at once (they share group commits).
        connect_timeout_s: how long ``start`` waits for the first subscription before going on
            (the client keeps trying in the background).
        reconnect_max_s: longest pause between reconnection attempts (they start at 1 s and double).
        stop_timeout_s: how long ``stop`` waits for the messages in hand.
    """

    name = "mqtt"

    def __init__(
        self,
        url: str,
        *,
        topic: str,
        intake: Intake,
        client_id: str,
        workers: int = 32,
        connect_timeout_s: float = 5.0,
        reconnect_max_s: int = 30,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = parse_mqtt_url(url)
        self.topic = TopicFilter.parse(topic)
        self.client_id = self.endpoint.client_id or client_id
        self.intake = intake
        self.workers = workers
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.stop_timeout_s = stop_timeout_s
        self.connected = False
        self.received_total = 0
        self.acked_total = 0
        self.connects = 0
        self.last_error: str | None = None
        self._in_hand = 0
        self._connection = 0  # bumped on every connect and disconnect, on paho's thread
        self._lock = threading.Lock()  # orders PUBACKs against connection changes
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Delivery | None] = asyncio.Queue()
        self._stop = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._outage_logged = False
        self._late = False  # start() went on without a subscription: say when it comes

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        if self.endpoint.username is not None:
            client.username_pw_set(self.endpoint.username, self.endpoint.password)
        client.reconnect_delay_set(1, self.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        self._tasks = [
            asyncio.create_task(self._work(), name=f"fleetstream-mqtt-{i}") for i in range(self.workers)
        ]
        client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=30)
        client.loop_start()
        try:
            await asyncio.wait_for(self._subscribed.wait(), self.connect_timeout_s)
        except TimeoutError:
            self._late = True
            log.warning(
                "MQTT: no subscription on %s within %g s (%s); retrying in the background",
                self.endpoint.display,
                self.connect_timeout_s,
                self.last_error or "no answer",
            )
        else:
            log.info(
                "MQTT: subscribed to %r on %s as %r",
                self.topic.subscription,
                self.endpoint.display,
                self.client_id,
            )

    async def stop(self) -> None:
        """Take no new message, finish (and acknowledge) those in hand, then disconnect.

        Messages still queued are left unacknowledged: the broker keeps them for this session.
        """
        self._stop.set()
        for _ in self._tasks:
            self._queue.put_nowait(None)
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=self.stop_timeout_s)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks = []
        client, self._client = self._client, None
        if client is not None:
            with self._lock:
                self._connection += 1
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        self.connected = False

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "broker": self.endpoint.display,
            "topic": self.topic.subscription,
            "client_id": self.client_id,
            "connected": self.connected,
            "messages_received": self.received_total,
            "messages_acked": self.acked_total,
            "in_progress": self._in_hand,
            "dead_letters": self.intake.dead_letters_total,
            "retries": self.intake.retries_total,
            "reconnects": max(self.connects - 1, 0),
            "last_error": self.last_error or self.intake.last_error,
        }

    def metrics(self) -> dict[str, tuple[str, str, float]]:
        return {
            "mqtt_connected": ("gauge", "1 while connected to the MQTT broker.", int(self.connected)),
            "mqtt_messages_received_total": ("counter", "MQTT messages received.", self.received_total),
            "mqtt_messages_acked_total": (
                "counter",
                "MQTT messages acknowledged to the broker once durable.",
                self.acked_total,
            ),
            "mqtt_dead_letters_total": (
                "counter",
                "MQTT messages kept in the dead-letter table (wholly or partly bad).",
                self.intake.dead_letters_total,
            ),
            "mqtt_retries_total": (
                "counter",
                "MQTT ingest attempts refused by back-pressure and retried.",
                self.intake.retries_total,
            ),
            "mqtt_reconnects_total": (
                "counter",
                "Reconnections to the MQTT broker.",
                max(self.connects - 1, 0),
            ),
        }


def default_client_id(port: int) -> str:
    """``fleetstream-<host name>-<HTTP port>``: stable across restarts, distinct per process on a host."""
    return f"fleetstream-{socket.gethostname()}-{port}"


def add_mqtt_source(runtime: Runtime) -> MqttSource:
    """Subscribe a runtime to the broker of ``settings.mqtt``, feeding its gateway."""
    settings = runtime.settings
    if not settings.mqtt:
        msg = "settings.mqtt is not set"
        raise ValueError(msg)
    intake = Intake(runtime.gateway, runtime.store, runtime.clock, "mqtt")
    source = MqttSource(
        settings.mqtt, topic=settings.mqtt_topic, intake=intake, client_id=default_client_id(settings.port)
    )
    runtime.add_source(source)
    # The device shadow rides the same broker, on a client of its own.
    runtime.extras.append(MqttShadow(settings.mqtt, runtime.engine, f"{source.client_id}-shadow"))
    return source
