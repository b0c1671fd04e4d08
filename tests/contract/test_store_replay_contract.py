"""Replay over a long log: batches of about ``max_records`` rows, messages whole, gaps crossed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage
from fleetstream.ports import Store

from .test_store_contract import ADAPTERS, call, msg


# The stores a real deployment replays from (the in-memory double batches its own way).
@pytest.fixture(params=["duckdb", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = ADAPTERS[request.param](tmp_path, request)
    asyncio.run(s.start())
    yield s
    asyncio.run(s.close())


def log() -> list[DeviceMessage]:
    """3000 one-reading messages (the one at 1000 has two readings), a gap of log positions
    (a failed write), then a reading-less message between two more readings."""
    messages = [
        msg(seq, f"d{seq % 7}", seq, {"t": float(seq), "h": 1.0} if seq == 1000 else {"t": float(seq)})
        for seq in range(1, 3001)
    ]
    messages += [
        msg(10_000, "a", 4000, {"t": 1.5}),
        msg(10_001, "b", 4001, {}),
        msg(10_002, "a", 4002, {"t": 2.5}),
    ]
    return messages


def test_replay_walks_a_long_log_in_bounded_batches(store: Store) -> None:
    messages = log()
    for first in range(0, len(messages), 500):
        call(store.write(Batch.from_messages(messages[first : first + 500])))
    expected_rows = [(m.seq, m.device_id, r.sensor) for m in messages for r in m.readings]

    batches, after = [], 0
    while True:
        batch = call(store.replay(after, 1000))
        if not batch.records:
            break
        batches.append(batch)
        after = max(batch.seq[-1:] + [e.seq for e in batch.events])

    rows = [
        (s, d, sensor) for b in batches for s, d, sensor in zip(b.seq, b.device_id, b.sensor, strict=True)
    ]
    assert sorted(rows) == sorted(expected_rows)
    assert [s for s, _, _ in rows] == sorted(s for s, _, _ in rows)
    # About 1000 rows a batch, the two readings of message 1000 together (1001 rows in the first);
    # a reading-less message comes after the rows before it and ends its batch.
    assert [len(b) for b in batches] == [1001, 1000, 1000, 1, 1]
    assert [[e.seq for e in b.events] for b in batches] == [[], [], [], [10_001], []]
    assert [b.seq[-1] for b in batches] == [2000 - 1000, 2000, 3000, 10_000, 10_002]
    for b in batches:  # one message number per message, consecutive rows of a message share it
        by_seq = dict(zip(b.seq, b.msg, strict=True))
        assert len(set(by_seq.values())) == len(by_seq) == b.messages_count - len(b.events)
