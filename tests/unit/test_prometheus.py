"""The Prometheus text both ``/metrics`` pages are made of."""

from __future__ import annotations

import doctest

import fleetstream.api.prometheus
from fleetstream.api.prometheus import exposition


def test_the_docstring_example_holds() -> None:
    failed, attempted = doctest.testmod(fleetstream.api.prometheus)
    assert (failed, attempted > 0) == (0, True)


def test_each_metric_gets_help_type_and_sample_in_the_given_order() -> None:
    lines = exposition(
        {"b_total": 2, "a": 0.5},
        {"a": ("gauge", "An a."), "b_total": ("counter", "Bs.")},
    )

    assert lines == [
        "# HELP fleetstream_b_total Bs.",
        "# TYPE fleetstream_b_total counter",
        "fleetstream_b_total 2",
        "# HELP fleetstream_a An a.",
        "# TYPE fleetstream_a gauge",
        "fleetstream_a 0.5",
    ]
