"""The Prometheus text format of ``/metrics``, shared by ``fleetstream up``/``api`` and the gateway."""

from __future__ import annotations

from collections.abc import Mapping


def exposition(values: Mapping[str, float], help_: Mapping[str, tuple[str, str]]) -> list[str]:
    """``# HELP``, ``# TYPE`` and the sample of each metric, named ``fleetstream_<name>``.

    Example:
        >>> for line in exposition({"up": 1}, {"up": ("gauge", "Whether it runs.")}):
        ...     print(line)
        # HELP fleetstream_up Whether it runs.
        # TYPE fleetstream_up gauge
        fleetstream_up 1
    """
    lines: list[str] = []
    for name, value in values.items():
        kind, text = help_[name]
        full = f"fleetstream_{name}"
        lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}", f"{full} {value}"]
    return lines
