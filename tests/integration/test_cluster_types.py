"""Cluster mode, device types: registered through an api process into PostgreSQL, validated by a
separate gateway process about a second later; versions and the compatibility rule (409) as in
embedded mode; two registries racing for the same type never store two different versions 2."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.cluster.typestore import StoredTypes
from fleetstream.ingest.typeregistry import IncompatibleType
from fleetstream.ingest.usertypes import UserType

from ..servers import Postgres, Tansu, free_port
from ._support import at, wait_for
from .test_cluster import Proc, start_gateway

pytestmark = [pytest.mark.integration]

pytest.importorskip("psycopg")

SOIL: dict[str, Any] = {
    "name": "Soil Probe",
    "schema": {
        "type": "object",
        "properties": {
            "moisture": {"type": "number", "minimum": 0, "maximum": 100},
            "ph": {"type": "number"},
        },
        "required": ["moisture"],
    },
    "units": {"moisture": "%", "ph": "pH"},
    "ranges": {"ph": [0, 14]},
}
WIDER = {**SOIL, "ranges": {"ph": [-1, 15]}}  # compatible with SOIL
WITH_EC = {  # compatible with SOIL, not with WIDER (its ph range is narrower than WIDER's)
    **SOIL,
    "schema": {**SOIL["schema"], "properties": {**SOIL["schema"]["properties"], "ec": {"type": "number"}}},
}


async def _registries(url: str, n: int) -> tuple[list[PostgresStore], list[StoredTypes]]:
    stores = [PostgresStore(url, readers=1) for _ in range(n)]
    types = [StoredTypes(s, refresh_s=3600) for s in stores]  # refreshed by hand in these tests
    for store, registry in zip(stores, types, strict=True):
        await store.start()
        await registry.start()
    return stores, types


async def _close(stores: list[PostgresStore], types: list[StoredTypes]) -> None:
    for registry in types:
        await registry.stop()
    for store in stores:
        await store.close()


def _lose_first_race(registry: StoredTypes, barrier: asyncio.Barrier) -> None:
    """Make the registry's first insert wait until the other registry has prepared its own too."""
    insert = registry._insert
    calls = 0

    async def gated(new: UserType) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            await barrier.wait()
        return await insert(new)

    registry._insert = gated  # type: ignore[method-assign]


def test_racing_registrations_store_one_version_each(postgres_url: str) -> None:
    async def scenario() -> dict[str, Any]:
        stores, (a, b) = await _registries(postgres_url, 2)
        try:
            first = await a.submit(SOIL)
            # both prepare "version 2" before either stores it: one wins, the other reads again
            barrier = asyncio.Barrier(2)
            _lose_first_race(a, barrier)
            _lose_first_race(b, barrier)
            wider, with_ec = await asyncio.gather(a.submit(WIDER), b.submit(WITH_EC), return_exceptions=True)
            # identical bodies racing: one registers, the other finds it done (200, the same version)
            barrier = asyncio.Barrier(2)
            _lose_first_race(a, barrier)
            _lose_first_race(b, barrier)
            forced = {**WITH_EC, "ranges": {"ph": [-2, 16]}}
            same = await asyncio.gather(a.submit(forced, force=True), b.submit(forced, force=True))
            rows = await stores[0].execute("SELECT key, version FROM device_types ORDER BY key, version")
            fresh = await b.refresh()
            return {
                "first": first,
                "wider": wider,
                "with_ec": with_ec,
                "same": same,
                "rows": rows,
                "fresh": fresh,
                "a": [t.version for t in a.versions("soil probe")],
                "b": [t.version for t in b.versions("SoilProbe")],
            }
        finally:
            await _close(stores, [a, b])

    got = asyncio.run(scenario())
    assert (got["first"][0].version, got["first"][1]) == (1, True)
    # one request won version 2; the other, checked again against it, is now incompatible with it:
    # WITH_EC narrows WIDER's ph range, WIDER drops WITH_EC's property ec
    (winner,) = [r for r in (got["wider"], got["with_ec"]) if isinstance(r, tuple)]
    (loser,) = [r for r in (got["wider"], got["with_ec"]) if isinstance(r, IncompatibleType)]
    assert (winner[0].version, winner[1]) == (2, True)
    wider_won = winner[0].ranges == {"ph": (-1.0, 15.0)}
    change = "range of 'ph' narrowed from -1..15 to 0..14" if wider_won else "property 'ec' removed"
    assert loser.details == {"version": 2, "changes": [change]}
    # the forced, identical requests: one stored version 3, the other found it there (200)
    (one, created_one), (two, created_two) = got["same"]
    assert one == two
    assert one.version == 3
    assert sorted([created_one, created_two]) == [False, True]
    assert got["rows"] == [("soilprobe", 1), ("soilprobe", 2), ("soilprobe", 3)]
    assert got["a"] == got["b"] == [1, 2, 3]
    assert got["fresh"] is False  # b already holds what it registered: nothing to read


