"""The simulator over real HTTP: a tiny receiver on 127.0.0.1 records what arrives and answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from fleetstream.domain.clock import SystemClock
from fleetstream.errors import Overloaded
from fleetstream.ingest.decode import decode_body
from fleetstream.ingest.formats import DecodeContext
from fleetstream.simulator import DeliveryFailed, HttpTransport, Simulator
from fleetstream.simulator.cli import simulate

from ..servers import free_port
from ._support import ServerProcess, query, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """An HTTP/1.1 server (keep-alive, Content-Length bodies) answering ``script`` first, then ``status``."""

    script: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    status: int = 202
    answer: bytes = b"{}"
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accepted(self) -> list[bytes]:
        return [r.body for r in self.requests if r.status == 202]

    async def serve(self, ready: threading.Event, stop: asyncio.Event) -> None:
        writers: set[asyncio.StreamWriter] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.add(writer)
            try:
                while line := await reader.readline():
                    method, path, _ = line.decode().split(" ", 2)
                    headers: dict[str, str] = {}
                    while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                        name, _, value = header.decode().partition(":")
                        headers[name.strip().lower()] = value.strip()
                    body = await reader.readexactly(int(headers.get("content-length", "0")))
                    status, extra, answer = (
                        self.script.pop(0) if self.script else (self.status, {}, self.answer)
                    )
                    self.requests.append(Request(method, path, headers, body, status))
                    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(answer)}"]
                    head += [f"{k}: {v}" for k, v in extra.items()]
                    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + answer)
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writers.discard(writer)
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await stop.wait()
            server.close()
            for writer in list(writers):
                writer.close()
            await asyncio.sleep(0.05)


@contextlib.contextmanager
def receiver(
    *script: tuple[int, dict[str, str], bytes], status: int = 202, answer: bytes = b"{}"
) -> Iterator[Receiver]:
    """A receiver in a thread of its own (so a caller may run its own event loop), stopped at the end."""
    rx = Receiver(list(script), status, answer)
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(rx.serve(ready, stop),), daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "the receiver did not start"
        yield rx
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def decoded_items(bodies: list[bytes]) -> list[dict[str, object]]:
    """Every item of the bodies, after checking the server's decoder accepts each one."""
    items: list[dict[str, object]] = []
    ctx = DecodeContext(SystemClock().now_us(), 0)
    for body in bodies:
        decoded = decode_body(body, "json", ctx, max_items=10_000)
        assert decoded.rejected == []
        assert len(decoded.messages) == decoded.items
        items.extend(msgspec.json.decode(body))
    return items


def test_a_fleet_over_http_is_received_whole_and_a_503_is_retried() -> None:
    with receiver((503, {"Retry-After": "0"}, b'{"error": {"code": "overloaded"}}')) as rx:
        transport = HttpTransport(rx.url, backoff_s=0.01)
        sim = Simulator(50, 5.0, 7, SystemClock(), transport, batch_size=100)
        asyncio.run(sim.run(1.0))

    assert {(r.method, r.path) for r in rx.requests} == {("POST", "/api/v1/telemetry")}
    assert {r.headers["content-type"] for r in rx.requests} == {"application/json"}
    first = rx.requests[0]
    assert first.status == 503
    assert [r.status for r in rx.requests if r.body == first.body] == [503, 202]  # the same batch again
    items = decoded_items(rx.accepted())
    assert all(len(msgspec.json.decode(body)) <= 100 for body in rx.accepted())
    assert (sim.errors, sim.dropped) == (0, 0)
    assert sim.sent == sim.acknowledged == sim.generated == len(items)
    assert len({(m["device_id"], m["msg_id"]) for m in items}) == len(items)
    # 40 typed devices at 5/s, 10 hosts: startup, temperature every 0.6 s, heartbeat every 3 s
    assert 100 <= len(items) <= 300


