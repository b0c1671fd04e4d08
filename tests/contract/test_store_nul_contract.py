"""Queries whose filter holds a NUL character answer as on every other store.

PostgreSQL text cannot hold one, so intake and the API refuse it in anything stored; a query may
still ask for one (``?sensor=t%00``). Nothing can match it, and the answer must be the one DuckDB
and the memory store give, never a store error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetstream.domain.batch import Batch
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.ports import Derived, EventQuery, MetricsQuery, SeriesQuery, Store, WindowQuery

from .test_store_contract import ADAPTERS, DATA, S, call
from .test_store_derived_contract import window

NUL = "\x00"


@pytest.fixture(params=list(ADAPTERS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = ADAPTERS[request.param](tmp_path, request)
    asyncio.run(s.start())
    call(s.write(Batch.from_messages(DATA)))
    call(
        s.write_derived(
            Derived(
                windows=[window("t", "a", 10, [1.0], 1)],
                events=[DeviceEvent("a", 1, 10 * S, "registered", {"device_type": "Sensor"}, 1)],
                twins=[DeviceTwin("a", "Sensor", "online")],
            )
        )
    )
    yield s
    asyncio.run(s.close())


def test_metrics_and_series(store: Store) -> None:
    asked = call(store.query_metrics(MetricsQuery(0, 100 * S, ("count", "max"), ("t", "t" + NUL))))
    assert asked == {"t": {"count": 3, "max": 8.0}, "t" + NUL: {"count": 0, "max": None}}
    only_nul = call(store.query_metrics(MetricsQuery(0, 100 * S, ("count",), (NUL,))))
    assert only_nul == {NUL: {"count": 0}}
    by_device = call(store.query_metrics(MetricsQuery(0, 100 * S, ("count",), device_ids=("a" + NUL,))))
    assert by_device == {}
    mixed = call(store.query_metrics(MetricsQuery(0, 100 * S, ("count",), ("t",), ("a", NUL))))
    assert mixed == {"t": {"count": 2}}
    series = call(store.query_series(SeriesQuery(0, 100 * S, 100 * S, ("count",), ("t", NUL))))
    assert series == {NUL: [], "t": [{"t": 0, "count": 3}]}


def test_windows_events_twins_rows_and_dead_letters(store: Store) -> None:
    assert call(store.query_windows(WindowQuery(10 * S, 0, 100 * S, device_id="a" + NUL))) == []
    assert call(store.query_windows(WindowQuery(10 * S, 0, 100 * S, (NUL,), "a"))) == []
    assert len(call(store.query_windows(WindowQuery(10 * S, 0, 100 * S, ("t", NUL), "a")))) == 1
    assert call(store.device_events(EventQuery("a" + NUL))) == []
    assert call(store.device_events(EventQuery("a", types=(NUL,)))) == []
    assert len(call(store.device_events(EventQuery("a", types=("registered", NUL))))) == 1
    assert call(store.list_twins("Sensor" + NUL, None, 10, 0)) == (0, [])
    assert call(store.list_twins(None, NUL, 10, 0)) == (0, [])
    assert [t.device_id for t in call(store.load_twins(["a", "a" + NUL]))] == ["a"]
    assert len(call(store.device_rows("a" + NUL, 100 * S))) == 0
    assert call(store.dead_letters(NUL)) == []
