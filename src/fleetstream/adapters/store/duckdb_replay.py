"""Reading the log back out of DuckDB as batches: the replay of every message after a log
position, and one device's rows (to rebuild its derived state).

A message's rows are adjacent in log order and share its first row's position (``msg_seq``); the
batches number each message afresh, reading-less messages after the rows, as the engine sees them
live. Functions over a connection (or a reader's cursor), called by
:class:`~fleetstream.adapters.store.duckdb.DuckDBStore` on its writer or reader threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np

from fleetstream.domain.batch import Batch, message_numbers
from fleetstream.domain.records import DeviceMessage


def device_rows(cursor: duckdb.DuckDBPyConnection, device_id: str, until: int) -> Batch:
    """The batch of ``device_id``'s messages with event time up to ``until``, in log order."""
    rows = cursor.execute(
        """SELECT seq, device_id, epoch_us(ts), sensor, value, unit, device_type, msg_id,
                  epoch_us(received_at), kind, msg_seq
           FROM readings WHERE device_id = ? AND ts <= make_timestamp(?) ORDER BY seq""",
        [device_id, until],
    ).fetchall()
    bare = cursor.execute(
        """SELECT seq, device_id, epoch_us(ts), kind, device_type, msg_id, epoch_us(received_at)
           FROM device_messages WHERE device_id = ? AND ts <= make_timestamp(?) ORDER BY seq""",
        [device_id, until],
    ).fetchall()
    return _replayed(rows, bare)


def replay(con: duckdb.DuckDBPyConnection, after: int, max_records: int) -> Batch:
    """The messages after log position ``after``: about ``max_records`` rows, never half a message."""
    spare = 1_000  # rows read past max_records so the last message is not cut in two
    # Log positions are dense (a failed write leaves a gap), so the next rows lie just after
    # ``after``: bounding the range lets DuckDB skip the row groups beyond it instead of
    # sorting the rest of the log for every batch. Unless the range holds all the rows asked
    # for (so they are exactly what the unbounded query returns), read without the bound.
    cols = _replay_rows(con, after, after + 2 * max_records + spare, max_records + spare)
    if len(cols[0]) < max_records + spare:
        cols = _replay_rows(con, after, None, max_records + spare)
    seq = np.asarray(cols[0], np.int64)
    starts = _message_starts(cols)
    if len(seq) > max_records:
        later = np.flatnonzero(starts[max_records:])
        cut = max_records + int(later[0]) if len(later) else len(seq)
        cols, seq, starts = [c[:cut] for c in cols], seq[:cut], starts[:cut]
        upper_sql, params = "seq > ? AND seq <= ?", [after, int(seq[-1])]
    else:  # the end of the readings: every reading-less message after them too
        upper_sql, params = "seq > ?", [after]
    bare = con.execute(
        f"""SELECT seq, device_id, epoch_us(ts), kind, device_type, msg_id, epoch_us(received_at)
            FROM device_messages WHERE {upper_sql} ORDER BY seq LIMIT ?""",
        [*params, max_records],
    ).fetchall()
    if len(seq) and bare:
        # Keep log order within the batch as the engine sees it live: rows, then reading-less
        # messages after all of them. Stop at the first row that follows a reading-less message.
        first_bare = bare[0][0]
        head = int(np.searchsorted(seq, first_bare, "left"))
        following = int(np.searchsorted(seq, first_bare, "right"))
        if following < len(seq):
            bare = [b for b in bare if b[0] < seq[following]]
        cols, starts = [c[:head] for c in cols], starts[:head]
    return _batch_of(cols, starts, bare)


def _replay_rows(con: duckdb.DuckDBPyConnection, after: int, upto: int | None, limit: int) -> list[list[Any]]:
    """Columns of the first ``limit`` readings after ``after`` (up to ``upto``), in log order."""
    # Through Arrow, not a Python tuple per row: a replay reads the whole log.
    table = con.sql(
        f"""SELECT seq, device_id, epoch_us(ts), sensor, value, unit, device_type, msg_id,
                       epoch_us(received_at), kind, msg_seq
                FROM readings WHERE seq > ? {"AND seq <= ?" if upto is not None else ""}
                ORDER BY seq LIMIT ?""",
        params=[after, *([upto] if upto is not None else []), limit],
    ).to_arrow_table()
    return [column.to_pylist() for column in table.columns]


def _message_of(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # A message's rows share its first row's position (older files: device, times and kind).
    return (row[10],) if row[10] is not None else (row[1], row[2], row[8], row[9])


def _replayed(rows: list[tuple[Any, ...]], bare: list[tuple[Any, ...]]) -> Batch:
    """The batch of stored rows (``seq, device_id, ts, sensor, value, unit, device_type, msg_id,
    received_at, kind, msg_seq``) and reading-less messages, in that order."""
    cols = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(11)]
    return _batch_of(cols, _message_starts(cols), bare)


def _message_starts(cols: Sequence[list[Any]]) -> np.ndarray:
    """Whether each stored row starts a message (see :func:`_message_of`), from the row columns."""
    n = len(cols[0])
    starts = np.ones(n, bool)
    msg_seq = cols[10]
    if n > 1 and None not in msg_seq:
        first = np.asarray(msg_seq, np.int64)
        np.not_equal(first[1:], first[:-1], out=starts[1:])
    elif n > 1:  # older files: rows without their message's position
        idents = [_message_of(row) for row in zip(*cols, strict=True)]
        starts[1:] = [a != b for a, b in zip(idents[1:], idents[:-1], strict=True)]
    return starts


def _batch_of(cols: Sequence[list[Any]], starts: np.ndarray, bare: list[tuple[Any, ...]]) -> Batch:
    """The batch of row columns (rows of a message adjacent, ``starts`` marking each message's
    first) and reading-less messages after them, each message with a fresh number."""
    messages = int(starts.sum())
    numbers = message_numbers(messages + len(bare))
    seq, device, ts, sensor, value, unit, device_type, msg_id, received_at, kind, _ = cols
    out = Batch(
        device_id=device,
        ts=ts,
        sensor=sensor,
        value=value,
        unit=unit,
        device_type=device_type,
        msg_id=msg_id,
        kind=kind,
        msg=(np.cumsum(starts) + (numbers.start - 1)).tolist(),
        received_at=received_at,
        seq=seq,
        messages_count=messages + len(bare),
    )
    for (seq_, device_, ts_, kind_, type_, msg_id_, received_), number in zip(
        bare, numbers[messages:], strict=True
    ):
        out.events.append(DeviceMessage(device_, ts_, kind_, type_, [], msg_id_, received_, seq_))
        out.event_msg.append(number)
    return out
