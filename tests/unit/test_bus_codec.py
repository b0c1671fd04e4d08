"""The Kafka bus's message bytes: a batch split per partition and joined again is the same batch."""

from __future__ import annotations

import zlib

import msgspec
import pytest

from fleetstream.adapters.bus import codec
from fleetstream.adapters.bus.codec import (
    UndecodableMessage,
    decode_pack,
    join_packs,
    partition_of,
    read_pack,
    split_by_partition,
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


def test_the_partition_is_the_crc32_of_the_device_id_modulo_the_count() -> None:
    # fixed values: a change of the hash would move devices between partitions
    assert zlib.crc32(b"a") == 0xE8B7BE43
    assert partition_of("a", 8) == 0xE8B7BE43 % 8 == 3
    assert partition_of("b", 8) == zlib.crc32(b"b") % 8 == 1
    assert partition_of("ü-1", 5) == zlib.crc32("ü-1".encode()) % 5
    assert partition_of("a", 1) == 0


def test_one_pack_per_partition_in_partition_order() -> None:
    pieces = split_by_partition(Batch.from_messages(messages()), 8)
    assert [p for p, _ in pieces] == [1, 3]  # "b" on 1, "a" on 3
    assert [read_pack(data).records for _, data in pieces] == [1 + 1, 3 + 1]
    [(only, data)] = split_by_partition(Batch.from_messages(messages()), 1)
    assert only == 0
    assert read_pack(data).records == 6
    assert read_pack(data).device_id == ["a", "a", "a", "b"]


def test_joined_packs_give_back_each_partitions_messages_in_order() -> None:
    sent = messages()
    joined = join_packs([read_pack(data) for _, data in split_by_partition(Batch.from_messages(sent), 8)])
    assert joined.messages() == [m for m in sent if m.device_id == "b"] + [
        m for m in sent if m.device_id == "a"
    ]
    assert joined.messages_count == 5
    assert len(set(joined.msg) | set(joined.event_msg)) == 5  # fresh numbers, none shared


def test_one_partition_keeps_the_whole_batch_in_its_order() -> None:
    sent = messages()
    [(_, data)] = split_by_partition(Batch.from_messages(sent), 1)
    assert decode_pack(data).messages() == sent


def test_a_big_share_is_cut_into_packs_between_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_PACK_RECORDS", 4)
    sent = messages() * 2
    pieces = split_by_partition(Batch.from_messages(sent), 1)
    packs = [read_pack(data) for _, data in pieces]
    # records per message: 2, 1, 1, 1, 1 then again; a pack closes at 4 or more, never mid-message
    assert [p.records for p in packs] == [2 + 1 + 1, 1 + 1 + 2, 1 + 1 + 1 + 1]
    assert join_packs(packs).messages() == sent


def test_the_log_position_travels_when_the_batch_has_one() -> None:
    batch = Batch.from_messages(messages())
    batch.seq = list(range(101, 101 + len(batch)))
    rows_of_a = batch.take([0, 1, 2])
    rows_of_a.events, rows_of_a.event_msg = [], []
    [(_, data)] = split_by_partition(rows_of_a, 8)
    assert decode_pack(data).seq == [101, 102, 103]


@pytest.mark.parametrize("data", [b"", b"\x93\x01\x02", msgspec.json.encode({"device_id": "x"})])
def test_bytes_that_are_not_a_pack_are_refused(data: bytes) -> None:
    with pytest.raises(UndecodableMessage, match="not a fleetstream batch pack"):
        read_pack(data)
