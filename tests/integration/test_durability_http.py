"""Acknowledged means durable: SIGKILL or Ctrl-C the server under concurrent load, then count every reading.

Each reading is unique by (device, event time): client ``c`` sends device ``dur-c`` with event time
``BASE + seq ms``, so the DuckDB file can be checked row by row after the server is gone.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from ._support import ServerProcess, db_path, iso, read_db, stop_cleanly

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 8
BATCH = 25
LOAD_S = 2.5
BASE = datetime(2024, 5, 1, tzinfo=UTC)
BASE_US = int(BASE.timestamp()) * 1_000_000

Key = tuple[str, int]  # (device_id, event time in µs)


@dataclass
class Batch:
    device: str
    seqs: range
    status: int | None = None  # None: no answer (connection refused, reset, timed out)

    @property
    def keys(self) -> set[Key]:
        return {(self.device, BASE_US + s * 1000) for s in self.seqs}

    def body(self) -> list[dict[str, object]]:
        return [
            {
                "device_id": self.device,
                "timestamp": iso(BASE + timedelta(milliseconds=s)),
                "sensor": "temperature",
                "value": float(s),
            }
            for s in self.seqs
        ]


@dataclass
class Load:
    """Client threads posting batches until told to stop or the server goes away."""

    url: str
    batches: list[Batch] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for c in range(CLIENTS):
            thread = threading.Thread(target=self._client, args=(c,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _client(self, c: int) -> None:
        device = f"dur-{c}"
        deadline = time.monotonic() + 30  # bound even if the test forgets to stop us
        with httpx.Client(timeout=10) as client:
            seq = 0
            while not self.stop.is_set() and time.monotonic() < deadline:
                batch = Batch(device, range(seq, seq + BATCH))
                seq += BATCH
                with self.lock:
                    self.batches.append(batch)
                try:
                    response = client.post(f"{self.url}/api/v1/telemetry", json=batch.body())
                except httpx.TransportError:
                    return  # the server is gone: this batch stays unacknowledged
                batch.status = response.status_code
                if response.status_code == 202:
                    assert response.json() == {"accepted": BATCH, "rejected": []}

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)
            assert not thread.is_alive()

    def keys(self, acked: bool | None = None) -> set[Key]:
        return {k for b in self.batches if acked is None or (b.status == 202) == acked for k in b.keys}


def _stored(srv: ServerProcess) -> dict[Key, int]:
    """(device, event time) → how many rows, read from the DuckDB file (server stopped)."""
    rows = read_db(db_path(srv), "SELECT device_id, epoch_us(ts), count(*) FROM readings GROUP BY ALL")
    return {(d, ts): n for d, ts, n in rows}


def _run_load(srv: ServerProcess) -> Load:
    load = Load(srv.url)
    load.start()
    time.sleep(LOAD_S)
    return load


def test_sigkill_loses_no_acknowledged_reading(start: Callable[..., ServerProcess]) -> None:
    srv = start()
    load = _run_load(srv)
    assert srv.stop("kill") == -signal.SIGKILL
    load.join()
    acked = load.keys(acked=True)
    sent = load.keys()
    assert len(acked) >= 20 * BATCH, f"too little load to mean anything: {len(acked)} readings acknowledged"

    # Restart on the same data: the store recovers; every acknowledged reading is there, once.
    srv = start(data=srv.data)
    stop_cleanly(srv)
    stored = _stored(srv)
    assert acked - set(stored) == set(), "acknowledged readings lost"
    assert {k: n for k, n in stored.items() if n != 1} == {}, "readings stored twice"
    assert set(stored) <= sent

    # The senders re-send what got no 202; dedup keeps what was stored but not acknowledged.
    srv = start(data=srv.data)
    unacked = [b for b in load.batches if b.status != 202]
    with httpx.Client(timeout=10) as client:
        for batch in unacked:
            response = client.post(f"{srv.url}/api/v1/telemetry", json=batch.body())
            assert (response.status_code, response.json()) == (202, {"accepted": BATCH, "rejected": []})
    stop_cleanly(srv)
    stored = _stored(srv)
    assert set(stored) == sent
    assert sum(stored.values()) == len(sent) == len(load.batches) * BATCH


def test_ctrl_c_under_load_stops_cleanly_and_keeps_every_acknowledged_reading(
    start: Callable[..., ServerProcess],
) -> None:
    srv = start()
    load = _run_load(srv)
    began = time.monotonic()
    code = srv.stop("int")
    took = time.monotonic() - began
    load.join()

    assert code == 0, srv.output()  # a clean stop is a success
    assert took < 10
    assert "stopped cleanly at log position" in srv.output()
    assert "Traceback" not in srv.output()
    acked = load.keys(acked=True)
    assert len(acked) >= 20 * BATCH
    # Refusals during shutdown are 503 (retry later), never an error of the client's or a 500.
    assert {b.status for b in load.batches} <= {202, 503, None}
    stored = _stored(srv)
    assert acked - set(stored) == set()
    assert {k: n for k, n in stored.items() if n != 1} == {}
    assert set(stored) <= load.keys()
