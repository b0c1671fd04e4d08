"""The seed's enum-tagged events: ``{"id": 0, "event": {"Heartbeat": {...}}}``."""

from __future__ import annotations

import json

from fleetstream.ingest.decode import decode_body
from fleetstream.ingest.formats import DecodeContext

NOW = 1_700_000_000_000_000
CTX = DecodeContext(NOW, 86_400_000_000)


def decode(items: object, ctx: DecodeContext = CTX):  # type: ignore[no-untyped-def]
    return decode_body(json.dumps(items).encode(), "json", ctx, 1000)


def test_the_three_variants_take_the_receive_time() -> None:
    out = decode(
        [
            {"id": 0, "event": "Startup"},
            {"id": 0, "event": {"Heartbeat": {"cpu_usage": 79.1, "mem_usage": 10.7}}},
            {"id": 0, "event": {"Temperature": {"temp": 21.5}}},
        ]
    )
    assert out.rejected == []
    got = [
        (m.device_id, m.ts, m.kind, [(r.sensor, r.value, r.unit) for r in m.readings]) for m in out.messages
    ]
    assert got == [
        ("0", NOW, "startup", []),
        ("0", NOW, "heartbeat", [("cpu_usage", 79.1, "%"), ("mem_usage", 10.7, "%")]),
        ("0", NOW, "temperature", [("temperature", 21.5, "°C")]),
    ]


def test_a_given_time_and_the_device_from_the_key() -> None:
    ctx = DecodeContext(NOW, 86_400_000_000, device_id="pc-7")
    out = decode({"event": {"temperature": {"temperature": "22.5"}}, "ts": 1_680_033_862_000}, ctx)
    [m] = out.messages
    assert (m.device_id, m.ts, m.readings[0].value) == ("pc-7", 1_680_033_862_000_000, 22.5)


def test_errors_name_the_field() -> None:
    out = decode(
        [
            {"id": 1, "event": "Reboot"},
            {"id": 1, "event": {"Heartbeat": {"cpu_usage": 1.0}}},
            {"id": 1, "event": {"Temperature": 21.5}},
            {"id": 1, "event": {"Temperature": {"temp": 1}, "Startup": None}},
            {"event": "Startup"},
        ]
    )
    assert out.rejected == [
        {"index": 0, "error": 'event: expected one of Startup, Heartbeat, Temperature, got "Reboot"'},
        {"index": 1, "error": "event.heartbeat.mem_usage: required for a heartbeat event"},
        {"index": 2, "error": "event.Temperature: expected an object, got 21.5"},
        {
            "index": 3,
            "error": "event: expected one of Startup, Heartbeat, Temperature, "
            "or an object with one of them as its only key",
        },
        {"index": 4, "error": "device_id: required"},
    ]
