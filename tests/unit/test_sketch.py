"""The quantile sketch: relative error against exact rank quantiles, exact merges, state round trips."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetstream.domain.sketch import QuantileSketch, bucket_keys, merge_bucket_lists

QS = (0.0, 0.01, 0.5, 0.95, 0.99, 1.0)
# Magnitudes below this (subnormals and the smallest normals) are counted as zero, as documented.
ZERO_BAND = sys.float_info.min * (1.01 / 0.99)

# Negatives, zeros, tiny and huge magnitudes, and clusters of close values.
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, -1.0]),
    st.floats(min_value=1013.0, max_value=1014.0),
    st.floats(min_value=-1e-6, max_value=1e-6),
)


def within(answer: float | None, exact: float, alpha: float) -> bool:
    assert answer is not None
    if abs(exact) < ZERO_BAND:
        return answer == 0.0
    # The bound is alpha exactly; 1e-9 covers the rounding of the log and exp that place and answer.
    return abs(answer - exact) <= alpha * abs(exact) * (1 + 1e-9)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=300), st.sampled_from([0.01, 0.05, 0.001, 1e-6]))
def test_every_quantile_is_within_the_relative_accuracy_of_the_exact_lower_quantile(
    xs: list[float], alpha: float
) -> None:
    sketch = QuantileSketch(alpha)
    sketch.add_many(xs)
    assert sketch.count == len(xs)
    answers = sketch.quantiles(QS)
    for q, answer in zip(QS, answers, strict=True):
        exact = float(np.quantile(np.array(xs), q, method="lower"))
        assert within(answer, exact, alpha), (q, answer, exact)
        assert sketch.quantile(q) == answer


@settings(max_examples=100, deadline=None)
@given(st.lists(values, max_size=100), st.lists(values, max_size=100))
def test_merge_equals_the_sketch_of_the_concatenation(a: list[float], b: list[float]) -> None:
    left, right, whole = QuantileSketch(), QuantileSketch(), QuantileSketch()
    left.add_many(a)
    right.add_many(b)
    whole.add_many(a + b)
    left.merge(right)
    assert left == whole
    assert left.count == len(a) + len(b)
    one_by_one = QuantileSketch()
    for x in a + b:
        one_by_one.add(x)
    assert one_by_one == whole


@settings(max_examples=100, deadline=None)
@given(st.lists(values, max_size=100))
def test_state_round_trips_through_json(xs: list[float]) -> None:
    sketch = QuantileSketch(0.02)
    sketch.add_many(xs)
    state = json.loads(json.dumps(sketch.to_state()))
    back = QuantileSketch.from_state(state)
    assert back == sketch
    assert back.count == len(xs)
    assert back.relative_accuracy == 0.02
    assert back.quantiles(QS) == sketch.quantiles(QS)


@given(st.lists(values, min_size=1, max_size=200))
def test_bucket_keys_keep_the_order_of_the_values(xs: list[float]) -> None:
    ordered = np.sort(np.array(xs))
    keys = bucket_keys(ordered)
    assert (np.diff(keys) >= 0).all()
    assert ((keys > 0) == (ordered >= ZERO_BAND)).all()
    assert ((keys < 0) == (ordered <= -ZERO_BAND)).all()


def test_a_worked_example() -> None:
    sketch = QuantileSketch(0.01)
    sketch.add_many([float(i) for i in range(1, 101)])
    # lower quantile of 1..100: index floor(q * 99) -> 1, 50, 95, 99, 100 at q = 0, .5, .95, .99, 1
    for q, exact in [(0.0, 1.0), (0.5, 50.0), (0.95, 95.0), (0.99, 99.0), (1.0, 100.0)]:
        answer = sketch.quantile(q)
        assert answer is not None
        assert abs(answer - exact) <= 0.01 * exact
    assert sketch.count == 100
    assert sum(sketch.buckets().values()) == 100


def test_empty_sketch_and_bad_input() -> None:
    sketch = QuantileSketch()
    assert sketch.count == 0
    assert sketch.quantile(0.5) is None
    assert sketch.quantiles([0.1, 0.9]) == [None, None]
    with pytest.raises(ValueError, match="between 0 and 1"):
        sketch.quantile(1.5)
    with pytest.raises(ValueError, match="finite"):
        sketch.add(float("nan"))
    with pytest.raises(ValueError, match="finite"):
        sketch.add_many([1.0, float("inf")])
    with pytest.raises(ValueError, match="relative accuracy"):
        QuantileSketch(0.0)
    with pytest.raises(ValueError, match="relative accuracy"):
        QuantileSketch(1e-10)
    with pytest.raises(ValueError, match="different accuracy"):
        sketch.merge(QuantileSketch(0.02))
    assert sketch.count == 0


def test_copies_and_shared_arrays_stay_independent() -> None:
    sketch = QuantileSketch()
    sketch.add_many([1.0, 2.0])
    copy = sketch.copy()
    copy.add(100.0)
    assert sketch.count == 2
    assert copy.count == 3
    assert sketch.quantile(1.0) == pytest.approx(2.0, rel=0.01)


def test_add_buckets_sums_repeated_keys() -> None:
    sketch = QuantileSketch.from_buckets([5, -3, 5], [1, 2, 4])
    assert sketch.buckets() == {-3: 2, 5: 5}
    assert sketch.count == 7
    keys, counts = merge_bucket_lists(np.array([-3, 5]), np.array([2, 5]), np.array([0, 5]), np.array([1, 1]))
    assert (keys.tolist(), counts.tolist()) == ([-3, 0, 5], [2, 1, 6])


def test_extremes_of_the_float_range() -> None:
    big = sys.float_info.max
    sketch = QuantileSketch()
    sketch.add_many([-big, big, 5e-324, -5e-324])
    assert sketch.quantiles([0.0, 1.0]) == [pytest.approx(-big, rel=0.01), pytest.approx(big, rel=0.01)]
    assert sketch.quantile(1 / 3) == 0.0  # subnormals count as zero
