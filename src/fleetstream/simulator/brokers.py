"""Simulator transports through a broker: MQTT (paho-mqtt 2) and Kafka (confluent-kafka).

Both send each device's messages of a batch as ONE broker message, a JSON array
(DESIGN §10: a QoS 1 round trip per reading is slow), and return from
:meth:`send` only once the broker acknowledged every one of them (a PUBACK for
MQTT, a successful delivery report with ``acks=all`` for Kafka). The client
libraries run their network I/O on a thread of their own; acknowledgements
resolve futures on the event loop with ``call_soon_threadsafe``, so the loop is
never blocked.

* MQTT: topic ``<prefix>/<device id>/telemetry`` (prefix ``devices``, which the
  server's default filter ``devices/+/telemetry`` matches), QoS 1.
* Kafka: topic ``device-events`` unless the URL names another, key = device id.

With ``?pack=N`` in the target URL, a broker message carries up to N readings of
several devices instead, as a gateway sends them: at 1 reading per device and
second, a message per device is a message per reading, and a fleet of 100,000
devices is then 100,000 publishes a second, more than one Python process can
make. Packed MQTT messages go to ``<prefix>/telemetry`` (no device level: the
server takes each id from the payload, so it subscribes with
``--mqtt-topic devices/telemetry`` or ``devices/#``); packed Kafka messages are
keyed ``pack/<bucket>``, a bucket being a fixed share of the devices (by a hash
of the id), so each device's readings still stay in one partition, in order.

Re-sending is safe: every message carries a ``msg_id``, which the server dedups.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import zlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

import msgspec

from fleetstream.errors import ConfigError, DeliveryFailed
from fleetstream.ingest.kafka import KafkaEndpoint, parse_kafka_url

log = logging.getLogger(__name__)

MQTT_DEFAULT_PORT = 1883
MQTT_DEFAULT_PREFIX = "devices"
_MQTT_FORM = "mqtt://host[:port][/topic-prefix][?keepalive=SECONDS&client_id=NAME&pack=N]"
PACK_BUCKETS = 16
"""Packed Kafka messages spread over this many keys (each device always in the same one)."""


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """Where the simulator publishes: broker, topic prefix, keep-alive.

    Example:
        >>> t = parse_mqtt_target("mqtt://broker:1884/fleet?keepalive=20")
        >>> t.host, t.port, t.prefix, t.keepalive_s, t.topic("d-1")
        ('broker', 1884, 'fleet', 20, 'fleet/d-1/telemetry')
    """

    host: str
    port: int = MQTT_DEFAULT_PORT
    prefix: str = MQTT_DEFAULT_PREFIX
    keepalive_s: int = 60
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    pack: int = 0
    """Readings per message from several devices (0: one message per device and batch)."""

    def topic(self, device_id: str) -> str:
        """The telemetry topic of one device."""
        return f"{self.prefix}/{device_id}/telemetry"

    @property
    def pack_topic(self) -> str:
        """The topic of packed messages (several devices): no device level."""
        return f"{self.prefix}/telemetry"


def parse_mqtt_target(url: str) -> MqttTarget:
    """Parse ``mqtt://host[:port][/topic-prefix][?keepalive=S&client_id=NAME]``.

    Raises:
        ConfigError: naming what is wrong and the expected form.
    """
    parts = urlsplit(url.strip())
    if parts.scheme != "mqtt" or not parts.netloc:
        msg = f"invalid MQTT target {url!r}: expected {_MQTT_FORM} (no TLS yet)"
        raise ConfigError(msg)
    try:
        port = parts.port or MQTT_DEFAULT_PORT
    except ValueError:
        msg = f"invalid MQTT target {url!r}: the port must be a number from 1 to 65535"
        raise ConfigError(msg) from None
    if not parts.hostname:
        msg = f"invalid MQTT target {url!r}: no host; expected {_MQTT_FORM}"
        raise ConfigError(msg)
    prefix = unquote(parts.path).strip("/") or MQTT_DEFAULT_PREFIX
    if any(c in prefix for c in "+#\0") or "#" in url:
        msg = f"invalid MQTT target {url!r}: the topic prefix may not contain '+', '#' or NUL"
        raise ConfigError(msg)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"keepalive", "client_id", "pack"})
    if unknown:
        names = ", ".join(unknown)
        msg = f"invalid MQTT target {url!r}: unknown parameter(s) {names}; known: keepalive, client_id, pack"
        raise ConfigError(msg)
    try:
        keepalive = int(query.get("keepalive", ["60"])[-1])
    except ValueError:
        keepalive = 0
    if not 1 <= keepalive <= 65535:
        msg = f"invalid MQTT target {url!r}: keepalive must be 1 to 65535 seconds"
        raise ConfigError(msg)
    return MqttTarget(
        host=parts.hostname,
        port=port,
        prefix=prefix,
        keepalive_s=keepalive,
        client_id=query.get("client_id", [""])[-1],
        pack=_pack(url, query),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def target_from_env(env: Mapping[str, str]) -> str | None:
    """An MQTT target from the Flask-based simulator's variables, or ``None`` without ``MQTT_HOST``.

    ``MQTT_HOST``, ``MQTT_PORT`` (1883), ``MQTT_KEEP_ALIVE_INTERVAL`` (60) and ``MQTT_TOPIC`` (the
    topic prefix, ``devices``) become ``mqtt://HOST:PORT/TOPIC?keepalive=N``. ``TOPIC_NAME`` (that
    simulator's Kafka topic) is not read: name the topic in a ``kafka://`` target instead.

    Example:
        >>> target_from_env({"MQTT_HOST": "broker", "MQTT_TOPIC": "iot", "MQTT_KEEP_ALIVE_INTERVAL": "30"})
        'mqtt://broker:1883/iot?keepalive=30'
    """
    host = env.get("MQTT_HOST", "").strip()
    if not host:
        return None
    port = env.get("MQTT_PORT", "").strip() or str(MQTT_DEFAULT_PORT)
    topic = env.get("MQTT_TOPIC", "").strip().strip("/")
    keepalive = env.get("MQTT_KEEP_ALIVE_INTERVAL", "").strip()
    url = f"mqtt://{host}:{port}" + (f"/{topic}" if topic else "")
    return url + (f"?keepalive={keepalive}" if keepalive else "")


def _pack(url: str, query: Mapping[str, list[str]]) -> int:
    text = query.get("pack", ["0"])[-1]
    try:
        pack = int(text)
    except ValueError:
        pack = -1
    if pack < 0:
        msg = f"invalid target {url!r}: pack must be a whole number of readings per message, got {text!r}"
        raise ConfigError(msg)
    return pack


def parse_kafka_target(url: str) -> tuple[KafkaEndpoint, int]:
    """A ``kafka://`` target and its ``pack`` (0 when absent), which the server's URL does not take.

    Example:
        >>> endpoint, pack = parse_kafka_target("kafka://k:9092/events?pack=200")
        >>> endpoint.bootstrap, endpoint.topic, pack
        ('k:9092', 'events', 200)
    """
    parts = urlsplit(url.strip())
    query = parse_qs(parts.query, keep_blank_values=True)
    pack = _pack(url, query)
    rest = urlencode([(k, v) for k, vs in query.items() if k != "pack" for v in vs])
    return parse_kafka_url(urlunsplit(parts._replace(query=rest))), pack


def packed(batch: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """The batch cut into messages of at most ``size`` readings, in order.

    Example:
        >>> [len(p) for p in packed([{"device_id": str(i)} for i in range(5)], 2)]
        [2, 2, 1]
    """
    return [batch[i : i + size] for i in range(0, len(batch), size)]


def bucket_of(device_id: str) -> int:
    """The fixed bucket of a device among :data:`PACK_BUCKETS` (a CRC-32 of its id, the same in every run)."""
    return zlib.crc32(device_id.encode()) % PACK_BUCKETS


def by_device(batch: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The batch's messages grouped by ``device_id``, in order."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for message in batch:
        groups[str(message.get("device_id", ""))].append(message)
    return groups


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


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _backoff(attempt: int, first_s: float, max_s: float) -> float:
    return random.uniform(0.5, 1.0) * min(max_s, first_s * 2.0**attempt)
