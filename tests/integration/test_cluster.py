"""Cluster mode against real engines: ``fleetstream gateway`` across a broker restart, and a scale-out
run (a gateway and two workers as separate processes over Tansu and PostgreSQL, one worker SIGKILLed
mid-load) that must store what the embedded single-process run stores.

Tansu keeps its log in memory, so a restart empties it: the restart test checks the gateway
refuses (503, Retry-After) while the broker is down and acknowledges again once it is back, and
that what it acknowledged after the restart reaches a consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetstream.adapters.store.postgres_rollups import LEVELS

from ..servers import Mosquitto, Postgres, Tansu, free_port
from ._support import iso, read_db, sse_frames, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("confluent_kafka")

FLEETSTREAM = [sys.executable, "-m", "fleetstream"]
ENV = {
    "FLEETSTREAM_ENGINE__FLUSH_INTERVAL_S": "0.5",
    "FLEETSTREAM_ENGINE__CHECKPOINT_INTERVAL_S": "0.5",
    "FLEETSTREAM_STREAM__IDLE_TIMEOUT_S": "3",
    "FLEETSTREAM_INGEST__ACK_TIMEOUT_S": "3",
}


@dataclass
class Proc:
    """A fleetstream child process, its log in a file; stopped by PID."""

    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    @classmethod
    def run(cls, tmp: Path, *args: str, port: int = 0) -> Proc:
        log = tmp / f"{args[0]}-{uuid.uuid4().hex[:6]}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*FLEETSTREAM, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **ENV},
            )
        return cls(proc, log, port)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=data,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)

    def stop(self, kill: bool = False) -> int:
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def start_gateway(tmp: Path, bus: str, command: str = "gateway", *more: str) -> Proc:
    """A gateway (or, with ``command``, another HTTP process) once its /readyz answers 200."""
    port = free_port()
    gw = Proc.run(tmp, command, "--bus", bus, *more, "--port", str(port), port=port)

    def ready() -> bool:
        assert gw.proc.poll() is None, gw.output()
        try:
            return gw.call("GET", "/readyz")[0] == 200
        except OSError:
            return False

    wait_for(ready, timeout=30, interval=0.2)
    return gw


@pytest.fixture
def broker() -> Iterator[Tansu]:
    tansu = Tansu.launch()
    try:
        yield tansu
    finally:
        tansu.close()


def reading(device: str, second: int, value: float) -> dict[str, Any]:
    ts = iso(datetime(2024, 6, 1, tzinfo=UTC) + timedelta(seconds=second))
    return {"device_id": device, "timestamp": ts, "sensor": "t", "value": value}


def consumed(
    bootstrap: str, group: str, want: int, timeout: float, topic: str = "readings"
) -> set[tuple[str, int]]:
    """(device, ts) of the readings a fresh consumer group reads from the readings topic."""
    from fleetstream.adapters.bus.kafka import KafkaBus

    async def run() -> set[tuple[str, int]]:
        bus = KafkaBus(f"kafka://{bootstrap}/{topic}")
        await bus.start()
        seen: set[tuple[str, int]] = set()
        try:

            async def take() -> None:
                async for b in bus.subscribe("readings", group, 1000):
                    seen.update(zip(b.batch.device_id, b.batch.ts, strict=True))
                    await b.commit()
                    if len(seen) >= want:
                        return

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(take(), timeout)
        finally:
            await bus.close()
        return seen

    return asyncio.run(run())


def test_gateway_refuses_while_the_broker_is_down_and_resumes_after(tmp_path: Path, broker: Tansu) -> None:
    gw = start_gateway(tmp_path, f"kafka://{broker.bootstrap}?partitions=2")
    try:
        status, body, _ = gw.call("POST", "/api/v1/telemetry", [reading("g-1", 1, 1.0)])
        assert (status, body) == (202, {"accepted": 1, "rejected": []})

        broker.stop()
        status, body, headers = gw.call("POST", "/api/v1/telemetry", [reading("g-1", 2, 2.0)])
        assert status == 503
        assert body["error"]["code"] == "bus_unavailable"
        assert broker.bootstrap in body["error"]["message"]
        assert int(headers["retry-after"]) >= 1
        status, ready, _ = gw.call("GET", "/readyz")
        assert status == 503
        assert "unreachable" in ready["reason"]
        assert gw.proc.poll() is None  # refused, never crashed

        broker.start()
        acknowledged: set[tuple[str, int]] = set()
        base = 1_717_200_000_000_000  # 2024-06-01T00:00:00Z in µs

        def accepted() -> bool:
            status, _, _ = gw.call("POST", "/api/v1/telemetry", [reading("g-2", 10, 3.0)])
            return status == 202

        wait_for(accepted, timeout=30, interval=0.5)
        acknowledged.add(("g-2", base + 10_000_000))
        for second in range(11, 31):
            status, _, _ = gw.call("POST", "/api/v1/telemetry", [reading("g-2", second, float(second))])
            assert status == 202
            acknowledged.add(("g-2", base + second * 1_000_000))
        assert wait_for(lambda: gw.call("GET", "/readyz")[0] == 200, timeout=10, interval=0.2)
    finally:
        assert gw.stop() == 0, gw.output()
    # everything acknowledged since the restart is in the (fresh, in-memory) log
    assert consumed(broker.bootstrap, f"check-{uuid.uuid4().hex}", len(acknowledged), 30) >= acknowledged


# --- scale-out: gateway + two workers, one SIGKILLed, against the embedded run ----------------------

BASE = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
DEVICES = 8
SECONDS = 90
SIZES = {"10s": 10_000_000, "1m": 60_000_000}
SPAN = "from=2024-06-01T11:00:00Z&to=2024-06-01T13:00:00Z"


def make_load(seed: int = 11) -> list[list[dict[str, Any]]]:
    """Batches of messages: a reading a second per device, shuffled within 2 s, 2% 10-20 s late
    (within the lateness), 5% re-sent; two host monitors sending startup and heartbeat events."""
    rng = random.Random(seed)
    messages: list[tuple[float, dict[str, Any]]] = []
    for second in range(SECONDS):
        ts = iso(BASE + timedelta(seconds=second))
        for d in range(DEVICES):
            arrival = second + (rng.uniform(10, 20) if rng.random() < 0.02 else rng.uniform(0, 2))
            value = round(20 + 5 * rng.random(), 3)
            messages.append(
                (arrival, {"device_id": f"d-{d}", "timestamp": ts, "sensor": "temp", "value": value})
            )
            if d % 2 == 0:
                body = {"device_id": f"d-{d}", "timestamp": ts, "sensor": "hum", "value": second % 40}
                messages.append((arrival, body))
        for h in range(2):
            if second == 0:
                messages.append((0, {"device_id": f"h-{h}", "type": "startup", "ts": ts}))
            if second % 15 == 0:
                beat = {"cpu_usage": rng.uniform(1, 99), "mem_usage": rng.uniform(1, 99)}
                messages.append(
                    (
                        second + rng.uniform(0, 1),
                        {"device_id": f"h-{h}", "type": "heartbeat", "ts": ts, "event": beat},
                    )
                )
    resent = [(arrival + rng.uniform(1, 5), body) for arrival, body in messages if rng.random() < 0.05]
    ordered = [body for _, body in sorted(messages + resent, key=lambda pair: pair[0])]
    return [ordered[i : i + 30] for i in range(0, len(ordered), 30)]


QUERIES = {
    "readings": "SELECT device_id, sensor, {ts}, value FROM readings ORDER BY 1, 2, 3, 4",
    "windows": """SELECT sensor, device_id, size_us, {start}, count, sum, min, max, first, last,
                         p50, p95, p99 FROM windows WHERE device_id NOT LIKE '*%' ORDER BY 1, 2, 3, 4""",
    "twins": "SELECT device_id, device_type, status, {last_seen}, version, state FROM twins ORDER BY 1",
    "events": "SELECT device_id, seq, {ts}, type, payload FROM device_events ORDER BY 1, 2",
    "late": "SELECT device_id, sensor, {ts}, size_us FROM late_readings ORDER BY 1, 2, 3, 4",
}


def _normal(name: str, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    if name == "twins":  # JSON text: compare what it says, not how it is spelt
        states = [json.loads(row[-1]) for row in rows]
        for state in states:
            state.pop("position")  # each run numbers its log its own way
        return [(*row[:-1], state) for row, state in zip(rows, states, strict=True)]
    return rows


def outcome(url: str) -> dict[str, Any]:
    """What the cluster stored in PostgreSQL: readings, final device windows, twins and event logs
    (log positions left out: each run numbers its log its own way)."""
    names = {"ts": "ts", "start": "start", "last_seen": "last_seen"}
    with psycopg.connect(url) as con:
        return {n: _normal(n, con.execute(sql.format(**names)).fetchall()) for n, sql in QUERIES.items()}


def embedded_outcome(path: Path) -> dict[str, Any]:
    """The same of the embedded run's DuckDB file (times as µs, as PostgreSQL keeps them)."""
    names = {"ts": "epoch_us(ts)", "start": "epoch_us(start)", "last_seen": "epoch_us(last_seen)"}
    return {n: _normal(n, read_db(path, sql.format(**names))) for n, sql in QUERIES.items()}


