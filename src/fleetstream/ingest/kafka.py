"""Addressing of the Kafka device-side source: ``kafka://host:port[/topic][?group=NAME]``.

Kept apart from the adapter so settings can be checked (and the CLI can say what is wrong) without
loading the Kafka client library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from fleetstream.errors import ConfigError

DEFAULT_TOPIC = "device-events"
DEFAULT_GROUP = "fleetstream-gateway"
DEFAULT_PORT = 9092
_URL_FORM = "kafka://host[:port][/topic][?group=NAME]"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's rule for topic names; group ids follow it here


@dataclass(frozen=True, slots=True)
class KafkaEndpoint:
    """Where the source reads: the bootstrap broker, the topic and the consumer group.

    Example:
        >>> e = parse_kafka_url("kafka://127.0.0.1:9092")
        >>> e.bootstrap, e.topic, e.group, e.display
        ('127.0.0.1:9092', 'device-events', 'fleetstream-gateway', 'kafka://127.0.0.1:9092/device-events')
    """

    host: str
    port: int = DEFAULT_PORT
    topic: str = DEFAULT_TOPIC
    group: str = DEFAULT_GROUP

    @property
    def bootstrap(self) -> str:
        """``host:port`` for librdkafka's ``bootstrap.servers``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def display(self) -> str:
        """The URL as shown in logs and the status endpoint."""
        return f"kafka://{self.bootstrap}/{self.topic}"


def parse_kafka_url(url: str) -> KafkaEndpoint:
    """Parse a source URL; the topic defaults to ``device-events``, the group to ``fleetstream-gateway``.

    Raises:
        ConfigError: naming what is wrong and the expected form.
    """
    parts = urlsplit(url.strip())
    if parts.scheme != "kafka" or not parts.netloc:
        msg = f"invalid Kafka URL {url!r}: expected {_URL_FORM}"
        raise ConfigError(msg)
    if parts.username or parts.password:
        msg = f"invalid Kafka URL {url!r}: authentication is not supported yet (plain TCP only)"
        raise ConfigError(msg)
    try:
        port = parts.port
    except ValueError:
        msg = f"invalid Kafka URL {url!r}: the port must be a number from 1 to 65535"
        raise ConfigError(msg) from None
    if not parts.hostname:
        msg = f"invalid Kafka URL {url!r}: no host; expected {_URL_FORM}"
        raise ConfigError(msg)
    topic = parts.path.strip("/") or DEFAULT_TOPIC
    if not _NAME.fullmatch(topic) or parts.fragment:
        msg = f"invalid Kafka URL {url!r}: the topic must be 1-249 characters of A-Z a-z 0-9 . _ -"
        raise ConfigError(msg)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"group"})
    if unknown:
        msg = f"invalid Kafka URL {url!r}: unknown parameter(s) {', '.join(unknown)}; known: group"
        raise ConfigError(msg)
    group = query.get("group", [DEFAULT_GROUP])[-1]
    if not _NAME.fullmatch(group):
        msg = f"invalid Kafka URL {url!r}: the group must be 1-249 characters of A-Z a-z 0-9 . _ -"
        raise ConfigError(msg)
    return KafkaEndpoint(parts.hostname, port or DEFAULT_PORT, topic, group)
