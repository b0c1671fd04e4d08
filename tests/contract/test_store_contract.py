"""One contract for every Store adapter: an adapter is done when it passes all of these."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetstream.adapters.store.duckdb import DuckDBStore
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.ports import DeadLetter, MetricsQuery, Store
from fleetstream.testing import InMemoryStore

S = 1_000_000


def make_memory(tmp: Path) -> Store:
    return InMemoryStore()


def make_duckdb(tmp: Path) -> Store:
    return DuckDBStore(f"duckdb:///{tmp / 'store.duckdb'}")


ADAPTERS: dict[str, Callable[[Path], Store]] = {"memory": make_memory, "duckdb": make_duckdb}


@pytest.fixture(params=list(ADAPTERS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = ADAPTERS[request.param](tmp_path)
    asyncio.run(s.start())
    yield s
    asyncio.run(s.close())


def msg(
    seq: int, device: str, ts_s: int, values: dict[str, float], msg_id: str | None = None
) -> DeviceMessage:
    readings = [Reading(device, ts_s * S, k, v, None, "Sensor", msg_id) for k, v in values.items()]
    return DeviceMessage(
        device, ts_s * S, "telemetry" if readings else "startup", "Sensor", readings, msg_id, ts_s * S, seq
    )


def call(coro: Any) -> Any:
    return asyncio.run(coro)


DATA = [
    msg(1, "a", 10, {"t": 1.0, "h": 50.0}),
    msg(2, "a", 20, {"t": 3.0}),
    msg(3, "b", 15, {"t": 8.0}, msg_id="m-1"),
    msg(4, "b", 30, {}),
]


def test_empty_store(store: Store) -> None:
    assert call(store.log_position()) == (0, None)
    q = MetricsQuery(0, 100 * S, ("count", "min"), ("t",))
    assert call(store.query_metrics(q)) == {"t": {"count": 0, "min": None}}


def test_write_then_position_and_sensors(store: Store) -> None:
    call(store.write(Batch.from_messages(DATA)))
    assert call(store.log_position()) == (4, 30 * S)
    assert call(store.sensors()) == {"t", "h"}


def test_metrics_half_open_and_inclusive(store: Store) -> None:
    call(store.write(Batch.from_messages(DATA)))
    aggs = ("count", "min", "max", "avg", "sum", "stddev")
    half_open = call(store.query_metrics(MetricsQuery(10 * S, 20 * S, aggs, ("t",))))
    assert half_open["t"]["count"] == 2
    assert half_open["t"]["sum"] == 9.0
    inclusive = call(store.query_metrics(MetricsQuery(10 * S, 20 * S, aggs, ("t",), end_inclusive=True)))
    t = inclusive["t"]
    assert (t["count"], t["min"], t["max"], t["sum"]) == (3, 1.0, 8.0, 12.0)
    assert t["avg"] == pytest.approx(4.0)
    assert t["stddev"] == pytest.approx(((1 - 4) ** 2 + (3 - 4) ** 2 + (8 - 4) ** 2) ** 0.5 / 2**0.5)
    by_device = call(store.query_metrics(MetricsQuery(0, 100 * S, ("count",), (), ("a",))))
    assert by_device == {"h": {"count": 1}, "t": {"count": 2}}


def test_quantiles(store: Store) -> None:
    call(store.write(Batch.from_messages([msg(i, "q", i, {"v": float(i)}) for i in range(1, 101)])))
    r = call(store.query_metrics(MetricsQuery(0, 1000 * S, ("p50", "p95", "p99"), ("v",))))["v"]
    assert r["p50"] == pytest.approx(50.5)
    assert r["p95"] == pytest.approx(95.05)
    assert r["p99"] == pytest.approx(99.01)


def test_stored_keys_by_time_and_by_msg_id(store: Store) -> None:
    call(store.write(Batch.from_messages(DATA)))
    items = [
        (("a", "t", 10 * S), 10 * S),  # stored
        (("a", "t", 11 * S), 11 * S),  # not stored
        (("b", "t", "m-1"), 99 * S),  # stored by msg id, whatever the time
        (("b", "t", "m-2"), 15 * S),  # other id
        (("b", "@startup", 30 * S), 30 * S),  # a stored bare message
    ]
    assert call(store.stored_keys(items)) == {
        ("a", "t", 10 * S),
        ("b", "t", "m-1"),
        ("b", "@startup", 30 * S),
    }


def test_recent_keys(store: Store) -> None:
    call(store.write(Batch.from_messages(DATA)))
    assert sorted(call(store.recent_keys(20 * S)), key=str) == sorted(
        [(("a", "t", 20 * S), 20 * S), (("b", "@startup", 30 * S), 30 * S)], key=str
    )


LETTERS = [
    DeadLetter(5 * S, "mqtt", "devices/a/telemetry", "malformed JSON at line 1, column 2", b"{x\xff"),
    DeadLetter(
        6 * S,
        "mqtt",
        "devices/b/telemetry",
        "1 of 2 items rejected",
        b'[{"sensor":"t","value":1},{"value":"abc"}]',
        ({"index": 1, "error": 'value: expected a finite number, got "abc"'},),
    ),
    DeadLetter(7 * S, "kafka", None, "not a recognised message", b"{}"),
]


def test_dead_letters_empty(store: Store) -> None:
    assert call(store.dead_letters()) == []
    assert call(store.dead_letters("mqtt", 10)) == []


def test_dead_letters_read_back_newest_first_with_ids(store: Store) -> None:
    call(store.write_dead_letters(LETTERS[:2]))
    call(store.write_dead_letters(LETTERS[2:]))
    call(store.write_dead_letters([]))

    got = call(store.dead_letters())

    assert [d.id for d in got] == [3, 2, 1]
    assert got == [
        DeadLetter(d.received_at, d.source, d.topic, d.reason, d.payload, d.errors, id=i)
        for i, d in reversed(list(enumerate(LETTERS, 1)))
    ]


def test_dead_letters_by_source_and_limit(store: Store) -> None:
    call(store.write_dead_letters(LETTERS))

    topics = [d.topic for d in call(store.dead_letters("mqtt"))]
    assert topics == ["devices/b/telemetry", "devices/a/telemetry"]
    assert [d.id for d in call(store.dead_letters("mqtt", 1))] == [2]
    assert [d.source for d in call(store.dead_letters(None, 2))] == ["kafka", "mqtt"]
    assert call(store.dead_letters("http")) == []


def test_dead_letters_leave_readings_alone(store: Store) -> None:
    call(store.write(Batch.from_messages(DATA)))
    call(store.write_dead_letters(LETTERS))

    assert call(store.log_position()) == (4, 30 * S)
    assert call(store.sensors()) == {"t", "h"}


def test_duckdb_keeps_dead_letters_across_reopen(tmp_path: Path) -> None:
    s = make_duckdb(tmp_path)
    call(s.start())
    call(s.write_dead_letters(LETTERS[:1]))
    call(s.close())
    again = make_duckdb(tmp_path)
    call(again.start())
    call(again.write_dead_letters(LETTERS[1:2]))
    got = [(d.id, d.payload) for d in call(again.dead_letters())]
    assert got == [(2, LETTERS[1].payload), (1, b"{x\xff")]
    call(again.close())


def test_duckdb_survives_reopen(tmp_path: Path) -> None:
    s = make_duckdb(tmp_path)
    call(s.start())
    call(s.write(Batch.from_messages(DATA)))
    call(s.close())
    again = make_duckdb(tmp_path)
    call(again.start())
    assert call(again.log_position()) == (4, 30 * S)
    call(again.close())
