"""Log positions of cluster workers: derived from (partition, offset), in log order, never reused."""

from __future__ import annotations

import pytest

from fleetstream.adapters.bus.codec import read_pack, split_by_partition
from fleetstream.cluster.partitions import log_position, partition_batch
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage, Reading


def test_positions_grow_with_the_offset_and_differ_between_partitions() -> None:
    assert log_position(0, 0, 0) == 1 << 24  # never 0: a fresh processor's position
    assert log_position(3, 7, 2) == (8 << 24) | (3 << 16) | 2
    assert log_position(0, 7, 65535) < log_position(0, 8, 0)
    assert log_position(1, 5, 0) != log_position(2, 5, 0)


def test_a_partition_batch_numbers_rows_then_events_of_each_message() -> None:
    first = Batch.from_messages(
        [DeviceMessage("d", 1, "telemetry", "Sensor", [Reading("d", 1, "t", 1.0), Reading("d", 1, "h", 2.0)])]
    )
    second = Batch.from_messages([DeviceMessage("d", 2, "startup", "Host", [])])
    pieces = [(10, read_pack(data)) for _, data in split_by_partition(first, 8)]
    pieces += [(11, read_pack(data)) for _, data in split_by_partition(second, 8)]

    batch = partition_batch(5, pieces)

    assert batch.seq == [log_position(5, 10, 0), log_position(5, 10, 1)]
    assert [e.seq for e in batch.events] == [log_position(5, 11, 0)]


def test_a_message_with_too_many_records_is_refused() -> None:
    readings = [Reading("d", i, "t", 1.0) for i in range((1 << 16) + 1)]
    big = Batch.from_messages([DeviceMessage("d", 1, "telemetry", "Sensor", readings)])
    pieces = [(0, read_pack(data)) for _, data in split_by_partition(big, 8)]
    with pytest.raises(ValueError, match="65537 records is over 65536"):
        partition_batch(0, pieces)
