"""The consumer-group settings of the Kafka bus: how fast a dead member's partitions move.

A member killed without leaving the group (SIGKILL, a lost machine) stops heartbeating; its
partitions move to a survivor in three steps, measured on Tansu 0.6 (the test broker) with
librdkafka's debug log:

1. **Session expiry**: the broker drops the member ``session.timeout.ms`` after its last
   heartbeat, so between ``session - heartbeat`` and ``session`` after the kill.
2. **Discovery**: the survivor hears of the rebalance in the answer to its next heartbeat
   (within ``heartbeat.interval.ms``); with eager assignment it gives up its partitions and rejoins.
3. **Join hold**: Tansu answers the survivor's JoinGroup only after about half a session timeout
   (3.0 s at 6000 ms, 2.0 s at 3000 and 4000 ms, 1.0 s at 2000 ms); Apache Kafka answers as soon
   as every remaining member has rejoined. Then SyncGroup and the assignment take milliseconds.

So the session timeout is the knob: 6000 ms gave 8.5 s on Tansu, 3000 ms about 5 s. Apache Kafka
and Redpanda refuse a session timeout below their ``group.min.session.timeout.ms`` (6000 by
default) with ``INVALID_SESSION_TIMEOUT``; the subscription then rejoins with the next of
:data:`FALLBACK_SESSION_TIMEOUTS_MS` (and says so in the log), where the takeover is about the
session timeout plus a heartbeat (no join hold): 6-7 s.

Assignment stays ``range`` (eager): ``cooperative-sticky`` would spare the survivor giving up
and taking back its own partitions, but the join hold is the same, and Tansu 0.6 left partitions
given up by one member unassigned to a newcomer with it. No static membership
(``group.instance.id``): the broker would keep a member's partitions for a whole session timeout
even after a clean stop, where without it a member leaving cleanly hands them over at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KAFKA_MIN_SESSION_TIMEOUT_MS = 6000
"""Apache Kafka's and Redpanda's default ``group.min.session.timeout.ms``."""

FALLBACK_SESSION_TIMEOUTS_MS = (KAFKA_MIN_SESSION_TIMEOUT_MS, 45_000)
"""Session timeouts tried, in order, after a broker refused a shorter one (45 s is the Kafka
clients' default, inside every broker's allowed range unless it was narrowed on purpose)."""

ASSIGNMENT = "range"


@dataclass(frozen=True, slots=True)
class GroupTimeouts:
    """How soon the group notices a dead member (see the module docstring for the figures).

    Attributes:
        session_timeout_ms: a member silent this long is dropped from the group; brokers that
            refuse it get the next of :data:`FALLBACK_SESSION_TIMEOUTS_MS` instead.
        heartbeat_interval_ms: how often a member heartbeats, and so how soon it hears of a
            rebalance; below a third of the session timeout.
    """

    session_timeout_ms: int = 3000
    heartbeat_interval_ms: int = 500

    def __post_init__(self) -> None:
        if self.session_timeout_ms < 1 or self.heartbeat_interval_ms < 1:
            msg = f"group timeouts must be positive, got {self}"
            raise ValueError(msg)
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            msg = (
                f"heartbeat interval ({self.heartbeat_interval_ms} ms) must be below the session "
                f"timeout ({self.session_timeout_ms} ms)"
            )
            raise ValueError(msg)


ACCEPTED_EVERYWHERE = GroupTimeouts(KAFKA_MIN_SESSION_TIMEOUT_MS, 1000)
"""Timeouts every broker accepts by default: for consumers that do not fall back on a refusal
(the api's live relay, a group of one, where no partitions ever move to a survivor)."""


def group_config(group: str, timeouts: GroupTimeouts = ACCEPTED_EVERYWHERE) -> dict[str, Any]:
    """librdkafka settings of a member of ``group`` (see the module docstring for why).

    The bus's subscriptions pass their :class:`GroupTimeouts` (they fall back when refused);
    without them, :data:`ACCEPTED_EVERYWHERE`.
    """
    return {
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": timeouts.session_timeout_ms,
        "heartbeat.interval.ms": timeouts.heartbeat_interval_ms,
        "partition.assignment.strategy": ASSIGNMENT,
        # a topic created after the subscription (by the first publish) is seen within seconds
        "topic.metadata.refresh.interval.ms": 5000,
        # a fetch finding nothing new waits this long on the broker; Tansu waits it out even when
        # records arrive meanwhile, so the default 500 ms would cap a caught-up consumer's rate
        "fetch.wait.max.ms": 20,
    }


def fallback_session_timeout(refused_ms: int) -> int | None:
    """The session timeout to try after a broker refused ``refused_ms``; None when none is left.

    >>> fallback_session_timeout(3000), fallback_session_timeout(6000), fallback_session_timeout(45_000)
    (6000, 45000, None)
    """
    return next((ms for ms in FALLBACK_SESSION_TIMEOUTS_MS if ms > refused_ms), None)
