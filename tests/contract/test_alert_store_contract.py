"""The Store contract for alerts, rules and zones, over every adapter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fleetstream.domain.alerts import Alert
from fleetstream.ports import AlertQuery, Derived, Store

from .test_store_contract import ADAPTERS


@pytest.fixture(params=list(ADAPTERS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = ADAPTERS[request.param](tmp_path, request)
    asyncio.run(s.start())
    yield s
    asyncio.run(s.close())


def call(coro: Any) -> Any:
    return asyncio.run(coro)


def alert(rule: str, device: str, opened: int, **fields: Any) -> Alert:
    base = Alert(f"{rule}:{device}:{opened}", device, rule, "warning", "active", opened, 81.0, 81.0, "hot")
    return replace(base, updated_at=opened, **fields)


def test_alerts_upsert_by_id_and_filter(store: Store) -> None:
    a1 = alert("hot", "d1", 10)
    a2 = alert("hot", "d2", 20)
    a3 = alert("cold", "d1", 30)
    call(store.write_derived(Derived(alerts=[a1, a2, a3])))
    # The same id again (a replay, then a change): one row, the last copy wins.
    call(
        store.write_derived(
            Derived(alerts=[a1, replace(a1, state="cleared", cleared_at=15, last_value=70.0)])
        )
    )
    total, page = call(store.query_alerts(AlertQuery()))
    assert total == 3
    assert [a.id for a in page] == ["cold:d1:30", "hot:d2:20", "hot:d1:10"]  # newest opened first
    assert page[2] == replace(a1, state="cleared", cleared_at=15, last_value=70.0)
    assert [a.id for a in call(store.query_alerts(AlertQuery(state="active")))[1]] == [
        "cold:d1:30",
        "hot:d2:20",
    ]
    assert [a.id for a in call(store.query_alerts(AlertQuery(device_id="d1")))[1]] == [
        "cold:d1:30",
        "hot:d1:10",
    ]
    assert [a.id for a in call(store.query_alerts(AlertQuery(rule_id="hot", start=10, end=20)))[1]] == [
        "hot:d1:10"
    ]
    total, page = call(store.query_alerts(AlertQuery(limit=1, offset=1)))
    assert (total, [a.id for a in page]) == (3, ["hot:d2:20"])
    assert call(store.get_alert("hot:d2:20")) == a2
    assert call(store.get_alert("nope")) is None


def test_a_replayed_copy_keeps_a_stored_acknowledgement(store: Store) -> None:
    acked = alert(
        "hot", "d1", 10, state="acknowledged", acknowledged_at=12, acknowledged_by="ana", ack_note="on it"
    )
    call(store.write_derived(Derived(alerts=[acked])))
    call(store.write_derived(Derived(alerts=[alert("hot", "d1", 10)])))  # replayed: knows no ack
    assert call(store.get_alert("hot:d1:10")) == acked
    cleared = alert("hot", "d1", 10, state="cleared", cleared_at=20, last_value=70.0)
    call(store.write_derived(Derived(alerts=[cleared])))
    got = call(store.get_alert("hot:d1:10"))
    assert (got.state, got.cleared_at, got.acknowledged_by, got.ack_note) == ("cleared", 20, "ana", "on it")


def test_definitions_create_replace_delete(store: Store) -> None:
    rule = {"id": "hot", "when": {"sensor": "t", "op": ">", "threshold": 80}}
    zone = {"id": "yard", "rectangle": {"south": 0, "west": 0, "north": 1, "east": 1}}
    call(store.put_definition("rules", "hot", rule))
    call(store.put_definition("zones", "yard", zone))
    assert call(store.definitions("rules")) == {"hot": rule}
    assert call(store.definitions("zones")) == {"yard": zone}
    changed = {**rule, "name": "Hot"}
    call(store.put_definition("rules", "hot", changed))
    assert call(store.definitions("rules")) == {"hot": changed}
    assert call(store.delete_definition("rules", "hot")) is True
    assert call(store.delete_definition("rules", "hot")) is False
    assert call(store.definitions("rules")) == {}
    assert call(store.definitions("zones")) == {"yard": zone}


def test_a_text_with_a_nul_character_finds_nothing(store: Store) -> None:
    # PostgreSQL text cannot hold one; the API refuses it in what it stores, so no store holds one.
    call(store.write_derived(Derived(alerts=[alert("hot", "d1", 10)])))
    call(store.put_definition("rules", "hot", {"id": "hot"}))
    assert call(store.get_alert("hot:d1:10\x00")) is None
    assert call(store.query_alerts(AlertQuery(device_id="d1\x00"))) == (0, [])
    assert call(store.query_alerts(AlertQuery(rule_id="\x00"))) == (0, [])
    assert call(store.delete_definition("rules", "hot\x00")) is False
    assert call(store.definitions("rules")) == {"hot": {"id": "hot"}}
