"""The model registry end to end: `fleetstream train` on a small DuckDB store, then GET /api/v1/models."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetstream.adapters.store.duckdb import DuckDBStore
from fleetstream.domain.events import DeviceTwin
from fleetstream.domain.failure_truth import Outage
from fleetstream.domain.timeutil import us_to_iso
from fleetstream.domain.windows import WindowAggregate
from fleetstream.ports import Derived
from fleetstream.predictor_training import load_outages
from fleetstream.simulator.failures import write_failures

from ._support import ServerProcess

pytestmark = pytest.mark.integration

MIN = 60_000_000
T0 = 1_680_033_600_000_000  # 2023-03-28T20:00:00Z, on the minute
MINUTES = 70
FAIL_AT, DEGRADE_AT = 50, 38  # minutes: the failing hosts degrade, then fall silent
HEALTHY = {"temperature": 50.0, "cpu_usage": 30.0, "fan_rpm": 3000.0, "voltage": 12.0}


def _value(sensor: str, minute: int, host: int, failing: bool) -> float:
    base = HEALTHY[sensor] * (1 + 0.02 * (host % 5)) + 0.3 * ((minute * 7 + host) % 5)
    if not failing or minute < DEGRADE_AT:
        return base
    part = (minute - DEGRADE_AT) / (FAIL_AT - DEGRADE_AT)
    shift = {"temperature": 25.0, "cpu_usage": 35.0, "fan_rpm": -2000.0, "voltage": -1.0}[sensor]
    return base + shift * part


def _build_store(path: Path, failures: Path, hosts: int = 16) -> int:
    """Windows of ``hosts`` hosts (the even ones fail) and the failures file; how many feature rows."""
    windows, twins, records, rows = [], [], [], 0
    for h in range(hosts):
        device = f"host-{h:04d}"
        failing = h % 2 == 0
        twins.append(DeviceTwin(device, device_type="Host Monitor"))
        minutes = FAIL_AT if failing else MINUTES
        rows += minutes
        for m in range(minutes):
            for sensor in HEALTHY:
                w = WindowAggregate(sensor, device, MIN, T0 + m * MIN)
                for k in range(2):
                    w.add(_value(sensor, m, h, failing) + k * 0.1, T0 + m * MIN + k * 1000)
                windows.append(w)
        if failing:
            records.append(
                {
                    "device_id": device,
                    "type": "Host Monitor",
                    "degraded_at": us_to_iso(T0 + DEGRADE_AT * MIN + 1000),
                    "failing_at": us_to_iso(T0 + (DEGRADE_AT + 8) * MIN),
                    "failed_at": us_to_iso(T0 + FAIL_AT * MIN),
                    "recovered_at": None,
                }
            )

    async def write() -> None:
        store = DuckDBStore(f"duckdb:///{path}")
        await store.start()
        try:
            await store.write_derived(Derived(windows=windows, twins=twins))
        finally:
            await store.close()

    asyncio.run(write())
    failures.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return rows


def _train(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetstream", "train", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _stored_rounds(path: Path) -> list[tuple[int, int, int, float]]:
    async def read() -> list[tuple[int, int, int, float]]:
        store = DuckDBStore(f"duckdb:///{path}")
        await store.start()
        try:
            return [
                (r.round, r.n_sites, r.n_samples, r.metrics["rows"]) for r in await store.list_model_rounds()
            ]
        finally:
            await store.close()

    return asyncio.run(read())


def test_train_stores_rounds_that_continue_across_runs_and_the_api_lists_them(
    tmp_path: Path, start: Callable[..., ServerProcess]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db, failures = data / "fleetstream.duckdb", tmp_path / "failures.jsonl"
    rows = _build_store(db, failures)
    assert rows == 8 * 50 + 8 * 70

    first = _train(
        "--store", str(db), "--failures", str(failures), "--sites", "2", "--rounds", "3", "--epochs", "5"
    )
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].split()[:3] == ["round", "version", "sites"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    second = _train("--store", str(db), "--failures", str(failures), "--sites", "2", "--rounds", "2")
    assert second.returncode == 0, second.stderr
    # A site map puts three devices at a gateway of their own; the rest stay in the hashed sites.
    site_map = tmp_path / "sites.csv"
    site_map.write_text("device_id,site\nhost-0000,gw-a\nhost-0001,gw-a\nhost-0002,gw-a\n")
    third = _train(
        "--store", str(db), "--failures", str(failures), "--sites", "1", "--site-map", str(site_map)
    )
    assert third.returncode == 0, third.stderr

    stored = _stored_rounds(db)
    assert [r[0] for r in stored] == list(range(1, 16))
    # Every feature row is either a training row (n_samples) or a validation row (metrics rows).
    assert {n + v for _, _, n, v in stored} == {float(rows)}
    # Runs 1 and 2: two hashed sites; run 3 (--sites 1): gw-a and the one hashed site.
    assert [n_sites for _, n_sites, _, _ in stored] == [2] * 15

    srv = start(data=data)
    status, body = srv.call("GET", "/api/v1/models")
    assert status == 200
    assert [m["round"] for m in body["models"]] == list(range(1, 16))
    assert body["latest"] == 15
    assert all(m["version"].endswith(f"-r{m['round']}") for m in body["models"])
    assert all({"log_loss", "auc", "rows"} <= set(m["metrics"]) for m in body["models"])
    assert "params" not in body["models"][0]

    status, one = srv.call("GET", "/api/v1/models/2")
    assert status == 200
    assert {k: v for k, v in one.items() if k != "params"} == body["models"][1]
    params = one["params"]
    assert params["format"] == "logistic-v1"
    assert len(params["features"]) == len(params["coef"]) == len(params["mean"]) == 20
    assert "fan_rpm_rel" in params["features"]

    status, missing = srv.call("GET", "/api/v1/models/16")
    assert status == 404
    assert missing["error"]["code"] == "not_found"
    assert srv.call("GET", "/api/v1/models/0")[0] == 422
    assert srv.call("GET", "/api/v1/models/latest")[0] == 422


def test_train_explains_bad_input(tmp_path: Path) -> None:
    db, failures = tmp_path / "store.duckdb", tmp_path / "failures.jsonl"
    _build_store(db, failures, hosts=4)

    gone = _train("--store", str(tmp_path / "nope.duckdb"), "--failures", str(failures))
    assert gone.returncode == 2
    assert "no store file at" in gone.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"device_id": "host-0000", "degraded_at": "2023-03-28T20:38:00Z"}\nnot json\n')
    broken = _train("--store", str(db), "--failures", str(bad))
    assert broken.returncode == 2
    assert f"{bad}:2: not JSON" in broken.stderr

    sites = tmp_path / "sites.csv"
    sites.write_text("host-0000,gw-a\nhost-0001\n")
    unmapped = _train("--store", str(db), "--failures", str(failures), "--site-map", str(sites))
    assert unmapped.returncode == 2
    assert f"{sites}:2: expected device_id,site" in unmapped.stderr

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    nothing = _train("--store", str(db), "--failures", str(empty))
    assert nothing.returncode == 2
    assert "nothing to learn from" in nothing.stderr
    assert "Traceback" not in gone.stderr + broken.stderr + unmapped.stderr + nothing.stderr
    assert _stored_rounds(db) == []


def test_the_failures_file_reads_the_same_as_json_lines_and_as_csv(tmp_path: Path) -> None:
    rows = [
        {
            "device_id": "host-0003",
            "type": "Host Monitor",
            "degraded_at": "2026-11-29T20:31:12.500Z",
            "failing_at": "2026-11-29T20:36:40.100Z",
            "failed_at": "2026-11-29T20:38:02.900Z",
            "recovered_at": None,
        },
        {
            "device_id": "host-0003",
            "type": "Host Monitor",
            "degraded_at": "2026-11-29T21:00:00.000Z",
            "failing_at": None,
            "failed_at": None,
            "recovered_at": "2026-11-29T21:04:00.000Z",
        },
    ]
    write_failures(tmp_path / "f.jsonl", rows)
    write_failures(tmp_path / "f.csv", rows)
    at = 1_795_984_272_500_000  # 2026-11-29T20:31:12.500Z
    expected = {
        "host-0003": [
            Outage("host-0003", at, at + 327_600_000, at + 410_400_000, None),
            Outage("host-0003", at + 1_727_500_000, None, None, at + 1_967_500_000),
        ]
    }
    assert load_outages(tmp_path / "f.jsonl") == expected
    assert load_outages(tmp_path / "f.csv") == expected
