"""MQTT addressing: broker URLs and topic filters. Pure; the client lives in ``adapters/mqtt.py``.

Settings check these before anything connects, so a bad ``--mqtt`` or
``--mqtt-topic`` is a one-line error rather than a traceback from the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit

from fleetstream.errors import ConfigError

DEFAULT_PORT = 1883
DEFAULT_TOPIC = "devices/+/telemetry"
_URL_FORM = "mqtt://[user[:password]@]host[:port][?client_id=ID]"
_QUERY_KEYS = ("client_id",)


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """Where the broker is and who we are to it.

    Example:
        >>> e = parse_mqtt_url("mqtt://gw:secret@broker.local?client_id=gw-1")
        >>> e.host, e.port, e.username, e.client_id, e.display
        ('broker.local', 1883, 'gw', 'gw-1', 'mqtt://gw@broker.local:1883')
    """

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = None
    client_id: str | None = None

    @property
    def display(self) -> str:
        """The URL without the password, for logs and the status endpoint."""
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{user}{host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttEndpoint:
    """Parse a broker URL.

    Raises:
        ConfigError: naming what is wrong and the expected form.
    """
    parts = urlsplit(url.strip())
    if parts.scheme in ("mqtts", "ssl", "wss", "ws"):
        msg = f"invalid MQTT URL {url!r}: only plain mqtt:// is supported for now (no TLS or WebSockets)"
        raise ConfigError(msg)
    if parts.scheme != "mqtt" or not parts.netloc:
        msg = f"invalid MQTT URL {url!r}: expected {_URL_FORM}"
        raise ConfigError(msg)
    try:
        port = parts.port
    except ValueError:
        msg = f"invalid MQTT URL {url!r}: the port must be a number from 1 to 65535"
        raise ConfigError(msg) from None
    if not parts.hostname:
        msg = f"invalid MQTT URL {url!r}: no host; expected {_URL_FORM}"
        raise ConfigError(msg)
    if parts.path not in ("", "/") or parts.fragment:
        msg = (
            f"invalid MQTT URL {url!r}: give the topic filter with --mqtt-topic "
            "(FLEETSTREAM_MQTT_TOPIC), not in the URL, where '#' would end it"
        )
        raise ConfigError(msg)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if unknown:
        msg = f"invalid MQTT URL {url!r}: unknown parameter(s) {', '.join(unknown)}; known: client_id"
        raise ConfigError(msg)
    client_id = query.get("client_id", [None])[-1]
    if client_id is not None and not client_id.strip():
        msg = f"invalid MQTT URL {url!r}: client_id is empty"
        raise ConfigError(msg)
    return MqttEndpoint(
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        client_id=client_id,
    )


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """A subscription filter, plain or shared (``$share/<group>/<filter>``).

    The device id of a message whose payload has none comes from the topic
    level under the filter's first ``+``.

    Example:
        >>> f = TopicFilter.parse("$share/fleetstream/devices/+/telemetry")
        >>> f.group, f.filter, f.device_of("devices/t-9/telemetry")
        ('fleetstream', 'devices/+/telemetry', 't-9')
    """

    subscription: str
    filter: str
    group: str | None = None
    device_level: int | None = None

    @classmethod
    def parse(cls, text: str) -> TopicFilter:
        """Check the filter against the MQTT rules.

        Raises:
            ConfigError: naming the broken rule.
        """
        group: str | None = None
        inner = text
        if text.startswith("$share/"):
            group, _, inner = text.removeprefix("$share/").partition("/")
            if not group or any(c in group for c in "+#"):
                msg = (
                    f"invalid MQTT topic filter {text!r}: expected $share/<group>/<filter>, "
                    "the group without + or #"
                )
                raise ConfigError(msg)
        _check_filter(text, inner)
        levels = inner.split("/")
        device_level = levels.index("+") if "+" in levels else None
        return cls(text, inner, group, device_level)

    def device_of(self, topic: str) -> str | None:
        """The topic level under the filter's first ``+``, or ``None`` when there is none."""
        if self.device_level is None:
            return None
        levels = topic.split("/")
        return levels[self.device_level] if self.device_level < len(levels) else None


def _check_filter(text: str, inner: str) -> None:
    problem = None
    levels = inner.split("/")
    if not inner:
        problem = "it is empty"
    elif "\0" in inner:
        problem = "it contains a NUL character"
    elif len(inner.encode()) > 65_535:
        problem = "it is longer than 65535 bytes"
    elif any("#" in level and (level != "#" or i != len(levels) - 1) for i, level in enumerate(levels)):
        problem = "'#' must be a whole level and the last one"
    elif any("+" in level and level != "+" for level in levels):
        problem = "'+' must be a whole level"
    if problem:
        msg = f"invalid MQTT topic filter {text!r}: {problem}"
        raise ConfigError(msg)
