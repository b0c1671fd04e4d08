"""A device-side MQTT publisher for the tests (paho-mqtt), and reading a server's MQTT status."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from ._support import ServerProcess


class Publisher:
    """Publishes with QoS 1 and counts the broker's PUBACKs. paho keeps unacknowledged messages and
    sends them again after a reconnect, so every message is acknowledged in the end even across a
    broker restart."""

    def __init__(self, port: int, client_id: str = "") -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.reconnect_delay_set(1, 2)
        self.client.max_inflight_messages_set(100)
        self.acked: set[int] = set()
        self.sent: dict[int, paho.MQTTMessageInfo] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client.on_publish = self._on_publish
        self.client.on_connect = lambda *_: self._connected.set()
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self._connected.wait(10):
            self.close()
            raise RuntimeError(f"cannot connect to the broker on 127.0.0.1:{port}")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            self.acked.add(mid)

    def publish(self, topic: str, payload: Any, qos: int = 1) -> int:
        """Queue a message (bytes as they are, anything else as JSON); its message id."""
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self.client.publish(topic, raw, qos=qos)
        self.sent[info.mid] = info
        return info.mid

    def wait_acked(self, timeout: float = 20) -> None:
        """Until the broker acknowledged every message published so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if set(self.sent) <= self.acked:
                    return
            time.sleep(0.02)
        with self._lock:
            missing = len(set(self.sent) - self.acked)
        raise AssertionError(f"{missing} of {len(self.sent)} messages not acknowledged within {timeout} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_status(srv: ServerProcess) -> dict[str, Any]:
    """The ``mqtt`` source's status in ``/readyz``."""
    status, body = srv.call("GET", "/readyz")
    assert status == 200, body
    result: dict[str, Any] = body["sources"]["mqtt"]
    return result


def dead_letters(srv: ServerProcess, topic: str | None = None, **params: Any) -> list[dict[str, Any]]:
    """``GET /api/v1/dead-letters`` (of one topic when given), newest first."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    status, body = srv.call("GET", "/api/v1/dead-letters" + (f"?{query}" if query else ""))
    assert status == 200, body
    letters: list[dict[str, Any]] = body["dead_letters"]
    return [d for d in letters if topic is None or d["topic"] == topic]
