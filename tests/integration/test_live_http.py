"""Live streams over real HTTP: SSE of readings, the per-device message stream, and a stalled client.

Streams are read with bounded time: every read has a timeout, and "nothing else arrived" is shown
by posting a sentinel afterwards and checking it is the very next item.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ._support import (
    DEVICE_ID_RULE,
    ServerProcess,
    at,
    ndjson_lines,
    path_segment,
    prometheus,
    query,
    reading,
    sse_frames,
    wait_for,
)

pytestmark = pytest.mark.integration

TIMEOUT = httpx.Timeout(10.0, read=5.0)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as c:
        yield c


def _post(srv: ServerProcess, batch: Any) -> None:
    status, body = srv.call("POST", "/api/v1/telemetry", batch)
    assert status == 202, body


def _until(items: Iterator[dict[str, Any]], last: Any, limit: int = 1000) -> list[dict[str, Any]]:
    """Items up to and including the first equal to ``last`` (read timeouts bound the wait)."""
    out = []
    for item in items:
        out.append(item)
        if item == last or len(out) >= limit:
            return out
    return out


def _row(
    device: str, seconds: float, sensor: str, value: float, unit: str | None, device_type: str
) -> dict[str, Any]:
    return {
        "device_id": device,
        "ts": at(seconds),
        "sensor": sensor,
        "value": value,
        "unit": unit,
        "device_type": device_type,
    }


@contextlib.contextmanager
def _sse(client: httpx.Client, srv: ServerProcess, **params: Any) -> Iterator[Iterator[dict[str, Any]]]:
    """``GET /api/v1/stream``: an iterator of `reading` payloads, once the subscription is live."""
    with client.stream("GET", srv.url + query("/api/v1/stream", **params)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = sse_frames(response.iter_raw())
        hello = next(frames)  # sent after subscribing: what is posted from now on is streamed
        assert (hello["retry"], hello["comments"], hello["data"]) == (2000, ["connected"], None)

        def readings() -> Iterator[dict[str, Any]]:
            for frame in frames:
                if frame["data"] is None:
                    continue  # keep-alive comment
                assert frame["event"] == "reading", frame
                yield frame["data"]

        yield readings()


# --- GET /api/v1/stream --------------------------------------------------------------------------


def test_stream_carries_exactly_the_readings_posted_after_connecting(
    shared_server: ServerProcess, client: httpx.Client, dev: str
) -> None:
    early = [reading(dev, 0, 1.0)]
    _post(shared_server, early)
    batch = [
        {"device_id": dev, "timestamp": at(1), "temperature": 21.5, "tag": "Thermostat"},
        {
            "device_id": dev,
            "type": "heartbeat",
            "ts": at(2),
            "event": {"cpu_usage": "79.12", "mem_usage": 10},
        },
        {"device_id": dev, "type": "startup", "ts": at(3)},  # no reading: nothing on this stream
        reading(dev, 4, 3.3, sensor="voltage", unit="V", device_type="Probe"),
        reading(dev, 5, "bad"),  # rejected: never streamed
    ]
    sentinel = _row(dev, 99, "end", 0.0, None, "Sensor")

    with _sse(client, shared_server, device_id=dev) as events:
        assert shared_server.call("POST", "/api/v1/telemetry", batch)[0] == 202
        _post(shared_server, early + batch[:4])  # re-sent: dropped by dedup, so not streamed again
        _post(shared_server, reading(dev, 99, 0.0, sensor="end"))
        got = _until(events, sentinel)

    assert got == [
        _row(dev, 1, "temperature", 21.5, "°C", "Thermostat"),
        _row(dev, 2, "cpu_usage", 79.12, "%", "Host Monitor"),
        _row(dev, 2, "mem_usage", 10.0, "%", "Host Monitor"),
        _row(dev, 4, "voltage", 3.3, "V", "Probe"),
        sentinel,
    ]


@pytest.mark.parametrize("devices", [["{a}", "{b}"], ["{a},{b}"]], ids=["repeated", "comma"])
def test_stream_device_filter(
    shared_server: ServerProcess, client: httpx.Client, dev: str, devices: list[str]
) -> None:
    a, b, c = f"{dev}-a", f"{dev}-b", f"{dev}-c"
    wanted = [d.format(a=a, b=b) for d in devices]
    sentinel = _row(a, 99, "end", 0.0, None, "Sensor")

    with _sse(client, shared_server, device_id=wanted) as events:
        _post(shared_server, [reading(c, 0, 0.5), reading(a, 1, 1.0), reading(c, 2, 2.0), reading(b, 3, 3.0)])
        _post(shared_server, reading(a, 99, 0.0, sensor="end"))
        got = _until(events, sentinel)

    assert [(e["device_id"], e["value"]) for e in got] == [(a, 1.0), (b, 3.0), (a, 0.0)]


def test_stream_sensor_filter_with_device_filter(
    shared_server: ServerProcess, client: httpx.Client, dev: str
) -> None:
    other = f"{dev}-other"
    sentinel = _row(dev, 99, "humidity", 0.0, "%", "Sensor")

    with _sse(client, shared_server, device_id=dev, sensor=["humidity", "pressure"]) as events:
        _post(
            shared_server,
            [
                reading(dev, 0, 20.0),
                {"device_id": dev, "timestamp": at(1), "humidity": 40, "tag": "Hygrometer"},
                {"device_id": other, "timestamp": at(2), "humidity": 41, "tag": "Hygrometer"},
                {"device_id": dev, "timestamp": at(3), "pressure": 1013.25, "tag": "Barometer"},
                {
                    "device_id": dev,
                    "type": "heartbeat",
                    "ts": at(4),
                    "event": {"cpu_usage": 1, "mem_usage": 2},
                },
            ],
        )
        _post(shared_server, reading(dev, 99, 0.0, sensor="humidity"))
        got = _until(events, sentinel)

    assert got == [
        _row(dev, 1, "humidity", 40.0, "%", "Hygrometer"),
        _row(dev, 3, "pressure", 1013.25, "hPa", "Barometer"),
        sentinel,
    ]


def test_stream_without_filter_gets_every_device(start: Any, client: httpx.Client) -> None:
    srv = start()
    sentinel = _row("z", 99, "end", 0.0, None, "Sensor")
    with _sse(client, srv) as events:
        _post(srv, [reading(f"d{i}", i, float(i)) for i in range(5)])
        _post(srv, reading("z", 99, 0.0, sensor="end"))
        got = _until(events, sentinel)

    assert [(e["device_id"], e["value"]) for e in got] == [(f"d{i}", float(i)) for i in range(5)] + [
        ("z", 0.0)
    ]


def test_closed_streams_leave_no_subscriber(start: Any, client: httpx.Client) -> None:
    srv = start()
    with _sse(client, srv), _sse(client, srv, device_id="x"):
        assert prometheus(srv)["fleetstream_live_subscribers"] == 2
    wait_for(lambda: prometheus(srv)["fleetstream_live_subscribers"] == 0, timeout=5)


# --- POST /api/devices/{id}/messages -------------------------------------------------------------


def _messages(dev: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Messages of ``dev`` (and one of another device), and the events a follower of ``dev`` gets."""
    sent = [
        {
            "device_id": dev,
            "type": "heartbeat",
            "ts": at(1),
            "event": {"cpu_usage": "79.12", "mem_usage": "10.75"},
        },
        {"device_id": f"{dev}-other", "timestamp": at(2), "temperature": 5.0, "tag": "Thermostat"},
        {"device_id": dev, "timestamp": at(3), "temperature": 21.5, "tag": "Thermostat"},
        {"device_id": dev, "type": "startup", "ts": at(4)},
        reading(dev, 5, 3.3, sensor="voltage"),
        {"device_id": dev, "type": "temperature", "ts": at(6), "event": {"temperature": 30}},
    ]
    events = [
        {"type": "heartbeat", "timestamp": at(1), "cpu_usage": 79.12, "mem_usage": 10.75},
        {"type": "telemetry", "timestamp": at(3), "device_type": "Thermostat", "temperature": 21.5},
        {"type": "startup", "timestamp": at(4)},
        {"type": "telemetry", "timestamp": at(5), "device_type": "Sensor", "voltage": 3.3},
        {"type": "temperature", "timestamp": at(6), "temperature": 30.0},
    ]
    return sent, [{"id": i, "event": e} for i, e in enumerate(events)]


