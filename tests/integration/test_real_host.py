"""``--real-host`` end to end: this machine shows up among the devices with its real load and memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psutil
import pytest

from fleetstream.simulator.cli import simulate
from fleetstream.simulator.realhost import host_device_id

from ._support import ServerProcess, query, wait_for

pytestmark = pytest.mark.integration


def listed(srv: ServerProcess, device_id: str) -> dict[str, Any] | None:
    status, body = srv.call("GET", query("/api/v1/devices", limit=1000))
    assert status == 200, body
    return next((d for d in body["devices"] if d["device_id"] == device_id), None)


def assert_real_readings(srv: ServerProcess, device_id: str) -> None:
    status, twin = srv.call("GET", f"/api/v1/devices/{device_id}")
    assert status == 200, twin
    assert twin["device_type"] == "Host Monitor"
    sensors = twin["sensors"]
    assert 0.0 <= sensors["cpu_usage"]["value"] <= 100.0
    # Memory in use moves little in a few seconds: the server holds what psutil sees now.
    assert sensors["mem_usage"]["value"] == pytest.approx(psutil.virtual_memory().percent, abs=5.0)
    loads = sorted(name for name in sensors if name.startswith("load/"))
    assert loads == sorted(f"load/CPU Core #{i + 1}" for i in range(psutil.cpu_count()))
    temps = psutil.sensors_temperatures()
    assert ("temperature" in sensors) == any(temps.values())


def test_up_with_real_host_lists_this_machine_with_its_cpu_and_memory(
    start: Callable[..., ServerProcess],
) -> None:
    srv = start("--simulator", "--devices", "0", "--real-host")
    device_id = host_device_id()
    wait_for(lambda: listed(srv, device_id), timeout=15)
    assert_real_readings(srv, device_id)


def test_simulate_with_real_host_sends_this_machine_beside_the_fleet(
    start: Callable[..., ServerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    srv = start()
    code = simulate(devices=3, rate=1.0, target=srv.url, duration=2.5, seed=1, batch=100, real_host=True)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    device_id = host_device_id()
    assert f"(+ {device_id}, this machine)" in out
    wait_for(lambda: listed(srv, device_id), timeout=10)
    assert_real_readings(srv, device_id)
    assert wait_for(lambda: listed(srv, "thermostat-0001"))