def settled(url: str, quiet_s: float = 4.0, timeout: float = 60) -> dict[str, Any]:
    """The outcome once it has not changed for ``quiet_s`` (idle windows close on the wall clock)."""
    deadline = time.monotonic() + timeout
    last, since = outcome(url), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "the stored outcome kept changing"
        time.sleep(0.5)
        now = outcome(url)
        if now != last:
            last, since = now, time.monotonic()
    return last


class PacedSender(threading.Thread):
    """Posts the batches in order, ``pause_s`` apart; a batch without a 202 is re-sent until it has one."""

    def __init__(self, url: str, batches: list[list[dict[str, Any]]], pause_s: float) -> None:
        super().__init__(daemon=True)
        self.url, self.batches, self.pause_s = url, batches, pause_s
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(timeout=10) as client:
                for batch in self.batches:
                    deadline = time.monotonic() + 60
                    while client.post(f"{self.url}/api/v1/telemetry", json=batch).status_code != 202:
                        assert time.monotonic() < deadline, "a batch was not acknowledged within 60 s"
                        time.sleep(0.1)
                    self.done += 1
                    time.sleep(self.pause_s)
        except BaseException as exc:
            self.error = exc


class WindowWatcher(threading.Thread):
    """Collects the windows of an SSE stream (the newest version of each)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.windows: list[dict[str, Any]] = []

    def run(self) -> None:
        with contextlib.suppress(httpx.HTTPError), httpx.stream("GET", self.url, timeout=None) as resp:
            for frame in sse_frames(resp.iter_bytes()):
                if frame["event"] == "window":
                    self.windows += frame["data"] if isinstance(frame["data"], list) else [frame["data"]]


def _live_temp_count(api: Proc) -> int:
    status, body, _ = api.call("GET", "/api/v1/stats/live")
    return int(body["sensors"].get("temp", {}).get("count", 0)) if status == 200 else -1


def _size_us(size: str) -> int:
    return SIZES[size]


def took(worker: Proc) -> list[list[int]]:
    """The partition lists a worker logged taking, in order."""
    return [
        json.loads(line.split("took partitions ")[1])
        for line in worker.output().splitlines()
        if "took partitions " in line
    ]


def test_two_workers_one_killed_store_what_the_embedded_run_stores(
    tmp_path: Path, postgres_server: Postgres, module_tansu: Tansu
) -> None:
    batches = make_load()
    cluster_db = postgres_server.create_database()

    # The embedded single-process run of the same load.
    port = free_port()
    up = Proc.run(
        tmp_path,
        "up",
        "--no-simulator",
        "--no-table",
        "--port",
        str(port),
        "--data",
        str(tmp_path / "up"),
        port=port,
    )
    try:
        wait_for(lambda: _ready(up), timeout=30, interval=0.2)
        sender = PacedSender(f"http://127.0.0.1:{port}", batches, 0)
        sender.start()
        sender.join(120)
        assert sender.error is None
        wait_for(lambda: _watermark(up) > "2025", timeout=30, interval=0.2)  # idle windows closed
        time.sleep(1.5)  # one more flush and checkpoint
    finally:
        assert up.stop() == 0, up.output()
    expected = embedded_outcome(tmp_path / "up" / "fleetstream.duckdb")
    expected_fleet = {
        size: read_db(
            tmp_path / "up" / "fleetstream.duckdb",
            """SELECT sensor, epoch_us(start), count, sum, min, max, p50, p95, p99 FROM windows
               WHERE device_id = '*' AND size_us = ? ORDER BY 2, 1""",
            [us],
        )
        for size, us in SIZES.items()
    }

    # The cluster: a gateway, two workers; the first worker is SIGKILLed in the middle of the load.
    bus = f"kafka://{module_tansu.bootstrap}/readings-{uuid.uuid4().hex[:8]}?partitions=8"
    workers = [Proc.run(tmp_path, "worker", "--bus", bus, "--store", cluster_db) for _ in range(2)]
    gw = start_gateway(tmp_path, bus)
    api = start_gateway(tmp_path, bus, "api", "--store", cluster_db)
    try:
        wait_for(
            lambda: (
                all(took(w) for w in workers)
                and sorted(p for w in workers for p in took(w)[-1]) == list(range(8))
            ),
            timeout=60,
            interval=0.2,
        )
        watcher = WindowWatcher(f"http://127.0.0.1:{api.port}/api/v1/stream/windows?device_id=d-0")
        watcher.start()
        sender = PacedSender(f"http://127.0.0.1:{gw.port}", batches, 0.15)
        sender.start()
        wait_for(lambda: sender.done >= len(batches) // 2, timeout=60)
        victim, survivor = workers
        before = len(took(survivor))
        killed_at = time.monotonic()
        victim.stop(kill=True)
        wait_for(
            lambda: len(took(survivor)) > before and took(survivor)[-1] == list(range(8)),
            timeout=20,
            interval=0.1,
        )
        takeover_s = time.monotonic() - killed_at
        sender.join(120)
        assert sender.error is None
        assert sender.done == len(batches)
        got = settled(cluster_db)
        stored_temp = sum(1 for row in got["readings"] if row[1] == "temp")
        live = wait_for(lambda: _live_temp_count(api) == stored_temp, timeout=15, interval=0.3)
        fleet = {size: api.call("GET", f"/api/v1/windows?size={size}&{SPAN}")[1]["windows"] for size in SIZES}
        device = api.call("GET", f"/api/v1/windows?device_id=d-3&size=1m&{SPAN}")[1]["windows"]
        refused = api.call("POST", "/api/v1/simulator/start")
    finally:
        codes = [gw.stop(), api.stop(), *(w.stop() for w in workers)]
    assert codes[0] == 0, gw.output()
    assert codes[1] == 0, api.output()
    assert codes[3] == 0, workers[1].output()  # the survivor leaves the group cleanly
    # 3000/500 ms group timeouts (adapters/bus/kafka_group.py): measured 4.9-5.7 s on Tansu, restore included
    assert takeover_s < 7, takeover_s
    print(f"takeover after SIGKILL: {takeover_s:.1f} s")

    sent = {
        (b["device_id"], b["sensor"], b["timestamp"]) for batch in batches for b in batch if "sensor" in b
    }
    stored = [(device, sensor, ts) for device, sensor, ts, _ in got["readings"]]
    assert len(set(stored)) == len(stored)  # every acknowledged reading stored exactly once ...
    assert set(stored) >= {(d, s, _us(t)) for d, s, t in sent}  # ... and none missing
    assert got["readings"] == expected["readings"]
    assert got["windows"] == expected["windows"]
    assert len(expected["windows"]) > 0
    assert got["events"] == expected["events"]
    assert {e[3] for e in expected["events"]} >= {"registered", "startup", "heartbeat"}
    assert got["late"] == expected["late"]
    assert got["twins"] == expected["twins"]
    # PostgreSQL's rollups hold exactly the stored readings, after the kill and the survivor's replay.
    for table, column, width in LEVELS:
        with psycopg.connect(cluster_db) as con:
            rolled = con.execute(
                f"""SELECT sensor, {column}, sum(n)::int8, min(lo), max(hi) FROM {table} GROUP BY 1, 2
                    EXCEPT ALL
                    SELECT sensor, ts - mod(mod(ts, {width}) + {width}, {width}), count(*), min(value),
                           max(value) FROM readings GROUP BY 1, 2"""
            ).fetchall()
            total = con.execute(f"SELECT sum(n)::int8 FROM {table}").fetchone()
        assert (rolled, total) == ([], (len(stored),)), table

    # the api: fleet windows merged from the partitions' partials equal the embedded fleet windows
    # (count, min and max exactly, sum to rounding, quantiles within the sketch's accuracy), a
    # device's windows are the stored ones, and the built-in simulator is refused with the reason
    for size in SIZES:
        merged = [(w["sensor"], _us(w["start"]), w["count"], w["min"], w["max"]) for w in fleet[size]]
        assert merged == [(*row[:3], *row[4:6]) for row in expected_fleet[size]]
        for w, row in zip(fleet[size], expected_fleet[size], strict=True):
            assert w["sum"] == pytest.approx(row[3], rel=1e-12)  # added in another order
            for q, value in zip((w["p50"], w["p95"], w["p99"]), row[6:], strict=True):
                assert q == pytest.approx(value, rel=0.02)
    assert {w["sensor"] for w in fleet["10s"]} == {"temp", "hum", "cpu_usage", "mem_usage"}
    assert [(w["start"], w["count"]) for w in device if w["sensor"] == "temp"] == [
        (iso(BASE + timedelta(minutes=m)), 60 if m == 0 else 30) for m in range(2)
    ]
    assert live  # the workers' partial live stats, merged by the api, count every stored reading
    # windows streamed live by the api (from the workers, after their commit) are stored ones
    final = {(w[0], w[2], w[3]): w[4] for w in got["windows"] if w[1] == "d-0"}
    streamed = {(w["sensor"], _size_us(w["size"]), _us(w["start"])): w["count"] for w in watcher.windows}
    assert len(streamed) >= 10, api.output()[-3000:]
    assert {key: final[key] for key in streamed} == streamed
    assert refused[0] == 501
    assert "fleetstream simulate --target" in refused[1]["error"]["message"]


def _ready(proc: Proc) -> bool:
    assert proc.proc.poll() is None, proc.output()
    try:
        return proc.call("GET", "/readyz")[0] == 200
    except OSError:
        return False


def _watermark(proc: Proc) -> str:
    status, body, _ = proc.call("GET", "/api/v1/stats/live")
    return str(body["watermark"]) if status == 200 and body["watermark"] is not None else ""


def _us(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp() * 1_000_000)


def test_up_on_kafka_and_postgresql_runs_gateway_worker_and_api_in_one_process(
    tmp_path: Path, postgres_url: str, module_tansu: Tansu
) -> None:
    bus = f"kafka://{module_tansu.bootstrap}/readings-{uuid.uuid4().hex[:8]}?partitions=4"
    up = start_gateway(tmp_path, bus, "up", "--store", postgres_url, "--no-simulator", "--no-table")
    try:
        body = [reading(f"u-{d}", s, float(s)) for s in range(12) for d in range(3)]
        assert up.call("POST", "/api/v1/telemetry", body)[:2] == (202, {"accepted": 36, "rejected": []})

        def stored() -> Any:
            status, got, _ = up.call(
                "GET", "/api/v1/metrics?from=2024-06-01T00:00:00Z&to=2024-06-02T00:00:00Z&agg=count,sum"
            )
            return status == 200 and got["metrics"].get("t", {}).get("count") == 36 and got

        metrics = wait_for(stored, timeout=30, interval=0.3)
        assert metrics["metrics"]["t"]["sum"] == 3 * sum(range(12))
    finally:
        assert up.stop() == 0, up.output()
    assert "worker" in up.output()  # the worker ran in the same process


def test_gateway_takes_a_kafka_source_into_the_bus_and_keeps_dead_letters_in_the_store(
    tmp_path: Path, module_tansu: Tansu, postgres_url: str
) -> None:
    from confluent_kafka import Producer

    topic = f"device-events-{uuid.uuid4().hex[:8]}"
    readings = f"readings-{uuid.uuid4().hex[:8]}"
    bus = f"kafka://{module_tansu.bootstrap}/{readings}?partitions=2"
    source = f"kafka://{module_tansu.bootstrap}/{topic}"

    refused = Proc.run(
        tmp_path, "gateway", "--bus", bus, "--kafka-source", source, "--port", str(free_port())
    )
    assert refused.proc.wait(30) == 2
    assert "--store" in refused.output()

    gw = start_gateway(tmp_path, bus, "gateway", "--kafka-source", source, "--store", postgres_url)
    try:
        producer = Producer({"bootstrap.servers": module_tansu.bootstrap, "acks": "all"})
        for second in range(5):
            producer.produce(topic, json.dumps(reading("k-1", second, float(second))).encode(), b"k-1")
        producer.produce(topic, b'{"device_id": "k-1", "sensor": "t", "value": "warm"}', b"k-1")
        assert producer.flush(15) == 0

        def dead_letters() -> list[tuple[Any, ...]]:
            with psycopg.connect(postgres_url) as con:
                return con.execute("SELECT source, topic FROM dead_letters").fetchall()

        assert wait_for(dead_letters, timeout=30, interval=0.3) == [("kafka", topic)]
        status, ready, _ = gw.call("GET", "/readyz")
        assert status == 200
        assert ready["sources"]["kafka"]["connected"] is True
    finally:
        assert gw.stop() == 0, gw.output()
    base = 1_717_200_000_000_000
    want = {("k-1", base + s * 1_000_000) for s in range(5)}
    group = f"check-{uuid.uuid4().hex}"
    assert consumed(module_tansu.bootstrap, group, 5, 30, readings) == want


def test_gateway_takes_mqtt_into_the_bus_and_keeps_dead_letters_in_the_store(
    tmp_path: Path, module_tansu: Tansu, mosquitto: Mosquitto, postgres_url: str
) -> None:
    from ._mqtt import Publisher

    readings = f"readings-{uuid.uuid4().hex[:8]}"
    bus = f"kafka://{module_tansu.bootstrap}/{readings}?partitions=2"
    gw = start_gateway(tmp_path, bus, "gateway", "--mqtt", mosquitto.url, "--store", postgres_url)
    publisher = Publisher(mosquitto.port)
    try:

        def subscribed() -> bool:
            status, ready, _ = gw.call("GET", "/readyz")
            return status == 200 and bool(ready["sources"]["mqtt"]["connected"])

        assert wait_for(subscribed, timeout=30, interval=0.3)
        for second in range(5):
            # the device id from the topic: the payload has none
            body = reading("m-1", second, float(second))
            del body["device_id"]
            publisher.publish("devices/m-1/telemetry", body)
        publisher.publish("devices/m-1/telemetry", b'{"sensor": "t", "value": "warm"}')
        publisher.wait_acked()

        def dead_letters() -> list[tuple[Any, ...]]:
            with psycopg.connect(postgres_url) as con:
                return con.execute("SELECT source, topic FROM dead_letters").fetchall()

        assert wait_for(dead_letters, timeout=30, interval=0.3) == [("mqtt", "devices/m-1/telemetry")]
    finally:
        publisher.close()
        assert gw.stop() == 0, gw.output()
    base = 1_717_200_000_000_000
    want = {("m-1", base + s * 1_000_000) for s in range(5)}
    group = f"check-{uuid.uuid4().hex}"
    assert consumed(module_tansu.bootstrap, group, 5, 30, readings) == want
