"""Time buckets of series: duration text, alignment (epoch, midnight in a zone), counting, picking."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetstream.domain.buckets import (
    DAY_US,
    MAX_BUCKET_US,
    NICE_BUCKETS,
    Buckets,
    format_bucket,
    parse_bucket,
    pick_bucket,
    zone,
)
from fleetstream.domain.timeutil import MAX_US, MIN_US, datetime_to_us

S = 1_000_000
H = 3_600 * S
AMS = ZoneInfo("Europe/Amsterdam")


def us(text: str) -> int:
    return datetime_to_us(datetime.fromisoformat(text))


@pytest.mark.parametrize(
    ("text", "width"),
    [
        ("500ms", 500_000),
        ("10s", 10 * S),
        ("1m", 60 * S),
        ("15m", 900 * S),
        ("1h", H),
        ("1h30m", 90 * 60 * S),
        ("1d", DAY_US),
        ("24h", DAY_US),
        ("7d", 7 * DAY_US),
        ("2w", 14 * DAY_US),
        ("250us", 250),
        (" 10s ", 10 * S),
        ("PT5M", 300 * S),
        ("pt1h30m", 90 * 60 * S),
        ("PT0.5S", 500_000),
        ("PT1,25S", 1_250_000),
        ("P1D", DAY_US),
        ("P1W", 7 * DAY_US),
        ("P1DT0H", DAY_US),
    ],
)
def test_parse_bucket(text: str, width: int) -> None:
    assert parse_bucket(text) == width


EXPECTED_TEXT = "expected a duration like 500ms, 10s, 1m, 15m, 1h, 1d, 7d or ISO 8601 like PT5M"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0s", "must be longer than 0, got '0s'"),
        ("PT0S", "must be longer than 0, got 'PT0S'"),
        ("-5s", "must be longer than 0, got '-5s'"),
        ("5 minutes", f"{EXPECTED_TEXT}, got '5 minutes'"),
        ("1.5h", f"{EXPECTED_TEXT}, got '1.5h'"),
        ("10", f"{EXPECTED_TEXT}, got '10'"),
        ("", f"{EXPECTED_TEXT}, got ''"),
        ("P", f"{EXPECTED_TEXT}, got 'P'"),
        ("PT", f"{EXPECTED_TEXT}, got 'PT'"),
        ("P1M", "months and years have no fixed length: use days (e.g. 30d, 365d), got 'P1M'"),
        ("P1Y2M", "months and years have no fixed length: use days (e.g. 30d, 365d), got 'P1Y2M'"),
        ("36h", "a bucket of a day or more must be whole days (1d, 2d, 7d, ...), got '36h'"),
        ("1d1s", "a bucket of a day or more must be whole days (1d, 2d, 7d, ...), got '1d1s'"),
        ("9999999d", "must be at most 3660000d, got '9999999d'"),
    ],
)
def test_parse_bucket_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_bucket(text)


@given(st.integers(1, MAX_BUCKET_US))
def test_format_bucket_parses_back(width: int) -> None:
    if width >= DAY_US:
        width -= width % DAY_US
    assert parse_bucket(format_bucket(width)) == width


def test_unknown_zones() -> None:
    assert zone("Europe/Amsterdam") == AMS
    for name in ("Mars/Base", "europe/amsterdam", "localtime", "", "../../etc/passwd"):
        with pytest.raises(ValueError, match=f"^unknown time zone '{re.escape(name)}'$"):
            zone(name)


def test_sub_day_buckets_start_on_multiples_since_the_epoch_whatever_the_zone() -> None:
    for tz in ("UTC", "Asia/Kolkata", "America/St_Johns"):
        seven = Buckets(7 * S, tz)
        assert seven.start_of(0) == 0
        assert seven.start_of(13 * S) == 7 * S
        assert seven.start_of(14 * S) == 14 * S
        assert seven.start_of(-1) == -7 * S  # before the epoch: floor, not truncation
        assert Buckets(H, tz).start_of(us("2024-03-31T02:59:59+00:00")) == us("2024-03-31T02:00:00+00:00")


def test_day_buckets_follow_midnight_in_the_zone_across_dst() -> None:
    day = Buckets(DAY_US, "Europe/Amsterdam")
    starts = day.starts(us("2024-03-30T12:00:00+00:00"), us("2024-04-01T12:00:00+00:00"))

    assert starts == [
        us("2024-03-30T00:00:00+01:00"),
        us("2024-03-31T00:00:00+01:00"),
        us("2024-04-01T00:00:00+02:00"),
    ]
    assert [b - a for a, b in itertools.pairwise(starts)] == [24 * H, 23 * H]
    autumn = day.starts(us("2024-10-27T00:00:00+02:00"), us("2024-10-28T00:00:00+01:00") + 1)
    assert autumn[1] - autumn[0] == 25 * H
    # 23:30 UTC on the 30th is already the 31st in Amsterdam.
    assert day.start_of(us("2024-03-30T23:30:00+00:00")) == us("2024-03-31T00:00:00+01:00")
    assert day.show(starts[1]) == "2024-03-31T00:00:00+01:00"
    assert day.show(starts[2]) == "2024-04-01T00:00:00+02:00"


def test_week_buckets_start_on_monday_midnight() -> None:
    week = Buckets(7 * DAY_US, "America/New_York")
    start = week.start_of(us("2024-03-14T12:00:00+00:00"))  # a Thursday

    assert datetime.fromtimestamp(start / S, ZoneInfo("America/New_York")).isoformat() == (
        "2024-03-11T00:00:00-04:00"  # the Monday, already in summer time (since the 10th)
    )
    assert Buckets(7 * DAY_US).start_of(us("2000-01-09T23:59:59+00:00")) == us("2000-01-03T00:00:00+00:00")


def test_midnight_skipped_or_repeated() -> None:
    """Santiago goes forward at 00:00 (the day starts at 01:00); the Azores go back from 01:00 to
    00:00 (the day starts at the first midnight, and is 25 h long)."""
    santiago = Buckets(DAY_US, "America/Santiago")
    assert santiago.start_of(us("2024-09-08T12:00:00-03:00")) == us("2024-09-08T01:00:00-03:00")
    azores = Buckets(DAY_US, "Atlantic/Azores")
    first = azores.start_of(us("2024-10-27T12:00:00+00:00"))
    assert first == us("2024-10-27T00:00:00+00:00")  # 00:00 local, still UTC+0 summer time
    assert azores.start_of(us("2024-10-28T12:00:00-01:00")) - first == 25 * H


@given(st.integers(us("1980-01-01T00:00:00+00:00"), us("2100-01-01T00:00:00+00:00")))
def test_day_bucket_holds_the_instant_and_starts_at_local_midnight(ts: int) -> None:
    day = Buckets(DAY_US, "Europe/Amsterdam")
    start = day.start_of(ts)
    local = datetime.fromtimestamp(start / S, AMS)
    moment = datetime.fromtimestamp(ts // S, AMS)

    assert start <= ts
    assert (local.date(), local.time().isoformat()) == (moment.date(), "00:00:00")


def test_count_of_buckets_meeting_a_range() -> None:
    assert Buckets(10 * S).count(0, H) == 360
    assert Buckets(10 * S).count(1, H + 1) == 361  # unaligned: a partial bucket at each end
    assert Buckets(7 * S).count(0, 60 * S) == 9
    assert (
        Buckets(DAY_US, "Europe/Amsterdam").count(
            us("2024-03-30T23:00:00+00:00"), us("2024-04-01T00:00:00+00:00")
        )
        == 2
    )


def test_show_uses_z_for_utc_and_the_offset_otherwise() -> None:
    t = us("2024-03-31T01:00:00.5+00:00")

    assert Buckets(H).show(t) == "2024-03-31T01:00:00.500000Z"
    assert Buckets(H, "Europe/Amsterdam").show(t) == "2024-03-31T03:00:00.500000+02:00"
    assert Buckets(H, "Europe/London").show(us("2024-01-01T00:00:00+00:00")) == "2024-01-01T00:00:00+00:00"
    # Local mean time (before 1940 here) has an offset in seconds, which RFC 3339 cannot write.
    assert Buckets(H, "Europe/Amsterdam").show(us("1900-06-01T00:00:00+00:00")) == "1900-06-01T00:00:00Z"


def test_buckets_beyond_what_can_be_shown_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^7s buckets in UTC near the range would fall outside"):
        Buckets(7 * S).count(MIN_US, MIN_US + H)
    with pytest.raises(ValueError, match=r"^1d buckets in America/New_York near the range"):
        Buckets(DAY_US, "America/New_York").count(MIN_US, MIN_US + DAY_US)
    with pytest.raises(ValueError, match=r"^1h buckets in Pacific/Kiritimati near the range"):
        Buckets(H, "Pacific/Kiritimati").count(MAX_US - H, MAX_US)
    assert Buckets(H).count(MIN_US, MIN_US + H) == 1
    assert Buckets(DAY_US).count(MAX_US - DAY_US, MAX_US + 1) == 2


def test_pick_bucket_is_the_smallest_nice_size_within_the_points() -> None:
    hour, day = H, 24 * H

    assert format_bucket(pick_bucket(0, hour, 500)) == "10s"  # 360 buckets
    assert format_bucket(pick_bucket(0, hour, 360)) == "10s"
    assert format_bucket(pick_bucket(0, hour, 359)) == "15s"
    assert format_bucket(pick_bucket(0, hour, 10)) == "10m"  # 5m would make 12
    assert format_bucket(pick_bucket(1, hour + 1, 360)) == "15s"  # unaligned: 10s makes 361
    assert format_bucket(pick_bucket(0, 90 * day, 500)) == "6h"
    assert format_bucket(pick_bucket(0, 3 * 365 * day, 200)) == "7d"
    assert format_bucket(pick_bucket(0, 2 * S, 10_000)) == "1ms"


@given(
    st.integers(us("1971-01-01T00:00:00+00:00"), us("2100-01-01T00:00:00+00:00")),
    st.integers(1, 400 * DAY_US),
    st.integers(2, 10_000),
    st.sampled_from(["UTC", "Europe/Amsterdam", "Asia/Kolkata"]),
)
def test_pick_bucket_never_exceeds_points_and_the_next_smaller_size_would(
    start: int, span: int, points: int, tz: str
) -> None:
    width = pick_bucket(start, start + span, points, tz)

    assert Buckets(width, tz).count(start, start + span) <= points
    smaller = [w for w in NICE_BUCKETS if w < width]
    if smaller:
        assert Buckets(smaller[-1], tz).count(start, start + span) > points


def test_pick_bucket_with_one_point_across_a_boundary_every_size_shares() -> None:
    """Midnight UTC of Monday 2000-01-03 starts a bucket of every size: one bucket cannot be met
    across it; the smallest size giving the fewest (2) is taken."""
    origin = us("2000-01-03T00:00:00+00:00")
    width = pick_bucket(origin - 1, origin + 1, 1)

    assert (format_bucket(width), Buckets(width).count(origin - 1, origin + 1)) == ("1ms", 2)
    # Thursday 1970-01-01 to Sunday: the week from Monday 1969-12-29 holds it all.
    assert pick_bucket(0, timedelta(days=3) // timedelta(microseconds=1), 1) == 7 * DAY_US


def test_nice_buckets_are_increasing_and_each_parses() -> None:
    assert list(NICE_BUCKETS) == sorted(set(NICE_BUCKETS))
    assert all(parse_bucket(format_bucket(w)) == w for w in NICE_BUCKETS)
    assert datetime(2000, 1, 3, tzinfo=UTC).weekday() == 0
