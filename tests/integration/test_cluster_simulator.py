"""Cluster mode, the built-in simulator: ``fleetstream up --bus kafka://... --store postgresql://...``
runs it, sending through the process's gateway to Kafka; its control API and the devices' shadow
(desired ``interval_s``, through the worker) work as embedded. A standalone ``fleetstream api``
answers its control writes 501, naming ``fleetstream simulate --target``."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from ..servers import Tansu
from ._support import wait_for
from .test_cluster import Proc, start_gateway

pytestmark = [pytest.mark.integration, pytest.mark.slow]

pytest.importorskip("psycopg")
pytest.importorskip("confluent_kafka")


def _twin(proc: Proc, device: str) -> dict[str, Any] | None:
    status, twin, _ = proc.call("GET", f"/api/v1/devices/{device}")
    return twin if status == 200 else None


def test_up_on_kafka_runs_the_simulator_and_a_standalone_api_refuses_its_writes(
    tmp_path: Path, postgres_url: str, module_tansu: Tansu
) -> None:
    bus = f"kafka://{module_tansu.bootstrap}/readings-{uuid.uuid4().hex[:8]}?partitions=2"
    up = start_gateway(
        tmp_path,
        bus,
        "up",
        "--store",
        postgres_url,
        "--no-table",
        "--devices",
        "3",
        "--rate",
        "2",
        "--seed",
        "7",
    )
    api = start_gateway(tmp_path, bus, "api", "--store", postgres_url)
    try:
        status, sim, _ = up.call("GET", "/api/v1/simulator")
        assert (status, sim["running"], sim["devices"]) == (200, True, 3)
        _, listing, _ = up.call("GET", "/api/v1/simulator/devices")
        first = listing["devices"][0]["id"]
        # its messages went gateway → Kafka → worker → PostgreSQL: every process sees the twin
        wait_for(lambda: _twin(up, first), timeout=30, interval=0.2)
        wait_for(lambda: _twin(api, first), timeout=10, interval=0.2)

        status, added, _ = up.call("POST", "/api/v1/simulator/devices", {"kind": "barometer", "count": 1})
        assert (status, added["devices"]) == (201, 4)
        (new,) = added["added"]
        wait_for(lambda: _twin(up, new), timeout=30, interval=0.2)

        # the shadow: a desired interval reaches the device through the worker's event, and the
        # interval it then reports travels back to the worker as a shadow update
        status, body, _ = up.call("PATCH", f"/api/v1/devices/{new}/desired", {"interval_s": 0.25})
        assert (status, body["delta"]) == (200, {"interval_s": 0.25})
        shadow = wait_for(
            lambda: (t := _twin(up, new)) and t["shadow"]["reported"] == {"interval_s": 0.25} and t["shadow"],
            timeout=20,
            interval=0.2,
        )
        assert shadow["delta"] == {}
        _, listing, _ = up.call("GET", "/api/v1/simulator/devices?kind=barometer")
        assert next(d for d in listing["devices"] if d["id"] == new)["rate"] == pytest.approx(4.0)

        status, sim, _ = up.call("POST", "/api/v1/simulator/stop")
        assert (status, sim["running"]) == (200, False)
        assert sim["counters"]["acknowledged"] > 0
        assert sim["counters"]["errors"] == 0

        # a standalone api runs no simulator: its writes say what to run instead
        status, body, _ = api.call("POST", "/api/v1/simulator/start")
        assert status == 501
        assert body["error"]["code"] == "not_implemented"
        assert "fleetstream simulate --target http://GATEWAY_HOST:PORT" in body["error"]["message"]
        status, body, _ = api.call("GET", "/api/v1/simulator")
        assert status == 404
    finally:
        codes = [up.stop(), api.stop()]
    assert codes == [0, 0], (up.output(), api.output())
