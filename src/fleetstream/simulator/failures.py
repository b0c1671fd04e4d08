"""The ground truth of failures: when each simulated device degraded, started failing and failed.

A failure predictor is scored against this file: a prediction made between
``degraded_at`` and ``failed_at`` is a hit; one for a device with no episode
at that time is a false alarm. Episodes that ended in recovery are kept too
(``recovered_at`` set, ``failed_at`` null): degradations a predictor may flag
but that never became failures.

JSON lines (one episode per line) unless the file name ends in ``.csv``;
``docs/simulator.md`` describes both.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from fleetstream.domain.failure_truth import Outage
from fleetstream.simulator.fleet import Fleet
from fleetstream.simulator.models import iso_ms

COLUMNS = ("device_id", "type", "degraded_at", "failing_at", "failed_at", "recovered_at")


def failure_rows(fleet: Fleet) -> list[dict[str, Any]]:
    """Every degradation episode so far, in the order they began, with event times as RFC 3339 text.

    Example:
        >>> from fleetstream.simulator.lifecycle import DEGRADED
        >>> fleet = Fleet(1, seed=1, kinds={"host": 1})
        >>> _ = fleet.advance(0.0, 1_680_033_862_000_000)
        >>> _ = fleet.life.force(0, DEGRADED, 30.0)
        >>> failure_rows(fleet)[0]["degraded_at"]
        '2023-03-28T20:04:52.000Z'
    """
    origin = fleet.origin_us or 0

    def at(seconds: float | None) -> str | None:
        return None if seconds is None else iso_ms(origin + round(seconds * 1_000_000))

    return [
        {
            "device_id": fleet.devices[e.device].device_id,
            "type": fleet.devices[e.device].kind.device_type.name,
            "degraded_at": at(e.degraded_at_s),
            "failing_at": at(e.failing_at_s),
            "failed_at": at(e.failed_at_s),
            "recovered_at": at(e.recovered_at_s),
        }
        for e in fleet.life.episodes
    ]


def fleet_outages(fleet: Fleet, origin_us: int | None = None) -> dict[str, list[Outage]]:
    """Every degradation episode so far as the predictor's ground truth, by device, times in µs.

    ``origin_us`` is the event time of the fleet's second 0 (default: the fleet's own origin).
    """
    origin = (fleet.origin_us or 0) if origin_us is None else origin_us

    def at(seconds: float | None) -> int | None:
        return None if seconds is None else origin + round(seconds * 1_000_000)

    out: dict[str, list[Outage]] = {}
    for e in fleet.life.episodes:
        device_id = fleet.devices[e.device].device_id
        outage = Outage(
            device_id,
            origin + round(e.degraded_at_s * 1e6),
            at(e.failing_at_s),
            at(e.failed_at_s),
            at(e.recovered_at_s),
        )
        out.setdefault(device_id, []).append(outage)
    return out


def write_failures(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the episodes to ``path`` (CSV when it ends in ``.csv``, else JSON lines), atomically.

    Raises:
        OSError: the file cannot be written.
    """
    if path.suffix.lower() == ".csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        text = out.getvalue()
    else:
        text = "".join(json.dumps(row) + "\n" for row in rows)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
