"""A NUL character in a reading's text is refused by its item, whatever the store.

PostgreSQL text cannot hold one: were it let through, DuckDB would store the reading and PostgreSQL
refuse the whole batch (503, and in cluster mode a message no worker can ever store).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleetstream.ingest.decode import decode_body
from fleetstream.ingest.formats import DecodeContext

NOW = 1_700_000_000_000_000
CTX = DecodeContext(NOW, 86_400_000_000)


def canonical(second: int, **fields: Any) -> dict[str, Any]:
    item = {"device_id": "d1", "timestamp": f"2023-03-28T20:00:{second:02d}Z", "sensor": "t", "value": 1.5}
    return {**item, **fields}


ITEMS = [
    canonical(0, sensor="t\u0000x"),
    canonical(1, unit="a\u0000"),
    canonical(2, msg_id="m\u0000"),
    canonical(3, device_type="x\u0000"),
    {
        "device_id": "pc-1",
        "ts": "2023-03-28T20:00:04Z",
        "sensors": [{"type": "Load", "name": "CPU\u0000", "value": 3.0}],
    },
    canonical(5),
]
REJECTED = [
    {"index": 0, "error": "sensor: NUL characters (\\u0000) are not allowed"},
    {"index": 1, "error": "unit: NUL characters (\\u0000) are not allowed"},
    {"index": 2, "error": "msg_id: NUL characters (\\u0000) are not allowed"},
    {"index": 3, "error": "device_type: NUL characters (\\u0000) are not allowed"},
    {"index": 4, "error": "sensor: NUL characters (\\u0000) are not allowed"},
]


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path-allowed", "general-path"])
def test_each_item_with_a_nul_is_rejected_and_the_others_kept(fast: bool) -> None:
    out = decode_body(json.dumps(ITEMS).encode(), "json", CTX, 100, fast=fast)
    assert out.rejected == REJECTED
    assert [(m.ts, [r.sensor for r in m.readings]) for m in out.messages] == [(1_680_033_605_000_000, ["t"])]


def test_ndjson_too() -> None:
    body = b"\n".join(json.dumps(item).encode() for item in ITEMS)
    out = decode_body(body, "ndjson", CTX, 100)
    assert [(r["index"], r["error"]) for r in out.rejected] == [(r["index"], r["error"]) for r in REJECTED]
    assert len(out.messages) == 1


def test_an_escaped_backslash_before_u0000_is_no_nul() -> None:
    out = decode_body(json.dumps([canonical(0, sensor="t\\u0000")]).encode(), "json", CTX, 100)
    assert out.rejected == []
    assert out.messages[0].readings[0].sensor == "t\\u0000"
