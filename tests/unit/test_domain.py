"""The pure core: dedup, running stats, rate, time conversions (plus the doctests of domain/)."""

from __future__ import annotations

import doctest
import importlib
import math
import pkgutil
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fleetstream.domain
from fleetstream.domain.dedup import Deduplicator
from fleetstream.domain.records import is_valid_device_id
from fleetstream.domain.stats import LiveStats, RateMeter, RunningStats
from fleetstream.domain.timeutil import epoch_number_to_us, parse_time, us_to_iso


@pytest.mark.parametrize(
    "info", list(pkgutil.iter_modules(fleetstream.domain.__path__)), ids=lambda i: i.name
)
def test_domain_doctests(info: pkgutil.ModuleInfo) -> None:
    module = importlib.import_module(f"fleetstream.domain.{info.name}")
    failed, _ = doctest.testmod(module)
    assert failed == 0


def test_domain_imports_only_the_standard_library_and_numpy() -> None:
    import ast
    import sys
    from pathlib import Path

    for path in Path(fleetstream.domain.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            for name in names:
                top = name.split(".")[0]
                assert (
                    top in sys.stdlib_module_names
                    or top == "numpy"  # arithmetic on columns; see fleetstream/domain/__init__.py
                    or name.startswith("fleetstream.domain")
                    or top == "__future__"
                ), f"{path.name} imports {name}"


# -- dedup ---------------------------------------------------------------------------------


def classify(d: Deduplicator, items: list[tuple[tuple[str, str, int], int]]) -> tuple[list[int], list[int]]:
    """``classify`` with (key, ts) pairs, "all fresh" spelled out as indexes."""
    fresh, unknown = d.classify([k for k, _ in items], [t for _, t in items])
    return (list(range(len(items))) if fresh is None else fresh), unknown


def test_dedup_drops_repeats_within_and_across_batches() -> None:
    d = Deduplicator(horizon_us=1000)
    assert classify(d, [(("a", "t", 1), 1), (("a", "t", 1), 1), (("a", "t", 2), 2)]) == ([0, 2], [])
    assert classify(d, [(("a", "t", 2), 2), (("b", "t", 2), 2)]) == ([1], [])
    assert d.duplicates_total == 2


def test_dedup_answers_a_batch_of_new_keys_at_once() -> None:
    d = Deduplicator(horizon_us=1000)
    assert d.classify([("a", "t", 1), ("b", "t", 1)], [1, 1]) == (None, [])
    assert d.classify([("a", "t", 1), ("c", "t", 1)], [1, 1]) == ([1], [])
    assert len(d) == 3


def test_dedup_hands_back_keys_older_than_the_horizon() -> None:
    d = Deduplicator(horizon_us=100, bucket_us=10)
    classify(d, [(("a", "t", 1000), 1000)])
    fresh, unknown = classify(d, [(("a", "t", 850), 850), (("a", "t", 950), 950)])
    assert (fresh, unknown) == ([1], [0])


def test_dedup_memory_is_bounded_by_the_horizon() -> None:
    d = Deduplicator(horizon_us=1_000, bucket_us=100)
    for ts in range(0, 1_000_000, 10):
        classify(d, [(("dev", "t", ts), ts)])
    assert len(d) <= 1_000 // 10 + 100 // 10 + 1


def test_forget_lets_a_failed_write_be_retried() -> None:
    d = Deduplicator(horizon_us=1000)
    classify(d, [(("a", "t", 5), 5)])
    d.forget([("a", "t", 5)])
    assert classify(d, [(("a", "t", 5), 5)]) == ([0], [])


keys = st.tuples(st.sampled_from("abc"), st.sampled_from(["t", "p"]), st.integers(0, 200))


@given(st.lists(st.lists(keys, max_size=20), max_size=12), st.integers(1, 60))
def test_dedup_equals_a_set_with_a_horizon(batches: list[list[tuple[str, str, int]]], bucket: int) -> None:
    """Against a model. At or above the floor (newest fresh time - horizon, as of the batch's
    start) a key is fresh exactly when it was never fresh before. Below it, a key is never fresh:
    it is handed back as unknown, or dropped as a repeat when memory still holds it (memory is
    forgotten a generation at a time, so how long it lingers depends on the generation size)."""
    horizon = 50
    d = Deduplicator(horizon_us=horizon, bucket_us=bucket)
    seen: set[tuple[str, str, int]] = set()
    newest: int | None = None
    for batch in batches:
        floor = None if newest is None else newest - horizon
        fresh, unknown = classify(d, [(k, k[2]) for k in batch])
        expected = []
        for i, k in enumerate(batch):
            below = floor is not None and k[2] < floor
            if below:
                assert i in unknown or k in seen, (i, k)
            elif k not in seen:
                seen.add(k)
                expected.append(i)
        assert fresh == expected
        assert all(floor is not None and batch[i][2] < floor for i in unknown)
        if expected:
            top = max(batch[i][2] for i in expected)
            newest = top if newest is None else max(newest, top)


# -- stats ---------------------------------------------------------------------------------

values = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=200)


