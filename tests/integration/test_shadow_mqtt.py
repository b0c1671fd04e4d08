"""The device shadow over a real mosquitto: desired published retained, reported taken from devices."""

from __future__ import annotations

import json
import queue
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ..servers import Mosquitto
from ._mqtt import Publisher
from ._support import ServerProcess, reading, wait_for

pytestmark = pytest.mark.integration


class Watcher:
    """A device reading ``devices/{id}/desired``: every message with its retain flag."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: queue.Queue[tuple[bool, dict[str, Any]]] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = lambda c, u, m: self.messages.put((m.retain, json.loads(m.payload)))
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def next(self, timeout: float = 10) -> tuple[bool, dict[str, Any]]:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def watchers() -> Iterator[Callable[[int, str], Watcher]]:
    made: list[Watcher] = []

    def _make(port: int, topic: str) -> Watcher:
        made.append(Watcher(port, topic))
        return made[-1]

    yield _make
    for w in made:
        w.close()


def test_desired_is_published_retained_and_reported_comes_back(
    mosquitto: Mosquitto,
    start: Callable[..., ServerProcess],
    watchers: Callable[[int, str], Watcher],
    dev: str,
) -> None:
    srv = start("--mqtt", mosquitto.url)
    srv.call("POST", "/api/v1/telemetry?wait=true", [reading(dev, 0, 20.0)])
    wait_for(lambda: srv.call("GET", f"/api/v1/devices/{dev}")[0] == 200)

    live = watchers(mosquitto.port, f"devices/{dev}/desired")
    status, body = srv.call("PATCH", f"/api/v1/devices/{dev}/desired", {"interval_s": 5, "mode": "eco"})
    assert status == 200, body
    retained, message = live.next()
    assert retained is False  # delivered live to a subscriber already there
    assert message == {"device_id": dev, "version": 1, "desired": {"interval_s": 5, "mode": "eco"}}
    srv.call("PATCH", f"/api/v1/devices/{dev}/desired", {"mode": None})
    assert live.next()[1] == {"device_id": dev, "version": 2, "desired": {"interval_s": 5}}

    # A device connecting later gets the current document at once, retained
    late = watchers(mosquitto.port, f"devices/{dev}/desired")
    retained, message = late.next()
    assert (retained, message["version"], message["desired"]) == (True, 2, {"interval_s": 5})

    # The device reports over MQTT: stored, the delta empties
    pub = Publisher(mosquitto.port)
    try:
        pub.publish(f"devices/{dev}/reported", {"interval_s": 5, "firmware": "1.2.0"})
        pub.publish(f"devices/{dev}/reported", b"not json")  # refused, the subscription goes on
        pub.publish(f"devices/{dev}/reported", {"firmware": "1.2.1"})
        pub.wait_acked()
    finally:
        pub.close()

    def reported() -> Any:
        shadow = srv.call("GET", f"/api/v1/devices/{dev}")[1]["shadow"]
        return shadow if shadow["reported"].get("firmware") == "1.2.1" else None

    shadow = wait_for(reported)
    assert shadow["reported"] == {"interval_s": 5, "firmware": "1.2.1"}
    assert shadow["delta"] == {}
    assert shadow["reported_version"] == 2
    assert "reported state of" in srv.output()
    # telemetry on the usual topic is untouched
    pub = Publisher(mosquitto.port)
    try:
        pub.publish(f"devices/{dev}/telemetry", reading(dev, 1, 21.0))
        pub.wait_acked()
    finally:
        pub.close()
    wait_for(lambda: srv.call("GET", f"/api/v1/devices/{dev}")[1]["readings"] == 2)


def test_desired_is_published_again_after_the_broker_forgot_it(
    launch_mosquitto: Callable[..., Mosquitto],
    start: Callable[..., ServerProcess],
    watchers: Callable[[int, str], Watcher],
    dev: str,
) -> None:
    broker = launch_mosquitto(persistent=False)  # a restart loses every retained message
    srv = start("--mqtt", broker.url)
    srv.call("POST", "/api/v1/telemetry?wait=true", [reading(dev, 0, 20.0)])
    wait_for(lambda: srv.call("GET", f"/api/v1/devices/{dev}")[0] == 200)
    assert srv.call("PATCH", f"/api/v1/devices/{dev}/desired", {"interval_s": 30})[0] == 200
    assert watchers(broker.port, f"devices/{dev}/desired").next()[1]["version"] == 1

    broker.restart()
    late = watchers(broker.port, f"devices/{dev}/desired")
    _, message = late.next(timeout=20)  # once fleetstream has reconnected
    assert message == {"device_id": dev, "version": 1, "desired": {"interval_s": 30}}
