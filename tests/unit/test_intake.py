"""The intake of device-side sources on the in-process pipeline: what is stored, what becomes a dead
letter, when a message may be acknowledged. (Over a real broker: tests/integration/test_mqtt.py.)"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fleetstream.errors import BusUnavailable, Overloaded, StoreError
from fleetstream.ingest.gateway import Gateway, IngestResult
from fleetstream.ingest.intake import Intake
from fleetstream.testing import Harness

TOPIC = "devices/d-1/telemetry"


def reading(ts: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {"timestamp": f"2023-03-28T20:00:{ts}Z", "sensor": "temperature", "value": value, **extra}


async def take(
    payload: bytes | Any, device: str | None = "d-1", topic: str = TOPIC
) -> tuple[bool, Harness, Intake]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    async with Harness() as h:
        intake = Intake(h.runtime.gateway, h.store, h.clock, "mqtt")
        done = await intake.take(raw, topic, device, asyncio.Event())
    return done, h, intake


def test_a_good_payload_is_stored_with_the_device_from_the_topic() -> None:
    done, h, intake = asyncio.run(take([reading("00", 1.5), reading("01", 2.5)]))

    assert done
    assert [(r.device_id, r.value) for r in h.store.readings] == [("d-1", 1.5), ("d-1", 2.5)]
    assert h.store.letters == []
    assert intake.dead_letters_total == 0


def test_the_device_in_the_payload_is_used_when_the_topic_has_none() -> None:
    done, h, _ = asyncio.run(take(reading("00", 1.0, device_id="p-9"), device=None, topic="telemetry"))

    assert done
    assert [r.device_id for r in h.store.readings] == ["p-9"]


def test_malformed_json_is_a_dead_letter_with_the_raw_bytes() -> None:
    payload = b'{"timestamp": "2023-03-28T20:00:00Z", \xff'
    done, h, intake = asyncio.run(take(payload))

    assert done  # acknowledged: the broker must not re-send it forever
    assert h.store.readings == []
    [letter] = h.store.letters
    assert (letter.source, letter.topic, letter.payload) == ("mqtt", TOPIC, payload)
    assert letter.reason.startswith("malformed JSON at line 1, column 39 (byte 38)")
    assert letter.received_at == h.clock.now_us()
    assert intake.dead_letters_total == 1


def test_valid_items_are_kept_beside_invalid_ones() -> None:
    payload = [reading("00", 1.0), reading("01", "abc"), reading("02", 3.0)]
    done, h, _ = asyncio.run(take(payload))

    assert done
    assert [r.value for r in h.store.readings] == [1.0, 3.0]
    [letter] = h.store.letters
    error = 'value: expected a finite number, got "abc"'
    assert letter.reason == f"1 of 3 items rejected; first: {error}"
    assert letter.errors == ({"index": 1, "error": error},)
    assert json.loads(letter.payload) == payload


def test_ndjson_payloads_are_read_line_by_line() -> None:
    lines = [json.dumps(reading("00", 1.0)), "not json", json.dumps(reading("01", 2.0))]
    done, h, _ = asyncio.run(take("\n".join(lines).encode()))

    assert done
    assert [r.value for r in h.store.readings] == [1.0, 2.0]
    [letter] = h.store.letters
    assert letter.reason.startswith("1 of 3 items rejected; first: malformed JSON at line 2")
    assert letter.errors[0]["index"] == 1


@pytest.mark.parametrize(
    ("payload", "device", "reason"),
    [
        (b"[]", "d-1", "the batch is empty"),
        (b"", "d-1", "empty body"),
        (
            json.dumps(reading("00", 1.0)).encode(),
            "no spaces allowed",
            "topic level 'no spaces allowed' is not a valid device id",
        ),
        (
            json.dumps(reading("00", 1.0, device_id="other")).encode(),
            "d-1",
            '1 of 1 items rejected; first: device_id: "other" does not match the device in the URL (d-1)',
        ),
    ],
)
def test_unusable_payloads_are_dead_letters(payload: bytes, device: str, reason: str) -> None:
    done, h, _ = asyncio.run(take(payload, device=device))

    assert done
    assert h.store.readings == []
    [letter] = h.store.letters
    assert letter.reason.startswith(reason)


class _Refusing:
    """The real gateway behind ``refusals`` back-pressure errors (a full queue, then the log down)."""

    def __init__(self, gateway: Gateway, refusals: list[Exception]) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.refusals = refusals
        self.calls = 0

    async def ingest(
        self,
        body: bytes,
        content_type: str | None,
        device_id: str | None = None,
        received_at: int | None = None,
    ) -> IngestResult:
        self.calls += 1
        if self.refusals:
            raise self.refusals.pop(0)
        return await self.gateway.ingest(body, content_type, device_id, received_at)


def test_back_pressure_is_retried_after_a_pause_then_stored() -> None:
    async def run() -> tuple[bool, float, Harness, Intake, _Refusing]:
        async with Harness() as h:
            refusing = _Refusing(
                h.runtime.gateway, [Overloaded("queue full", retry_after=0.2), BusUnavailable("down")]
            )
            intake = Intake(refusing, h.store, h.clock, "mqtt")  # type: ignore[arg-type]
            began = asyncio.get_running_loop().time()
            done = await intake.take(json.dumps(reading("00", 1.0)).encode(), TOPIC, "d-1", asyncio.Event())
            took = asyncio.get_running_loop().time() - began
        return done, took, h, intake, refusing

    done, took, h, intake, refusing = asyncio.run(run())

    assert done
    assert (refusing.calls, intake.retries_total) == (3, 2)
    assert took >= 0.025 + 0.05  # paused (at least half of 50 ms, then of 100 ms): no spinning
    assert [r.value for r in h.store.readings] == [1.0]
    assert intake.last_error == "down"


def test_stopping_during_back_pressure_gives_up_without_acknowledging() -> None:
    async def run() -> tuple[bool, Harness]:
        async with Harness() as h:
            refusing = _Refusing(h.runtime.gateway, [Overloaded("queue full", retry_after=30)] * 100)
            intake = Intake(refusing, h.store, h.clock, "mqtt")  # type: ignore[arg-type]
            stop = asyncio.Event()
            task = asyncio.create_task(intake.take(b"{}", TOPIC, "d-1", stop))
            await asyncio.sleep(0.3)
            stop.set()
            done = await asyncio.wait_for(task, 2)
        return done, h

    done, h = asyncio.run(run())

    assert not done
    assert (h.store.readings, h.store.letters) == ([], [])


def test_a_dead_letter_the_store_cannot_take_is_retried() -> None:
    async def run() -> tuple[bool, Harness, Intake]:
        async with Harness() as h:
            h.store.fail_next = StoreError("disk full")
            intake = Intake(h.runtime.gateway, h.store, h.clock, "mqtt")
            done = await intake.take(b"{", TOPIC, "d-1", asyncio.Event())
        return done, h, intake

    done, h, intake = asyncio.run(run())

    assert done
    assert intake.retries_total == 1
    assert [d.payload for d in h.store.letters] == [b"{"]