def test_a_client_error_fails_the_batch_without_retry_and_is_explained_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fleetstream.simulator")
    with receiver(status=401, answer=b'{"error": {"code": "unauthorized", "message": "no token"}}') as rx:
        transport = HttpTransport(rx.url, backoff_s=0.01)
        sim = Simulator(10, 5.0, 1, SystemClock(), transport, kinds={"thermostat": 1})
        asyncio.run(sim.run(1.2))  # fails at ~0.1 s, backs off 0.5 s, fails again, backs off 1 s

    bodies = [r.body for r in rx.requests]
    assert len(bodies) >= 2
    assert len(bodies) == len(set(bodies))  # nothing was sent twice
    assert sim.errors == sim.sent == sum(len(msgspec.json.decode(b)) for b in bodies)
    assert sim.acknowledged == 0
    explained = [r for r in caplog.records if "no token" in r.getMessage()]
    assert len(explained) == 1


def test_an_unreachable_or_overloaded_target_is_retried_then_counted_not_raised() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]

    async def unreachable() -> Simulator:
        transport = HttpTransport(f"http://127.0.0.1:{closed_port}", max_retries=2, backoff_s=0.01)
        await transport.start()
        try:
            with pytest.raises(DeliveryFailed, match="3 attempts"):
                await transport.send([{"device_id": "a", "seq": 0}])
        finally:
            await transport.close()
        fast = HttpTransport(f"http://127.0.0.1:{closed_port}", max_retries=2, backoff_s=0.01)
        sim = Simulator(10, 5.0, 1, SystemClock(), fast)
        await sim.run(0.3)
        return sim

    sim = asyncio.run(unreachable())
    assert sim.acknowledged == 0
    assert sim.errors + sim.dropped == sim.generated > 0

    async def overloaded(url: str) -> None:
        transport = HttpTransport(url, max_retries=1)
        await transport.start()
        try:
            with pytest.raises(Overloaded):
                await transport.send([{"device_id": "a", "seq": 0}])
        finally:
            await transport.close()

    with receiver(status=429) as rx:
        asyncio.run(overloaded(rx.url))
    assert [r.status for r in rx.requests] == [429, 429]


def test_simulate_runs_against_a_target_and_prints_progress_and_a_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with receiver() as rx:
        code = simulate(devices=20, rate=5.0, target=rx.url, duration=5.5, seed=1, batch=50)
    out = capsys.readouterr().out
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("simulating 20 devices")
    assert "sent " in lines[1]  # the plain progress line, every 5 s when not a terminal
    assert "errors 0" in lines[1]
    assert lines[-1].startswith("done after")
    items = decoded_items(rx.accepted())
    assert f"acknowledged {len(items):,}," in lines[-1]