def test_refresh_reads_the_rows_only_when_something_was_registered(postgres_url: str) -> None:
    async def scenario() -> list[Any]:
        stores, (a, b) = await _registries(postgres_url, 2)
        try:
            seen = [b.reloads, await b.refresh(), await b.refresh(), b.reloads, b.latest("soil probe")]
            await a.submit(SOIL)
            seen += [await b.refresh(), b.reloads, b.latest("soil probe"), await b.refresh(), b.reloads]
            return seen
        finally:
            await _close(stores, [a, b])

    reloads, first, second, after, none, changed, reloads_after, latest, again, final = asyncio.run(
        scenario()
    )
    assert (reloads, first, second, after, none) == (1, False, False, 1, None)
    assert (changed, reloads_after, again, final) == (True, 2, False, 2)
    assert latest is not None
    assert (latest.name, latest.version, latest.units) == ("Soil Probe", 1, {"moisture": "%", "ph": "pH"})


def _twin_with(api: Proc, device: str, sensor: str) -> dict[str, Any] | None:
    status, twin, _ = api.call("GET", f"/api/v1/devices/{device}")
    return twin if status == 200 and sensor in twin.get("sensors", {}) else None


@pytest.mark.slow
def test_a_type_registered_through_the_api_is_validated_by_a_separate_gateway(
    tmp_path: Path, postgres_url: str, module_tansu: Tansu
) -> None:
    pytest.importorskip("confluent_kafka")
    bus = f"kafka://{module_tansu.bootstrap}/readings-{uuid.uuid4().hex[:8]}?partitions=2"
    worker = Proc.run(tmp_path, "worker", "--bus", bus, "--store", postgres_url)
    api = start_gateway(tmp_path, bus, "api", "--store", postgres_url)
    gw = start_gateway(tmp_path, bus, "gateway", "--store", postgres_url)
    try:
        probe = {"device_id": "sp-1", "timestamp": at(0), "tag": "Soil Probe", "moisture": 31.5, "ph": 6.5}
        unknown = gw.call("POST", "/api/v1/telemetry", [probe])
        assert (unknown[0], unknown[1]["accepted"]) == (422, 0)  # not registered yet: unrecognised

        status, body, _ = api.call("POST", "/api/v1/device-types", SOIL)
        registered_at = time.monotonic()
        assert (status, body["name"], body["version"], body["versions"]) == (201, "Soil Probe", 1, [1])
        assert api.call("POST", "/api/v1/device-types", SOIL)[0] == 200  # the same again: no new version
        _, listing, _ = api.call("GET", "/api/v1/device-types")
        assert listing["device_types"][-1]["name"] == "Soil Probe"

        wait_for(
            lambda: gw.call("POST", "/api/v1/telemetry", [probe])[1]["accepted"] == 1,
            timeout=5,
            interval=0.1,
        )
        seen_after_s = time.monotonic() - registered_at
        batch = [
            {"device_id": "sp-1", "timestamp": at(1), "tag": "Soil Probe", "moisture": 130},
            {"device_id": "sp-1", "timestamp": at(2), "device_type": "SoilProbe", "moisture": 20, "ph": 20},
            {"device_id": "sp-2", "timestamp": at(3), "tag": "soil_probe", "moisture": 12, "ph": 3},
        ]
        assert gw.call("POST", "/api/v1/telemetry", batch)[:2] == (
            202,
            {
                "accepted": 1,
                "rejected": [
                    {
                        "index": 0,
                        "error": "schema: Soil Probe v1: data.moisture must be smaller than or equal to 100",
                    },
                    {"index": 1, "error": "ph: 20 is outside the Soil Probe range 0..14 pH"},
                ],
            },
        )
        twin = wait_for(lambda: _twin_with(api, "sp-1", "ph"), timeout=30, interval=0.2)
        assert (twin["device_type"], twin["sensors"]["moisture"]["value"]) == ("Soil Probe", 31.5)
        twin = wait_for(lambda: _twin_with(api, "sp-2", "ph"), timeout=30, interval=0.2)
        assert twin["sensors"]["ph"]["value"] == 3.0

        # the compatibility rule, as embedded: a narrower range is a 409 unless forced
        narrower = {**SOIL, "ranges": {"ph": [4, 9]}}
        status, body, _ = api.call("POST", "/api/v1/device-types", narrower)
        assert status == 409
        assert body["error"]["code"] == "incompatible_schema"
        assert body["error"]["details"] == {
            "version": 1,
            "changes": ["range of 'ph' narrowed from 0..14 to 4..9"],
        }
        status, body, _ = api.call("POST", "/api/v1/device-types?force=true", narrower)
        assert (status, body["version"], body["versions"]) == (201, 2, [1, 2])
        # ... and the gateway validates against version 2 shortly after
        late = {"device_id": "sp-2", "timestamp": at(4), "tag": "Soil Probe", "moisture": 3, "ph": 3}
        wait_for(
            lambda: (
                gw.call("POST", "/api/v1/telemetry", [late])[1]["rejected"]
                == [{"index": 0, "error": "ph: 3 is outside the Soil Probe range 4..9 pH"}]
            ),
            timeout=5,
            interval=0.1,
        )
    finally:
        codes = [gw.stop(), api.stop(), worker.stop()]
    assert codes == [0, 0, 0], (gw.output(), api.output(), worker.output())
    assert seen_after_s < 3.0, seen_after_s
    print(f"a registered type is accepted by another gateway {seen_after_s:.2f} s after its 201")


