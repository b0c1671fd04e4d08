"""The model registry part of the Store port, the same for every adapter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetstream.adapters.store.duckdb import DuckDBStore
from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.domain.federated import LogisticModel, ModelRound
from fleetstream.ports import Store

from .test_store_contract import ADAPTERS


@pytest.fixture(params=list(ADAPTERS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = ADAPTERS[request.param](tmp_path, request)
    asyncio.run(s.start())
    yield s
    asyncio.run(s.close())


def _round(n: int, auc: float) -> ModelRound:
    params = LogisticModel(("a", "b"), [1.0, 2.0], [0.5, 3.0], [0.25 * n, -1.5], 0.125).to_dict()
    return ModelRound(
        n, f"v-r{n}", params, 3, 100 * n, {"auc": auc, "log_loss": 0.5}, 1_700_000_000_123_456 + n
    )


def test_rounds_are_listed_oldest_first_and_a_saved_round_number_is_replaced(store: Store) -> None:
    assert asyncio.run(store.list_model_rounds()) == []
    for r in (_round(2, 0.8), _round(1, 0.7), _round(3, 0.9)):
        asyncio.run(store.save_model_round(r))
    asyncio.run(store.save_model_round(_round(2, 0.85)))
    assert asyncio.run(store.list_model_rounds()) == [_round(1, 0.7), _round(2, 0.85), _round(3, 0.9)]


def _write_then_read(make: Callable[[], Store]) -> list[ModelRound]:
    async def run() -> list[ModelRound]:
        first = make()
        await first.start()
        await first.save_model_round(_round(1, 0.7))
        await first.close()
        again = make()
        await again.start()
        try:
            return await again.list_model_rounds()
        finally:
            await again.close()

    return asyncio.run(run())


def test_duckdb_keeps_rounds_across_reopen(tmp_path: Path) -> None:
    url = f"duckdb:///{tmp_path / 'm.duckdb'}"
    assert _write_then_read(lambda: DuckDBStore(url)) == [_round(1, 0.7)]


def test_postgresql_keeps_rounds_across_reopen(postgres_url: str) -> None:
    assert _write_then_read(lambda: PostgresStore(postgres_url)) == [_round(1, 0.7)]