def test_the_truth_file_matches_what_a_real_server_stored_in_each_window(
    start: Callable[..., ServerProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srv = start()
    path = tmp_path / "truth.json"
    knobs = {"jitter": "300ms", "duplicates": 0.2, "late": 0.05, "late_delay": "1s", "clock_skew": "1s"}
    code = simulate(
        devices=30, rate=4.0, target=srv.url, duration=3.0, seed=11, batch=100, truth=path, **knobs
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "warning: --late-delay 1 s may be too short" in err
    doc = json.loads(path.read_text())
    counters = doc["counters"]
    assert doc["complete"]
    assert doc["seed"] == 11
    assert counters["duplicates_sent"] > 0
    assert counters["late_sent"] > 0
    summary = out.strip().splitlines()[-1]
    assert f"duplicates {counters['duplicates_sent']:,}, late {counters['late_sent']:,}" in summary
    # This server keeps every distinct reading, late ones included, and drops the second copies:
    # each window's stored count is the truth's count.
    for w in doc["windows"]:
        status, body = srv.call(
            "GET",
            query(
                "/api/v1/metrics",
                sensor=w["sensor"],
                agg="count",
                from_=w["window_start"],
                to=w["window_end"],
            ),
        )
        assert status == 200, body
        assert body["metrics"][w["sensor"]]["count"] == w["count"], w
    assert sum(w["count"] for w in doc["windows"]) == doc["totals"]["readings"] > 0


def test_window_counts_equal_what_the_simulator_sent_once_and_late_readings_are_counted(
    start: Callable[..., ServerProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's check, on a small scale: duplicates, jitter and held-back messages against a real
    server's windows. Short windows and lateness so held messages really arrive late."""
    srv = start(
        "--window",
        "1s",
        "--out-of-orderness",
        "0.5",
        "--allowed-lateness",
        "1",
        env={"FLEETSTREAM_STREAM__IDLE_TIMEOUT_S": "1"},
    )
    path = tmp_path / "truth.json"
    knobs = {"jitter": "300ms", "duplicates": 0.1, "late": 0.05, "late_delay": "3.5s"}
    code = simulate(
        devices=20,
        rate=4.0,
        target=srv.url,
        duration=8.0,
        seed=5,
        batch=100,
        truth=path,
        truth_window=1.0,
        **knobs,
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    doc = json.loads(path.read_text())
    assert doc["counters"]["duplicates_sent"] > 0
    late_sent = doc["counters"]["late_sent"]
    assert late_sent > 0

    def closed() -> bool:  # the idle rule closes the last windows a second after the run
        status, body = srv.call("GET", "/api/v1/stats/live")
        last = max(w["window_end"] for w in doc["windows"])
        return status == 200 and body["watermark"] is not None and body["watermark"] >= last

    wait_for(closed, timeout=15, interval=0.2)
    time.sleep(1.5)  # one more flush
    for w in doc["windows"]:
        status, body = srv.call(
            "GET",
            query(
                "/api/v1/windows", sensor=w["sensor"], size="1s", from_=w["window_start"], to=w["window_end"]
            ),
        )
        assert status == 200, body
        stored = body["windows"][0]["count"] if body["windows"] else 0
        assert stored == w["on_time"], w
    status, live = srv.call("GET", "/api/v1/stats/live")
    assert sum(s["late"] for s in live["sensors"].values()) == doc["totals"]["late_readings"] > 0


def test_trackers_hosts_and_the_failures_file_against_a_real_server(
    start: Callable[..., ServerProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srv = start()
    path = tmp_path / "failures.jsonl"
    code = simulate(
        devices=12,
        rate=2.0,
        target=srv.url,
        duration=3.0,
        seed=4,
        batch=100,
        kinds="tracker,host",
        failure_rate=3600.0,  # about one degradation per device-second: some in a short run
        failures=path,
        region="52.30,4.75,52.42,5.00",
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows
    assert {r["type"] for r in rows} <= {"Tracker", "Host Monitor"}
    assert all(r["degraded_at"] and r["failed_at"] is None for r in rows)  # failing takes minutes
    assert f"failures: {len(rows)} degraded, 0 failed" in out
    for sensor, low, high in (("latitude", 52.30, 52.42), ("longitude", 4.75, 5.00), ("fan_rpm", 0, 5000)):
        status, body = srv.call("GET", query("/api/v1/metrics", sensor=sensor, agg="min,max,count"))
        assert status == 200, body
        stats = body["metrics"][sensor]
        assert stats["count"] > 0
        assert low <= stats["min"] <= stats["max"] <= high, (sensor, stats)


def test_the_duration_bounds_a_run_whose_target_does_not_answer(capsys: pytest.CaptureFixture[str]) -> None:
    """Retries against a closed port stop at the end of --duration (plus the last batches' second),
    and the summary says what was not delivered."""
    target = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    code = simulate(devices=5, rate=1.0, target=target, duration=2.0, seed=3, batch=1)
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 1  # not everything was delivered
    assert elapsed < 2.0 + 1.0 + 1.0, elapsed  # the duration, the last batches' second, start-up
    summary = out.strip().splitlines()[-1]
    sent = int(summary.split("sent ")[1].split(",")[0])
    errors = int(summary.split("errors ")[1].split(",")[0])
    dropped = int(summary.split("dropped ")[1].split(";")[0])
    assert "acknowledged 0," in summary
    assert sent == errors > 0  # every batch sent failed or was cancelled at the end
    assert errors + dropped >= 10  # about 5 devices x 2 s generated, none of them delivered
