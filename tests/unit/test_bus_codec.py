"""The Kafka bus's message bytes: a batch split per device and joined again is the same batch."""

from __future__ import annotations

import msgspec
import pytest

from fleetstream.adapters.bus.codec import (
    UndecodableMessage,
    decode_slice,
    join_slices,
    read_slice,
    split_by_device,
)
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage, Reading


def messages() -> list[DeviceMessage]:
    return [
        DeviceMessage(
            "a", 1, "telemetry", "T", [Reading("a", 1, "t", 1.5, "°C", "T"), Reading("a", 1, "h", 2.0)]
        ),
        DeviceMessage("b", 2, "startup", "Sensor", [], "boot-1", 20),
        DeviceMessage("a", 3, "telemetry", "T", [Reading("a", 3, "t", -0.5, None, "T", "m-7")], "m-7", 30),
        DeviceMessage("b", 4, "heartbeat", "Sensor", [Reading("b", 4, "cpu", 79.1)], None, 40),
        DeviceMessage("a", 5, "startup", "T", [], None, 50),
    ]


def test_split_per_device_in_order_of_first_appearance() -> None:
    pieces = list(split_by_device(Batch.from_messages(messages())))
    assert [key for key, _ in pieces] == ["a", "b"]
    assert [read_slice(data).records for _, data in pieces] == [3 + 1, 1 + 1]


def test_joined_slices_give_back_each_devices_messages() -> None:
    sent = messages()
    joined = join_slices([read_slice(data) for _, data in split_by_device(Batch.from_messages(sent))])
    assert joined.messages() == [m for m in sent if m.device_id == "a"] + [
        m for m in sent if m.device_id == "b"
    ]
    assert joined.messages_count == 5
    assert len(set(joined.msg) | set(joined.event_msg)) == 5  # fresh numbers, none shared


def test_the_log_position_travels_when_the_batch_has_one() -> None:
    batch = Batch.from_messages(messages())
    batch.seq = list(range(101, 101 + len(batch)))
    rows_of_a = batch.take([0, 1, 2])
    rows_of_a.events, rows_of_a.event_msg = [], []
    [(_, data)] = split_by_device(rows_of_a)
    assert decode_slice(data).seq == [101, 102, 103]


@pytest.mark.parametrize("data", [b"", b"\x93\x01\x02", msgspec.json.encode({"device_id": "x"})])
def test_bytes_that_are_not_a_slice_are_refused(data: bytes) -> None:
    with pytest.raises(UndecodableMessage, match="not a fleetstream batch slice"):
        read_slice(data)
