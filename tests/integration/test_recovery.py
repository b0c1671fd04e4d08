"""Crash recovery: a SIGKILLed ``fleetstream up`` resumes from its checkpoint and the log, exactly.

A fixed, seeded load with disorder, duplicates, updates within the lateness and readings beyond it
is sent twice: once to a server that runs to the end, once to a server that is SIGKILLed in the
middle and restarted. The sender is at-least-once (it re-sends a batch until it is acknowledged).
Windows (final versions), twins and device event logs stored by both runs must be equal, and every
reading stored exactly once.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ._support import ServerProcess, db_path, iso, read_db, stop_cleanly, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
DEVICES = 12
SECONDS = 240
ENV = {
    # Checkpoints often, so the crash lands after one and the restart both restores and replays.
    "FLEETSTREAM_ENGINE__CHECKPOINT_INTERVAL_S": "0.3",
    "FLEETSTREAM_ENGINE__FLUSH_INTERVAL_S": "0.2",
    # After the load, idle windows close on the wall clock; a restart takes far less than this.
    "FLEETSTREAM_STREAM__IDLE_TIMEOUT_S": "4",
}


def at(seconds: float) -> str:
    return iso(BASE + timedelta(seconds=seconds))


def make_load(seed: int = 7) -> list[list[dict[str, Any]]]:
    """Batches of messages: readings every second per device, shuffled within 2 s, 5% re-sent
    later, some 10-20 s late (within the lateness: window updates) and some 60 s late (beyond).
    Devices ``h-*`` are host monitors sending startup and heartbeats; ``d-3`` goes silent midway."""
    rng = random.Random(seed)
    messages: list[tuple[float, dict[str, Any]]] = []
    for second in range(SECONDS):
        for d in range(DEVICES):
            device = f"d-{d}"
            if d == 3 and 60 <= second < 200:
                continue  # silent long enough to go idle, then offline
            arrival = second + rng.uniform(0, 2)
            roll = rng.random()
            if roll < 0.01:
                arrival = second + 60  # beyond the allowed lateness
            elif roll < 0.03:
                arrival = second + rng.uniform(10, 20)  # late, within the lateness
            value = round(20 + 5 * rng.random(), 3)
            body = {"device_id": device, "timestamp": at(second), "sensor": "temperature", "value": value}
            messages.append((arrival, body))
            if d % 2 == 0:
                humid = {
                    "device_id": device,
                    "timestamp": at(second),
                    "sensor": "humidity",
                    "value": second % 50,
                }
                messages.append((arrival, humid))
        for h in range(2):
            if second == 0:
                messages.append((0, {"device_id": f"h-{h}", "type": "startup", "ts": at(0)}))
            if second % 15 == 0:
                beat = {"cpu_usage": rng.uniform(1, 99), "mem_usage": rng.uniform(1, 99)}
                event = {"device_id": f"h-{h}", "type": "heartbeat", "ts": at(second), "event": beat}
                messages.append((second + rng.uniform(0, 1), event))
    resent = [(arrival + rng.uniform(1, 5), body) for arrival, body in messages if rng.random() < 0.05]
    ordered = [body for _, body in sorted(messages + resent, key=lambda pair: pair[0])]
    return [ordered[i : i + 40] for i in range(0, len(ordered), 40)]


class Sender(threading.Thread):
    """Posts the batches in order; a batch without a 2xx is re-sent until it has one."""

    def __init__(self, url: Callable[[], str], batches: list[list[dict[str, Any]]]) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.batches = batches
        self.done = 0
        self.failures = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(timeout=5) as client:
                for batch in self.batches:
                    deadline = time.monotonic() + 60
                    while True:
                        try:
                            r = client.post(f"{self.url()}/api/v1/telemetry", json=batch)
                            if r.status_code == 202:
                                break
                        except httpx.HTTPError:
                            pass
                        self.failures += 1
                        if time.monotonic() > deadline:
                            raise AssertionError("a batch was not acknowledged within 60 s")
                        time.sleep(0.05)
                    self.done += 1
        except BaseException as exc:
            self.error = exc


def outcome(path: Path) -> dict[str, Any]:
    """What a run stored: readings, final windows, twins and event logs."""
    return {
        "readings": read_db(path, "SELECT device_id, sensor, epoch_us(ts), value FROM readings ORDER BY ALL"),
        "windows": read_db(
            path,
            """SELECT sensor, device_id, size_us, epoch_us(start), count, sum, min, max, first, last,
                      p50, p95, p99 FROM windows ORDER BY ALL""",
        ),
        "twins": read_db(path, "SELECT device_id, state FROM twins ORDER BY device_id"),
        "events": read_db(
            path, "SELECT device_id, seq, epoch_us(ts), type, payload FROM device_events ORDER BY ALL"
        ),
        "late": read_db(
            path, "SELECT device_id, sensor, epoch_us(ts), size_us FROM late_readings ORDER BY ALL"
        ),
    }


def settle(srv: ServerProcess) -> None:
    """Wait until the idle fallback has closed every window (the watermark follows the wall clock)."""

    def closed() -> bool:
        status, body = srv.call("GET", "/api/v1/stats/live")
        return status == 200 and body["watermark"] is not None and body["watermark"] > "2025"

    wait_for(closed, timeout=30, interval=0.2)
    time.sleep(1.0)  # one more flush and checkpoint


def test_sigkill_mid_run_then_restart_equals_an_uninterrupted_run(
    tmp_path: Path, launch_server: Callable[..., ServerProcess]
) -> None:
    batches = make_load()

    # The uninterrupted run.
    clean = launch_server(tmp_path / "clean", "--no-simulator", env=ENV)
    try:
        sender = Sender(lambda: clean.url, batches)
        sender.start()
        sender.join(120)
        assert sender.error is None
        assert sender.done == len(batches)
        settle(clean)
    finally:
        stop_cleanly(clean)
    expected = outcome(db_path(clean))

    # The same load, SIGKILLed in the middle and restarted on the same data directory and port.
    crashing = launch_server(tmp_path / "crash", "--no-simulator", env=ENV)
    current = {"srv": crashing}
    sender = Sender(lambda: current["srv"].url, batches)
    sender.start()
    wait_for(lambda: sender.done >= len(batches) // 2, timeout=60)
    assert crashing.stop("kill") != 0
    restarted = launch_server(tmp_path / "crash", "--no-simulator", env=ENV, port=crashing.port)
    current["srv"] = restarted
    try:
        sender.join(120)
        assert sender.error is None
        assert sender.done == len(batches)
        assert sender.failures >= 1  # the crash was felt by the sender
        status, body = restarted.call("GET", "/metrics")
        assert status == 200
        assert "fleetstream_replayed_total" in body
        settle(restarted)
    finally:
        stop_cleanly(restarted)
    got = outcome(db_path(restarted))

    assert len(got["readings"]) == len(expected["readings"])  # each reading stored exactly once
    assert got["readings"] == expected["readings"]
    assert got["late"] == expected["late"]
    assert len(expected["late"]) > 0
    assert got["windows"] == expected["windows"]
    assert got["events"] == expected["events"]
    assert {e[3] for e in expected["events"]} >= {"registered", "startup", "heartbeat", "status_changed"}
    for (d1, s1), (d2, s2) in zip(got["twins"], expected["twins"], strict=True):
        assert (d1, json.loads(s1)) == (d2, json.loads(s2))
