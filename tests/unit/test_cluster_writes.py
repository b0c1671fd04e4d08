"""Where a command goes: the readings partition a device's stored twin position names."""

from __future__ import annotations

import pytest

from fleetstream.cluster.partitions import MAX_PARTITIONS, log_position
from fleetstream.cluster.writes import partition_of


@pytest.mark.parametrize("partition", [0, 1, 7, 200, MAX_PARTITIONS - 1])
@pytest.mark.parametrize(("offset", "index"), [(0, 0), (12345, 3), ((1 << 39) - 2, (1 << 16) - 1)])
def test_partition_of_reads_back_the_partition_of_a_log_position(
    partition: int, offset: int, index: int
) -> None:
    assert partition_of(log_position(partition, offset, index)) == partition
