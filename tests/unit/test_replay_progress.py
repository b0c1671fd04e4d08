"""The progress line of a long replay: position, records/s and time left."""

from __future__ import annotations

from fleetstream.engine.progress import replay_progress


def test_rate_and_time_left_from_what_is_done() -> None:
    # 300k of the 1.2M positions after the checkpoint at 200k, in 3 s: 100k/s, 900k to go = 9 s.
    line = replay_progress(300_000, 500_000, 200_000, 1_400_000, 3.0)
    assert line == "replaying the log: position 500,000 of 1,400,000 (25%), 100,000 records/s, about 9 s left"


def test_minutes_and_hours_left() -> None:
    assert replay_progress(1_000, 1_000, 0, 126_000, 1.0).endswith("about 2 min 5 s left")
    assert replay_progress(1_000, 1_000, 0, 3_781_000, 1.0).endswith("about 1 h 3 min left")


def test_nothing_done_yet() -> None:
    assert replay_progress(0, 10, 10, 50, 0.0) == (
        "replaying the log: position 10 of 50 (0%), 0 records/s, time left unknown"
    )