@contextlib.contextmanager
def _follow(
    client: httpx.Client, srv: ServerProcess, device: str, *, sse: bool = False
) -> Iterator[Iterator[dict[str, Any]]]:
    headers = {"Accept": "text/event-stream"} if sse else {}
    with client.stream("POST", f"{srv.url}/api/devices/{device}/messages", headers=headers) as response:
        assert response.status_code == 200
        if not sse:
            # The headers come once the subscription is live.
            assert response.headers["content-type"] == "application/x-ndjson"
            yield ndjson_lines(response.iter_raw())
            return
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = sse_frames(response.iter_raw())
        hello = next(frames)
        assert (hello["retry"], hello["comments"]) == (2000, [f"following {device}"])
        yield (f["data"] for f in frames if f["data"] is not None and f["event"] is None)


def test_follow_device_one_line_per_message(
    shared_server: ServerProcess, client: httpx.Client, dev: str
) -> None:
    sent, expected = _messages(dev)
    _post(shared_server, reading(dev, 0, 1.0))  # before following: not in the stream

    with _follow(client, shared_server, dev) as lines:
        _post(shared_server, sent)
        got = _until(lines, expected[-1])

    assert got == expected


def test_three_followers_each_get_every_message(
    shared_server: ServerProcess, client: httpx.Client, dev: str
) -> None:
    """Seed 000's server split messages between clients; here each client gets all of them."""
    sent, expected = _messages(dev)
    with contextlib.ExitStack() as stack:
        followers = [stack.enter_context(_follow(client, shared_server, dev)) for _ in range(3)]
        for message in sent:  # one request per message: arrival order is send order
            _post(shared_server, message)
        got = [_until(lines, expected[-1]) for lines in followers]

    assert got == [expected, expected, expected]


