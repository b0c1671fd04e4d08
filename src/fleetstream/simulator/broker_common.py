"""What the simulator's broker transports share: their targets (``mqtt://`` and ``kafka://``
URLs and the Flask-based simulator's MQTT variables), packing a batch's readings into broker
messages, and resolving acknowledgement futures from a client library's thread.

See :mod:`~fleetstream.simulator.brokers` for how the transports use them.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

from fleetstream.errors import ConfigError
from fleetstream.ingest.kafka import KafkaEndpoint, parse_kafka_url

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


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _backoff(attempt: int, first_s: float, max_s: float) -> float:
    return random.uniform(0.5, 1.0) * min(max_s, first_s * 2.0**attempt)
