"""A worker's polling loop while PostgreSQL is away: one warning when the outage starts and one
line when the store answers again, not a traceback per poll (ten a second)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest

from fleetstream.cluster import worker_rules
from fleetstream.cluster.outage import OutageLog
from fleetstream.cluster.worker_rules import WorkerRules
from fleetstream.config import load_settings
from fleetstream.errors import StoreError

if TYPE_CHECKING:
    from fleetstream.cluster.worker import Worker


def test_the_rules_loop_logs_an_outage_once_and_its_end(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_rules, "COMMAND_POLL_S", 0.01)
    monkeypatch.setattr(worker_rules, "PRUNE_EVERY_S", 3600.0)
    worker = SimpleNamespace(settings=load_settings(), worker_id="w-1", partitions={}, store=None)
    rules = WorkerRules(cast("Worker", worker))
    polls: list[int] = []

    async def apply_commands() -> None:
        polls.append(1)
        if 2 <= len(polls) <= 21:  # twenty polls while the store is away
            raise StoreError("PostgreSQL unreachable: connection refused")

    async def prune(store: object, before_us: int) -> int:
        return 0

    monkeypatch.setattr(rules, "apply_commands", apply_commands)
    monkeypatch.setattr(rules, "reload", lambda: asyncio.sleep(0, result=False))
    monkeypatch.setattr(worker_rules.writes, "prune", prune)
    worker.clock = SimpleNamespace(now_us=lambda: 0)

    async def run() -> None:
        task = asyncio.create_task(rules._poll_forever())
        while len(polls) < 25:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.INFO, logger=worker_rules.__name__):
        asyncio.run(run())

    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == worker_rules.__name__]
    assert lines == [
        (
            "WARNING",
            "worker w-1: rule changes and commands wait for the store, retrying: "
            "PostgreSQL unreachable: connection refused",
        ),
        (
            "INFO",
            "worker w-1: rule changes and commands resume: the store answers again after 20 failed polls",
        ),
    ]
    assert not any(r.exc_info for r in caplog.records)


def test_an_outage_log_counts_each_outage_on_its_own(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("fleetstream.test_outage")
    outage = OutageLog(log, "loop")
    with caplog.at_level(logging.INFO, logger=log.name):
        outage.succeeded()  # nothing to say while the store answers
        for _ in range(3):
            outage.failed(StoreError("away"))
        outage.succeeded()
        outage.failed(StoreError("away again"))
        outage.succeeded()
    assert [r.getMessage() for r in caplog.records] == [
        "loop wait for the store, retrying: away",
        "loop resume: the store answers again after 3 failed polls",
        "loop wait for the store, retrying: away again",
        "loop resume: the store answers again after 1 failed polls",
    ]
