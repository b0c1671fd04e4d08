"""``/metrics`` of ``fleetstream gateway``, in the Prometheus text format.

A gateway holds no pipeline state: what it can tell is what it did with the requests (received,
messages and readings accepted, items rejected), how its publishes to the bus went (how many,
the seconds they waited for the broker's acknowledgement, how many failed: each failure was a
503 to its sender) and whether the broker answers now. Device-side sources (``--mqtt``,
``--kafka-source``) add their own counters, as on ``fleetstream up``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetstream.api.prometheus import exposition

if TYPE_CHECKING:
    from fleetstream.cluster.gateway import GatewayNode

_HELP: dict[str, tuple[str, str]] = {
    "requests_total": ("counter", "Ingest requests received (HTTP, and messages of device-side sources)."),
    "messages_accepted_total": ("counter", "Device messages accepted and acknowledged by the broker."),
    "readings_accepted_total": ("counter", "Readings accepted and acknowledged by the broker."),
    "rejected_total": ("counter", "Items rejected by validation."),
    "out_of_range_total": ("counter", "Readings accepted outside their device type's range (flag mode)."),
    "publishes_total": ("counter", "Publishes of accepted batches to the bus, failed ones included."),
    "publish_seconds_total": (
        "counter",
        "Seconds publishes waited for the broker's acknowledgement (over publishes_total: the mean).",
    ),
    "publish_failures_total": (
        "counter",
        "Publishes that failed (broker unreachable or overloaded): each answered 503, nothing acknowledged.",
    ),
    "broker_up": ("gauge", "1 when the broker answered a metadata request during this scrape."),
}


def render(node: GatewayNode, broker_up: bool) -> str:
    """The metrics page of one gateway process."""
    gateway = node.gateway
    values: dict[str, float] = {
        "requests_total": gateway.requests_total,
        "messages_accepted_total": gateway.accepted_total,
        "readings_accepted_total": gateway.readings_accepted_total,
        "rejected_total": gateway.rejected_total,
        "out_of_range_total": gateway.out_of_range_total,
        "publishes_total": gateway.publishes_total,
        "publish_seconds_total": round(gateway.publish_seconds_total, 6),
        "publish_failures_total": gateway.publish_failures_total,
        "broker_up": int(broker_up),
    }
    # the gateway's own under fleetstream_gateway_; the sources' under the names `up` gives them
    values = {f"gateway_{name}": value for name, value in values.items()}
    help_ = {f"gateway_{name}": kind_text for name, kind_text in _HELP.items()}
    for source in node.sources.values():
        for name, (kind, text, value) in source.metrics().items():
            help_[name] = (kind, text)
            values[name] = value
    return "\n".join(exposition(values, help_)) + "\n"