def test_a_gateway_whose_store_is_unreachable_says_so_and_exits_2(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    gw = Proc.run(
        tmp_path, "gateway", "--bus", "kafka://127.0.0.1:9", "--store", f"postgresql://u@127.0.0.1:{port}/db"
    )
    assert gw.proc.wait(30) == 2
    out = gw.output()
    assert f"error: cannot open PostgreSQL store postgresql://u@127.0.0.1:{port}/db" in out
    assert "Traceback" not in out


def test_a_store_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway or api re-reads the types every second: an outage is two log lines, not one a second."""
    server = Postgres.launch()  # its own cluster: stopping the session's would fail other tests

    async def run() -> tuple[list[str], int]:
        store = PostgresStore(server.url(), readers=1)
        registry = StoredTypes(store, refresh_s=0.02)
        await store.start()
        await registry.start()
        try:
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(1.0)  # about 50 failed re-reads
            await asyncio.to_thread(server.start)
            deadline = time.monotonic() + 30
            while not any("answers again" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "no line saying the store is back"
                await asyncio.sleep(0.05)
            # the poll counter it reports shows the re-reads kept failing all along
            back = next(r.getMessage() for r in caplog.records if "answers again" in r.getMessage())
            failed_polls = int(back.split("after ")[1].split()[0])
            await asyncio.sleep(0.5)  # later successful re-reads log nothing more
        finally:
            await registry.stop()
            await store.close()
        lines = [r.getMessage() for r in caplog.records if r.name == "fleetstream.cluster.typestore"]
        return [line for line in lines if "store" in line], failed_polls

    caplog.set_level(logging.INFO, logger="fleetstream.cluster.typestore")
    try:
        lines, failed_polls = asyncio.run(run())
    finally:
        server.close()
    assert len(lines) == 2, lines
    assert lines[0].startswith("device types (validating with the types read so far): wait for the store")
    assert "answers again" in lines[1]
    assert failed_polls >= 10
