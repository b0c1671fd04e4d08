"""A cluster api re-reads the rule and zone definitions every second: GET /api/v1/rules must keep
showing the last definitions read while the store is away, and never an empty or half-read set
while a re-read is under way (it answered {"rules": []} in both cases)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest

from fleetstream.cluster.api_writes import ClusterRuleControl
from fleetstream.engine.rule_control import RULES, ZONES
from fleetstream.errors import StoreError

if TYPE_CHECKING:
    from fleetstream.adapters.store.postgres import PostgresStore
    from fleetstream.engine.pipeline import Engine

HOT = {"id": "hot", "when": {"sensor": "temperature", "op": ">", "threshold": 80}}
DEPOT = {"id": "depot", "rectangle": {"south": 52.38, "west": 4.76, "north": 52.42, "east": 4.84}}


class Store:
    """The definitions tables; ``down`` makes reads fail, ``gate`` holds the zones read."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict[str, Any]]] = {RULES: {"hot": HOT}, ZONES: {"depot": DEPOT}}
        self.down = False
        self.gate: asyncio.Event | None = None

    async def definitions(self, kind: str) -> dict[str, dict[str, Any]]:
        if self.down:
            raise StoreError("PostgreSQL unreachable: connection refused")
        if kind == ZONES and self.gate is not None:
            await self.gate.wait()
        return dict(self.tables[kind])


def _control(store: Store) -> ClusterRuleControl:
    engine = SimpleNamespace(store=store, processors=SimpleNamespace(set_rules=lambda rules, zones: None))
    return ClusterRuleControl(cast("Engine", engine), cast("PostgresStore", store))


def test_the_last_definitions_read_stay_while_the_store_is_away() -> None:
    store = Store()
    control = _control(store)

    async def run() -> None:
        await control.refresh()
        store.down = True
        with pytest.raises(StoreError):
            await control.refresh()

    asyncio.run(run())
    assert control.listing(RULES) == [HOT]
    assert control.listing(ZONES) == [DEPOT]


def test_a_reader_during_a_re_read_sees_the_previous_set_whole() -> None:
    store = Store()
    control = _control(store)

    async def run() -> tuple[list[Any], list[Any], list[Any]]:
        await control.refresh()
        store.tables[RULES] = {"hot": HOT, "cold": {**HOT, "id": "cold"}}
        store.gate = asyncio.Event()
        refresh = asyncio.create_task(control.refresh())
        await asyncio.sleep(0.01)  # rules read, zones read pending
        during = control.listing(RULES), control.listing(ZONES)
        store.gate.set()
        await refresh
        return *during, control.listing(RULES)

    rules_during, zones_during, rules_after = asyncio.run(run())
    assert (rules_during, zones_during) == ([HOT], [DEPOT])
    assert rules_after == [{**HOT, "id": "cold"}, HOT]
