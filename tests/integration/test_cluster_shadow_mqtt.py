"""Cluster mode, the MQTT device shadow: a worker, an api and a gateway with ``--mqtt`` as separate
processes over Tansu, PostgreSQL and mosquitto. A desired change made through the api is published
retained on ``devices/{id}/desired`` by the gateway; a device's report on ``devices/{id}/reported``
reaches the owning worker; a change made while the gateway is down is published when it is back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ..servers import Mosquitto, Tansu
from ._mqtt import Publisher
from ._support import iso, wait_for
from .test_cluster import Proc, start_gateway
from .test_shadow_mqtt import Watcher, watchers  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

pytest.importorskip("psycopg")
pytest.importorskip("confluent_kafka")

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def mqtt_gateway(tmp_path: Path, bus: str, mosquitto: Mosquitto, store: str) -> Proc:
    gw = start_gateway(tmp_path, bus, "gateway", "--mqtt", mosquitto.url, "--store", store)

    def connected() -> bool:
        status, ready, _ = gw.call("GET", "/readyz")
        return status == 200 and bool(ready["sources"]["mqtt"]["connected"])

    wait_for(connected, timeout=30, interval=0.2)
    return gw


def test_the_gateway_carries_the_mqtt_shadow_to_and_from_the_workers(
    tmp_path: Path,
    postgres_url: str,
    module_tansu: Tansu,
    mosquitto: Mosquitto,
    watchers: Callable[[int, str], Watcher],  # noqa: F811
) -> None:
    bus = f"kafka://{module_tansu.bootstrap}/readings-{uuid.uuid4().hex[:8]}?partitions=4"
    worker = Proc.run(tmp_path, "worker", "--bus", bus, "--store", postgres_url)
    api = start_gateway(tmp_path, bus, "api", "--store", postgres_url)
    gw = mqtt_gateway(tmp_path, bus, mosquitto, postgres_url)

    def shadow() -> dict[str, Any]:
        status, body, _ = api.call("GET", "/api/v1/devices/pump-7")
        assert status == 200, body
        return dict(body["shadow"])

    try:
        first = {"device_id": "pump-7", "timestamp": iso(T0), "sensor": "t", "value": 41.5}
        assert api.call("POST", "/api/v1/telemetry", [first])[0] == 202
        wait_for(lambda: api.call("GET", "/api/v1/devices/pump-7")[0] == 200, timeout=30, interval=0.2)

        live = watchers(mosquitto.port, "devices/pump-7/desired")
        # once the gateway follows the live topic, a change reaches the device within a second
        wait_for(lambda: "following desired changes" in gw.output(), timeout=30, interval=0.2)
        patched = time.monotonic()
        status, body, _ = api.call(
            "PATCH", "/api/v1/devices/pump-7/desired", {"interval_s": 10, "mode": "eco"}
        )
        assert status == 200, body
        retained, message = live.next(timeout=10)
        assert time.monotonic() - patched < 1.5
        assert retained is False  # delivered live to a subscriber already there
        assert message == {"device_id": "pump-7", "version": 1, "desired": {"interval_s": 10, "mode": "eco"}}
        late = watchers(mosquitto.port, "devices/pump-7/desired")
        assert late.next() == (True, message)  # retained for devices that connect later

        # the device reports over MQTT: the owning worker stores it, the delta empties
        pub = Publisher(mosquitto.port)
        try:
            pub.publish("devices/pump-7/reported", {"interval_s": 10, "mode": "eco"})
            pub.publish("devices/pump-7/reported", b"not json")  # refused, the subscription goes on
            pub.publish("devices/nobody/reported", {"interval_s": 1})  # unknown device: refused
            pub.publish("devices/pump-7/reported", {"firmware": "1.2.1"})
            pub.wait_acked()
        finally:
            pub.close()
        got = wait_for(lambda: (s := shadow())["reported"].get("firmware") and s, timeout=20, interval=0.2)
        assert got["reported"] == {"interval_s": 10, "mode": "eco", "firmware": "1.2.1"}
        assert (got["delta"], got["reported_version"]) == ({}, 2)
        wait_for(lambda: gw.output().count("reported state of") == 2, timeout=10)
        assert "no device 'nobody'" in gw.output()

        # a change made while the gateway is down is published once it is back (from the store)
        assert gw.stop() == 0, gw.output()
        status, body, _ = api.call("PATCH", "/api/v1/devices/pump-7/desired", {"mode": None})
        assert status == 200, body
        gw = mqtt_gateway(tmp_path, bus, mosquitto, postgres_url)
        assert live.next(timeout=15)[1] == {
            "device_id": "pump-7",
            "version": 2,
            "desired": {"interval_s": 10},
        }
    finally:
        assert gw.stop() == 0, gw.output()
        assert api.stop() == 0, api.output()
        assert worker.stop() == 0, worker.output()
