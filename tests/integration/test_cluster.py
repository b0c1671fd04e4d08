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
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ..servers import Tansu, free_port
from ._support import iso, wait_for

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


def start_gateway(tmp: Path, bus: str) -> Proc:
    port = free_port()
    gw = Proc.run(tmp, "gateway", "--bus", bus, "--port", str(port), port=port)

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


def consumed(bootstrap: str, group: str, want: int, timeout: float) -> set[tuple[str, int]]:
    """(device, ts) of the readings a fresh consumer group reads from the readings topic."""
    from fleetstream.adapters.bus.kafka import KafkaBus

    async def run() -> set[tuple[str, int]]:
        bus = KafkaBus(f"kafka://{bootstrap}")
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