@given(values)
def test_running_stats_match_statistics(xs: list[float]) -> None:
    s = RunningStats()
    for i, x in enumerate(xs):
        s.add(x, i)
    assert s.count == len(xs)
    assert s.min == min(xs)
    assert s.max == max(xs)
    assert s.last == xs[-1]
    assert math.isclose(s.mean, statistics.fmean(xs), rel_tol=1e-9, abs_tol=1e-6)
    if len(xs) > 1:
        assert s.stddev is not None
        assert math.isclose(s.stddev, statistics.stdev(xs), rel_tol=1e-6, abs_tol=1e-6)


@given(values, values)
def test_merge_equals_one_pass(xs: list[float], ys: list[float]) -> None:
    a, b, both = RunningStats(), RunningStats(), RunningStats()
    for i, x in enumerate(xs):
        a.add(x, i)
        both.add(x, i)
    for i, y in enumerate(ys, len(xs)):
        b.add(y, i)
        both.add(y, i)
    a.merge(b)
    assert (a.count, a.min, a.max, a.last) == (both.count, both.min, both.max, both.last)
    assert math.isclose(a.mean, both.mean, rel_tol=1e-9, abs_tol=1e-6)
    assert math.isclose(a.m2, both.m2, rel_tol=1e-6, abs_tol=1e-3)


def test_last_is_the_newest_event_time_not_the_latest_arrival() -> None:
    live = LiveStats()
    live.add(["d", "d"], ["t", "t"], [2.0, 1.0], [200, 100])  # the older reading arrives last
    assert live.sensors["t"].last == 2.0
    assert live.devices[("d", "t")].last == 2.0


def test_rate_meter_counts_whole_seconds() -> None:
    m = RateMeter(window_s=5)
    for second in range(10):
        m.add(100, second + 0.5)
    assert m.rate(10.1) == 100.0
    assert m.rate(100.0) == 0.0


# -- time ----------------------------------------------------------------------------------


def test_time_conversions() -> None:
    assert parse_time("2023-03-28 20:04:22") == parse_time("2023-03-28T20:04:22Z") == 1_680_033_862_000_000
    assert parse_time("2023-03-28T22:04:22+02:00") == 1_680_033_862_000_000
    assert us_to_iso(1_680_033_862_123_456) == "2023-03-28T20:04:22.123456Z"
    assert epoch_number_to_us(1_680_033_862_123) == 1_680_033_862_123_000
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_time("2023-03-28T20:04:22")
    with pytest.raises(ValueError, match="expected RFC 3339"):
        parse_time("soon")


@pytest.mark.parametrize(
    ("device_id", "ok"),
    [
        ("DevFor!x@0000000001", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("a/b", False),
        ("é", False),
    ],
)
def test_device_id_rule(device_id: str, ok: bool) -> None:
    assert is_valid_device_id(device_id) is ok
