"""Windows, late data and twins over HTTP, on a real server: the worked example of docs/stream.md,
the live streams, the devices API and its errors, and a clean restart that keeps it all."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from ._support import ServerProcess, query, sse_frames, stop_cleanly, wait_for

pytestmark = pytest.mark.integration

DAY = "2024-06-01T12:00"


def at(second: int) -> str:
    return f"{DAY}:{second:02d}Z" if second < 60 else f"2024-06-01T12:{second // 60:02d}:{second % 60:02d}Z"


def reading(device: str, second: int, value: float, sensor: str = "temperature") -> dict[str, Any]:
    return {"device_id": device, "timestamp": at(second), "sensor": sensor, "value": value}


def post(srv: ServerProcess, body: Any) -> None:
    status, answer = srv.call("POST", "/api/v1/telemetry", body)
    assert status == 202, answer


def windows(srv: ServerProcess, **params: Any) -> list[dict[str, Any]]:
    params = {"from_": at(0), "to": "2024-06-01T13:00:00Z", **params}
    status, body = srv.call("GET", query("/api/v1/windows", **params))
    assert status == 200, body
    found: list[dict[str, Any]] = body["windows"]
    return found


def flushed(srv: ServerProcess, check: Callable[[], Any]) -> Any:
    """Windows and events are stored every flush (0.1 s here): poll until ``check`` holds."""
    return wait_for(check, timeout=10, interval=0.05)


@pytest.fixture
def srv(start: Callable[..., ServerProcess]) -> ServerProcess:
    return start(
        env={
            "FLEETSTREAM_ENGINE__FLUSH_INTERVAL_S": "0.1",
            "FLEETSTREAM_ENGINE__CHECKPOINT_INTERVAL_S": "0.2",
        }
    )


def test_the_worked_example_of_the_docs(srv: ServerProcess, start: Callable[..., ServerProcess]) -> None:
    post(srv, [reading("t1", 7, 22.0), reading("t1", 2, 20.0)])
    post(srv, reading("t1", 4, 21.0))
    post(srv, reading("t1", 16, 23.0))  # the watermark (12:00:11) passes 12:00:10: the window closes
    first = flushed(srv, lambda: windows(srv, sensor="temperature", size="10s", to=at(10)))
    assert [(w["start"], w["count"], w["mean"], w["version"]) for w in first] == [(at(0), 3, 21.0, 1)]
    assert (first[0]["min"], first[0]["max"], first[0]["first"], first[0]["last"]) == (20.0, 22.0, 20.0, 22.0)
    assert first[0]["stddev"] == pytest.approx(statistics.stdev([20.0, 21.0, 22.0]))

    post(srv, reading("t1", 5, 25.0))  # late, within the lateness: version 2
    post(srv, reading("t1", 5, 25.0))  # a re-send: nothing changes
    second = flushed(
        srv,
        lambda: [w for w in windows(srv, sensor="temperature", size="10s", to=at(10)) if w["version"] == 2],
    )
    # p99 is the "lower" quantile (numpy method="lower"): of 20, 21, 22, 25 it is 22, within 1%.
    assert (second[0]["count"], second[0]["max"]) == (4, 25.0)
    assert second[0]["p99"] == pytest.approx(22.0, rel=0.01)

    post(srv, reading("t1", 50, 22.0))  # the watermark (12:00:45) is past 12:00:10 + 30 s
    post(srv, reading("t1", 3, 30.0))  # late for its 10 s window, in time for its 1 min window
    status, live = srv.call("GET", query("/api/v1/stats/live", sensor="temperature"))
    assert (status, live["sensors"]["temperature"]["late"]) == (200, 1)
    assert windows(srv, sensor="temperature", size="10s", to=at(10))[0]["count"] == 4
    device_windows = flushed(
        srv,
        lambda: [
            w for w in windows(srv, sensor="temperature", size="10s", device_id="t1") if w["start"] > at(0)
        ],
    ) and windows(srv, sensor="temperature", size="10s", device_id="t1")
    assert [(w["start"], w["count"]) for w in device_windows] == [(at(0), 4), (at(10), 1)]
    assert 'fleetstream_late_readings_total{sensor="temperature"} 1' in srv.call("GET", "/metrics")[1]

    # A clean restart keeps windows, the late count, the twin and its events; the idle rule then
    # closes the 1 min window (with the reading that was late for 10 s).
    stop_cleanly(srv)
    again = start(
        data=srv.data,
        env={"FLEETSTREAM_STREAM__IDLE_TIMEOUT_S": "1", "FLEETSTREAM_ENGINE__FLUSH_INTERVAL_S": "0.1"},
    )
    assert (
        again.call("GET", query("/api/v1/stats/live", sensor="temperature"))[1]["sensors"]["temperature"][
            "late"
        ]
        == 1
    )
    minute = flushed(again, lambda: windows(again, sensor="temperature", size="1m"))
    assert [(w["count"], w["max"]) for w in minute] == [(7, 30.0)]
    status, twin = again.call("GET", "/api/v1/devices/t1")
    assert status == 200
    assert twin["sensors"]["temperature"] == {"value": 22.0, "ts": at(50)}
    assert twin["readings"] == 7


@contextlib.contextmanager
def sse(client: httpx.Client, url: str) -> Iterator[Iterator[dict[str, Any]]]:
    with client.stream("GET", url) as response:
        assert response.status_code == 200
        frames = sse_frames(response.iter_raw())
        assert next(frames)["comments"] == ["connected"]
        yield (f for f in frames if f["data"] is not None)


def test_window_and_device_event_streams(srv: ServerProcess) -> None:
    with httpx.Client(timeout=10) as client:
        with sse(client, srv.url + query("/api/v1/stream/windows", sensor="humidity", size="10s")) as fleet:
            post(srv, [reading("h1", 1, 40.0, "humidity"), reading("h2", 2, 42.0, "humidity")])
            post(srv, reading("h1", 20, 41.0, "humidity"))
            frame = next(fleet)
        assert frame["event"] == "window"
        assert (frame["data"]["device_id"], frame["data"]["count"], frame["data"]["mean"]) == (None, 2, 41.0)

        with sse(client, srv.url + query("/api/v1/stream/windows", sensor="humidity", device_id="*")) as each:
            post(srv, reading("h1", 40, 45.0, "humidity"))
            got = {(next(each)["data"]["device_id"]) for _ in range(1)}
        assert got == {"h1"}  # the device's own window, not the fleet's

        with sse(client, srv.url + query("/api/v1/stream/events", device_id="e1")) as events:
            post(srv, [reading("other", 41, 1.0), reading("e1", 41, 1.0)])
            kinds = [next(events)["data"]["type"] for _ in range(2)]
        assert kinds == ["registered", "status_changed"]


def test_devices_list_twin_etag_history_and_errors(start: Callable[..., ServerProcess]) -> None:
    srv = start(env={"FLEETSTREAM_ENGINE__FLUSH_INTERVAL_S": "0.1"})  # checkpoints every 5 s, as by default
    post(
        srv,
        [
            {"device_id": f"b{i}", "timestamp": at(i), "pressure": 1000 + i, "tag": "Barometer"}
            for i in range(5)
        ],
    )
    post(srv, {"device_id": "pc-1", "type": "startup", "ts": at(1)})
    post(
        srv,
        {"device_id": "pc-1", "type": "heartbeat", "ts": at(2), "event": {"cpu_usage": 5, "mem_usage": 6}},
    )
    post(srv, [reading("b0", 30, 990.0, "pressure"), reading("b0", 10, 1.0, "pressure")])  # an older one last

    def listed() -> Any:
        status, body = srv.call("GET", query("/api/v1/devices", type="barometer", limit=2, offset=1))
        return body if status == 200 and body["total"] == 5 else None

    page = listed()  # at once: devices first heard since the last checkpoint are listed too
    assert [d["device_id"] for d in page["devices"]] == ["b1", "b2"]
    status, twin = srv.call("GET", "/api/v1/devices/b0")
    assert status == 200
    assert twin["sensors"]["pressure"] == {"value": 990.0, "ts": at(30)}  # the newest event time wins
    assert (twin["device_type"], twin["status"], twin["readings"]) == ("Barometer", "online", 3)

    response = httpx.get(f"{srv.url}/api/v1/devices/b0")
    etag = response.headers["etag"]
    assert httpx.get(f"{srv.url}/api/v1/devices/b0", headers={"If-None-Match": etag}).status_code == 304
    post(srv, reading("b0", 31, 991.0, "pressure"))
    assert httpx.get(f"{srv.url}/api/v1/devices/b0", headers={"If-None-Match": etag}).status_code == 200

    status, then = srv.call("GET", query("/api/v1/devices/b0", as_of=at(5)))
    assert status == 200
    assert then["sensors"]["pressure"] == {"value": 1000.0, "ts": at(0)}
    assert then["readings"] == 1

    def history() -> Any:
        status, body = srv.call("GET", query("/api/v1/devices/pc-1/events", limit=2))
        return body if status == 200 and len(body["events"]) == 2 else None

    first = flushed(srv, history)
    assert [e["type"] for e in first["events"]] == ["registered", "startup"]
    status, rest = srv.call("GET", query("/api/v1/devices/pc-1/events", after_seq=first["next_after_seq"]))
    assert [e["type"] for e in rest["events"]] == ["status_changed", "heartbeat"]
    assert rest["events"][1]["payload"] == {"cpu_usage": 5.0, "mem_usage": 6.0}
    assert rest["next_after_seq"] is None

    assert srv.call("GET", "/api/v1/devices/never-seen")[0] == 404
    assert srv.call("GET", "/api/v1/devices/a%20b")[0] == 422
    assert srv.call("GET", query("/api/v1/devices", status="sleeping"))[0] == 400
    assert srv.call("GET", query("/api/v1/devices", limit=0))[0] == 422
    assert srv.call("GET", query("/api/v1/devices/b0", as_of="yesterday"))[0] == 400
    assert srv.call("GET", query("/api/v1/devices/b0", as_of="2020-01-01T00:00:00Z"))[0] == 404
    status, body = srv.call("GET", query("/api/v1/windows", size="7s"))
    assert status == 400
    assert "the sizes are 10s, 1m" in body["error"]["message"]
