"""Decoding of every input format, and the errors a user sees."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetstream.domain.records import DeviceMessage
from fleetstream.errors import MalformedBody, PayloadTooLarge, UnsupportedMediaType
from fleetstream.ingest.decode import body_kind, decode_body
from fleetstream.ingest.formats import DecodeContext

NOW = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
CTX = DecodeContext(NOW, 86_400_000_000)
T = "2023-03-28T20:04:22Z"
T_US = 1_680_033_862_000_000


def decode(items: object, ctx: DecodeContext = CTX, kind: str = "json", max_items: int = 1000):  # type: ignore[no-untyped-def]
    return decode_body(json.dumps(items).encode(), kind, ctx, max_items)  # type: ignore[arg-type]


def test_canonical_reading() -> None:
    out = decode({"device_id": "1", "timestamp": T, "sensor": "temperature", "value": 25.2})
    assert out.rejected == []
    (m,) = out.messages
    assert (m.device_id, m.ts, m.kind) == ("1", T_US, "telemetry")
    (r,) = m.readings
    assert (r.sensor, r.value, r.unit, r.device_type) == ("temperature", 25.2, "°C", "Sensor")


def test_ts_synonym_epoch_millis_and_seconds() -> None:
    out = decode(
        [
            {"device_id": "a", "ts": T, "sensor": "x", "value": 1},
            {"device_id": "a", "timestamp": 1_680_033_862_000, "sensor": "x", "value": 1},
            {"device_id": "a", "timestamp": 1_680_033_862, "sensor": "x", "value": 1},
            {"device_id": "a", "timestamp": "2023-03-28T22:04:22+02:00", "sensor": "x", "value": 1},
        ]
    )
    assert [m.ts for m in out.messages] == [T_US] * 4


@pytest.mark.parametrize(
    ("tag", "sensor", "unit", "type_name"),
    [
        ("Thermostat", "temperature", "°C", "Thermostat"),
        ("Barometer", "pressure", "hPa", "Barometer"),
        ("Hygrometer", "humidity", "%", "Hygrometer"),
        ("Heart Rate Meter", "heart_rate", "bpm", "Heart Rate Meter"),
        ("HeartRateMeter", "heart_rate", "bpm", "Heart Rate Meter"),
    ],
)
def test_typed_messages(tag: str, sensor: str, unit: str, type_name: str) -> None:
    value = 1013.25 if sensor == "pressure" else 60.5  # inside every type's valid range
    out = decode({"device_id": "2", "timestamp": T, sensor: value, "tag": tag})
    (m,) = out.messages
    assert [(r.sensor, r.value, r.unit, r.device_type) for r in m.readings] == [
        (sensor, value, unit, type_name)
    ]


def test_envelopes_with_numeric_strings_and_integer_ids() -> None:
    out = decode(
        [
            {"device_id": 1, "type": "startup", "ts": T},
            {
                "device_id": 1,
                "type": "heartbeat",
                "ts": T,
                "event": {"cpu_usage": "79.12", "mem_usage": "10.75"},
            },
            {"device_id": 1, "type": "temperature", "ts": T, "event": {"temperature": 48}},
        ]
    )
    assert out.rejected == []
    startup, heartbeat, temperature = out.messages
    assert (startup.kind, startup.readings, startup.device_id) == ("startup", [], "1")
    assert [(r.sensor, r.value) for r in heartbeat.readings] == [("cpu_usage", 79.12), ("mem_usage", 10.75)]
    assert [(r.sensor, r.value, r.unit) for r in temperature.readings] == [("temperature", 48.0, "°C")]


@pytest.mark.parametrize(
    ("item", "error"),
    [
        (
            {"device_id": "1", "ts": T, "sensor": "t", "value": "abc"},
            'value: expected a finite number, got "abc"',
        ),
        (
            {"device_id": "1", "ts": T, "sensor": "t", "value": "NaN"},
            'value: expected a finite number, got "NaN"',
        ),
        (
            {"device_id": "1", "ts": T, "sensor": "t", "value": True},
            "value: expected a finite number, got true",
        ),
        ({"device_id": "1", "ts": T, "sensor": "t"}, "value: required"),
        ({"ts": T, "sensor": "t", "value": 1}, "device_id: required"),
        (
            {"device_id": "a b", "ts": T, "sensor": "t", "value": 1},
            'device_id: "a b" is not a valid device id',
        ),
        ({"device_id": "1", "sensor": "t", "value": 1}, "timestamp: required"),
        (
            {"device_id": "1", "ts": "2023-03-28T20:04:22", "sensor": "t", "value": 1},
            'ts: "2023-03-28T20:04:22" has no UTC offset',
        ),
        ({"device_id": "1", "ts": "yesterday", "sensor": "t", "value": 1}, "ts: expected RFC 3339 text"),
        (
            {"device_id": "1", "ts": "2099-01-01T00:00:00Z", "sensor": "t", "value": 1},
            "ahead of the server clock",
        ),
        (
            {"device_id": "1", "ts": T, "tag": "Toaster", "temperature": 1},
            'tag: unknown device type "Toaster"',
        ),
        (
            {"device_id": "1", "ts": T, "tag": "Barometer", "temperature": 1},
            "pressure: required for a Barometer",
        ),
        (
            {"device_id": 1, "type": "heartbeat", "ts": T, "event": {"cpu_usage": 1}},
            "event.mem_usage: required",
        ),
        (
            {"device_id": 1, "type": "reboot", "ts": T, "event": {}},
            'type: expected one of startup, heartbeat, temperature, got "reboot"',
        ),
        ({"hello": "world"}, "not a recognised message"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_item_errors_name_field_and_reason(item: object, error: str) -> None:
    out = decode([{"device_id": "ok", "ts": T, "sensor": "t", "value": 1}, item])
    assert len(out.messages) == 1, "the valid item beside the bad one is kept"
    assert out.rejected[0]["index"] == 1
    assert error in out.rejected[0]["error"]


def test_readings_wrapper_and_ndjson() -> None:
    item = {"device_id": "1", "ts": T, "sensor": "t", "value": 1}
    assert decode({"readings": [item, item]}).items == 2
    body = b"\n".join([json.dumps(item).encode(), b"", b"{not json", json.dumps(item).encode()]) + b"\n"
    out = decode_body(body, "ndjson", CTX, 10)
    assert (out.items, len(out.messages)) == (3, 2)
    assert out.rejected[0]["index"] == 1
    assert out.rejected[0]["line"] == 3
    assert "malformed JSON at line 3, column 2" in out.rejected[0]["error"]


def test_malformed_json_says_where() -> None:
    with pytest.raises(MalformedBody, match=r"line 2, column 11 .*trailing comma"):
        decode_body(b'[\n  {"a": 1,}]', "json", CTX, 10)
    with pytest.raises(MalformedBody, match="empty body"):
        decode_body(b"  ", "json", CTX, 10)
    with pytest.raises(MalformedBody, match="top level"):
        decode_body(b"42", "json", CTX, 10)


def test_batch_limit() -> None:
    with pytest.raises(PayloadTooLarge, match="batch of 3 messages is over the limit of 2"):
        decode([{}, {}, {}], max_items=2)


def test_device_from_url_fills_and_must_match() -> None:
    ctx = DecodeContext(NOW, 86_400_000_000, device_id="dev-9")
    out = decode(
        [{"ts": T, "sensor": "t", "value": 1}, {"device_id": "other", "ts": T, "sensor": "t", "value": 1}],
        ctx,
    )
    assert [m.device_id for m in out.messages] == ["dev-9"]
    assert "does not match the device in the URL" in out.rejected[0]["error"]


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        (None, "json"),
        ("application/json", "json"),
        ("application/json; charset=utf-8", "json"),
        ("application/x-ndjson", "ndjson"),
        ("application/vnd.api+json", "json"),
    ],
)
def test_content_types(header: str | None, kind: str) -> None:
    assert body_kind(header) == kind


def test_form_content_type_is_refused_with_a_hint() -> None:
    with pytest.raises(UnsupportedMediaType, match="Content-Type: application/json"):
        body_kind("application/x-www-form-urlencoded")


ids = st.text(alphabet="abcXYZ019_.:@!-", min_size=1, max_size=128)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(
    device=ids,
    value=finite,
    ms=st.integers(100_000_000_000, NOW // 1000),
    # NUL is refused per item; a lone surrogate is not Unicode, so no JSON text can carry it
    sensor=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20),
)
def test_any_valid_canonical_reading_round_trips(device: str, value: float, ms: int, sensor: str) -> None:
    out = decode({"device_id": device, "timestamp": ms, "sensor": sensor, "value": value})
    assert out.rejected == []
    (r,) = out.messages[0].readings
    assert (r.device_id, r.sensor, r.value, r.ts) == (device, sensor, value, ms * 1000)


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_arbitrary_json_never_raises_anything_but_client_errors(doc: object) -> None:
    try:
        out = decode_body(json.dumps(doc).encode(), "json", CTX, 10_000)
    except (MalformedBody, PayloadTooLarge):
        return
    assert len(out.messages) + len(out.rejected) == out.items


canonical_items = st.fixed_dictionaries(
    {
        "device_id": st.one_of(ids, st.integers(-1000, 10**12)),
        "sensor": st.sampled_from(["temperature", "humidity", "x" * 128, "é", ""]),
        "value": st.one_of(finite, st.integers(-(10**6), 10**6), st.just("1.5")),
    },
    optional={
        "timestamp": st.one_of(
            st.integers(0, NOW // 1000),
            st.sampled_from(
                [T, "2023-03-28T20:04:22.5+02:00", "2023-03-28T20:04:22", "2099-01-01T00:00:00Z", None]
            ),
        ),
        "ts": st.sampled_from([T, 1_680_033_862]),
        "unit": st.sampled_from(["°C", "", None]),
        "msg_id": st.one_of(st.integers(0, 10**6), st.sampled_from(["m-1", ""])),
        "seq": st.integers(0, 10**6),
        "device_type": st.sampled_from(["Sensor", "Thermostat"]),
    },
)
typed_items = st.fixed_dictionaries(
    {
        "device_id": ids,
        "tag": st.sampled_from(["Thermostat", "HeartRateMeter", "Barometer", "Toaster"]),
        "timestamp": st.sampled_from([T, 1_680_033_862_000]),
    },
    optional={
        "temperature": finite,
        "pressure": finite,
        "heart_rate": st.integers(30, 200),
        "extra": st.just(1),
    },
)


@given(
    st.lists(canonical_items, min_size=1, max_size=8) | st.lists(typed_items, min_size=1, max_size=8),
    st.sampled_from(["json", "ndjson"]),
)
def test_fast_path_equals_general_path(items: list[dict[str, object]], kind: str) -> None:
    if kind == "json":
        body = json.dumps(items).encode()
    else:
        body = b"\n".join(json.dumps(i).encode() for i in items)
    fast = decode_body(body, kind, CTX, 100)  # type: ignore[arg-type]
    general = decode_body(body, kind, CTX, 100, fast=False)  # type: ignore[arg-type]
    assert fast.messages == general.messages
    columns = ("device_id", "ts", "sensor", "value", "unit", "device_type", "msg_id", "kind", "received_at")
    for name in columns:  # the columns themselves, not only the messages rebuilt from them
        assert getattr(fast.batch, name) == getattr(general.batch, name), name
    assert fast.batch.messages_count == general.batch.messages_count
    assert fast.rejected == general.rejected
    assert fast.items == general.items


def _fast(body: bytes) -> list[DeviceMessage] | None:
    from fleetstream.ingest.fastpath import decode_fast

    batch = decode_fast(body, CTX, 10)
    return None if batch is None else batch.messages()


def test_fast_path_takes_plain_batches() -> None:
    from fleetstream.ingest.fastpath import decode_fast

    canonical = json.dumps([{"device_id": "a", "ts": T, "sensor": "t", "value": 1.5}]).encode()
    typed = json.dumps(
        [{"device_id": 7, "timestamp": T, "humidity": 40, "tag": "Hygrometer", "seq": 3}]
    ).encode()
    assert _fast(canonical) == decode_body(canonical, "json", CTX, 10, fast=False).messages
    assert _fast(typed) == decode_body(typed, "json", CTX, 10, fast=False).messages
    both = b"[" + canonical[1:-1] + b"," + typed[1:-1] + b"]"
    assert _fast(both) == decode_body(both, "json", CTX, 10, fast=False).messages
    unknown_key = json.dumps([{"device_id": "a", "ts": T, "sensor": "t", "value": 1.5, "extra": 1}]).encode()
    assert decode_fast(unknown_key, CTX, 10) is None


def test_a_number_too_large_for_a_double_costs_only_its_item() -> None:
    body = (
        b'[{"device_id": "a", "ts": "' + T.encode() + b'", "sensor": "t", "value": 1e400},'
        b' {"device_id": "a", "ts": "' + T.encode() + b'", "sensor": "t", "value": 2}]'
    )
    out = decode_body(body, "json", CTX, 10)
    assert out.rejected == [{"index": 0, "error": "value: expected a finite number, got inf"}]
    assert out.batch.value == [2.0]


@pytest.mark.parametrize(
    ("max_future_us", "limit"),
    [(86_400_000_000, "24 h"), (7_200_000_000, "2 h"), (60_000_000, "60 s"), (5_400_000_000, "5400 s")],
)
def test_a_time_too_far_ahead_names_the_limit_readably(max_future_us: int, limit: str) -> None:
    ahead = (NOW + max_future_us) // 1_000_000 + 1  # epoch seconds, one second past the limit
    out = decode(
        [{"device_id": "1", "ts": ahead, "sensor": "t", "value": 1}], DecodeContext(NOW, max_future_us)
    )
    assert len(out.messages) == 0
    assert [r["error"] for r in out.rejected] == [
        f"ts: {ahead} is more than {limit} ahead of the server clock"
    ]