def test_follow_a_device_not_seen_yet(shared_server: ServerProcess, client: httpx.Client, dev: str) -> None:
    newcomer = f"{dev}-newcomer!@x"
    assert shared_server.call("GET", query("/api/v1/stats/live", device_id=newcomer))[1]["devices"] == {}

    with _follow(client, shared_server, newcomer) as lines:
        _post(shared_server, {"device_id": newcomer, "timestamp": at(0), "humidity": 55, "tag": "Hygrometer"})
        got = next(lines)

    assert got == {
        "id": 0,
        "event": {"type": "telemetry", "timestamp": at(0), "device_type": "Hygrometer", "humidity": 55.0},
    }


def test_follow_as_server_sent_events(shared_server: ServerProcess, client: httpx.Client, dev: str) -> None:
    sent, expected = _messages(dev)
    with _follow(client, shared_server, dev, sse=True) as events:
        _post(shared_server, sent)
        got = _until(events, expected[-1])

    assert got == expected


@pytest.mark.parametrize("bad", ["a b", "x" * 129, "dev#1", "a/b"])
def test_follow_bad_device_id_is_422(shared_server: ServerProcess, client: httpx.Client, bad: str) -> None:
    response = client.post(f"{shared_server.url}/api/devices/{path_segment(bad)}/messages")

    assert response.status_code == 422
    assert (
        response.json()["error"]["message"]
        == f'device_id: "{bad}" is not a valid device id ({DEVICE_ID_RULE})'
    )


# --- a stalled client ----------------------------------------------------------------------------

LONG = "s" * 120  # long sensor and device names: large frames fill the socket buffers sooner


def test_stalled_stream_client_does_not_slow_ingest(start: Any) -> None:
    """A client that opens the stream and never reads: posts still get 202 promptly, and the stream
    skips (and says so) instead of buffering without bound."""
    srv = start()
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.settimeout(5)
    try:
        stalled.connect(("127.0.0.1", srv.port))
        stalled.sendall(
            b"GET /api/v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        )
        wait_for(lambda: prometheus(srv)["fleetstream_live_subscribers"] == 1, timeout=5)

        slowest = 0.0
        posted = 0
        for n in range(40):
            batch = [
                {"device_id": f"D{LONG}", "timestamp": at(n * 1000 + i), "sensor": LONG, "value": float(i)}
                for i in range(500)
            ]
            began = time.monotonic()
            status, body = srv.call("POST", "/api/v1/telemetry", batch, timeout=5)
            slowest = max(slowest, time.monotonic() - began)
            assert (status, body) == (202, {"accepted": 500, "rejected": []})
            posted += 500
        assert slowest < 2.0, f"a post took {slowest:.2f} s with a stalled stream client connected"
        assert prometheus(srv)["fleetstream_readings_total"] == posted

        # Now read what the stalled client was sent: not all 20,000 readings, and a `skipped` notice.
        received = b""
        stalled.settimeout(0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = stalled.recv(1 << 16)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
    finally:
        stalled.close()

    frames = received.count(b"event: reading\n")
    skipped = [json.loads(line[6:]) for line in received.split(b"\n") if line.startswith(b'data: {"skipped"')]
    assert 0 < frames < posted
    assert skipped
    assert all(s["skipped"] > 0 for s in skipped)


def test_open_streams_do_not_hold_up_ctrl_c(start: Any, client: httpx.Client) -> None:
    """Shutdown ends live streams at once (else uvicorn waits for them), then stores and exits."""
    srv = start()
    with _sse(client, srv) as events, _follow(client, srv, "dev-1") as lines:
        _post(srv, reading("dev-1", 0, 1.0))
        assert next(events)["value"] == 1.0
        assert next(lines)["id"] == 0
        began = time.monotonic()
        code = srv.stop("int")
        took = time.monotonic() - began
        rest_events, rest_lines = list(events), list(lines)  # both end: no read timeout

    assert code == 0, srv.output()
    assert took < 3, f"stopping took {took:.1f} s with two open streams"
    assert (rest_events, rest_lines) == ([], [])
    assert "stopped cleanly at log position 1" in srv.output()
