"""Live output across processes: workers publish, every api instance relays to its subscribers.

After each store commit a worker publishes the windows, device events and alert changes it just
stored to the topic ``fleetstream-live`` (keyed by device, or by window sensor), and every second the live
statistics of each of its partitions to ``fleetstream-stats`` (keyed by worker id). Each api
instance consumes both in a consumer group of its own (a unique id, starting at the latest
offsets), so every instance sees every message: windows and events go to its SSE channels, and
the partitions' statistics, merged, become its ``/api/v1/stats/live``.

These topics are a live view, not a log of record (the store is): the producer waits for no
acknowledgement, and a subscriber that is slow or joins late misses messages, as the embedded
channels do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
from confluent_kafka import OFFSET_END, Consumer, KafkaException, Producer, TopicPartition

from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.adapters.bus.kafka_subscription import group_config
from fleetstream.domain.alerts import Alert, AlertChange
from fleetstream.domain.events import DESIRED_CHANGED, DeviceEvent
from fleetstream.domain.stats import LiveStats
from fleetstream.domain.windows import WindowAggregate

if TYPE_CHECKING:
    from fleetstream.engine.pipeline import Engine
    from fleetstream.engine.processors import StreamProcessors

log = logging.getLogger(__name__)

LIVE_TOPIC = "fleetstream-live"
STATS_TOPIC = "fleetstream-stats"
STALE_AFTER_S = 5.0  # a partition's statistics not heard of for this long are dropped
JOIN_WAIT_S = 15.0  # how long an api waits at start for its live group to be joined

_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.decode


class LivePublisher:
    """A worker's side: fire-and-forget messages to the live topics."""

    def __init__(self, bus: KafkaBus, worker_id: str) -> None:
        self.bus = bus
        self.worker_id = worker_id
        self._producer: Producer | None = None

    async def start(self) -> None:
        """Make sure the topics exist, then open the producer."""
        for topic in (LIVE_TOPIC, STATS_TOPIC):
            await self.bus.ensure_topic(topic)
        config = {k: v for k, v in self.bus.config.items() if k != "error_cb"}
        self._producer = Producer({**config, "acks": 1, "linger.ms": 20})

    def close(self) -> None:
        """Send what is queued (briefly), then drop the producer."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(2.0)

    def stored(self, windows: list[WindowAggregate], events: list[DeviceEvent]) -> None:
        """Publish what a store commit made durable."""
        if windows:
            self._send(LIVE_TOPIC, windows[0].sensor, {"windows": [w.to_state() for w in windows]})
        if events:
            self._send(LIVE_TOPIC, events[0].device_id, {"events": events})

    def alerts(self, changes: list[AlertChange]) -> None:
        """Publish stored alert changes (keyed by the first one's device: they stay in order)."""
        body = {"alerts": [{"kind": c.kind, "alert": c.alert.to_state()} for c in changes]}
        self._send(LIVE_TOPIC, changes[0].alert.device_id, body)

    def stats(self, partitions: dict[int, StreamProcessors]) -> None:
        """Publish each partition's live statistics, with its counts of late readings per sensor,
        of duplicates dropped and of messages stored (all checkpointed with the partition)."""
        states = {
            str(p): {
                **procs.stats.to_state(),
                "late_total": procs.late_total,
                "duplicates_total": procs.duplicates_total,
                "messages_total": procs.messages_total,
            }
            for p, procs in partitions.items()
        }
        self._send(STATS_TOPIC, self.worker_id, {"worker": self.worker_id, "partitions": states})

    def _send(self, topic: str, key: str, body: dict[str, Any]) -> None:
        producer = self._producer
        if producer is None:
            return
        try:
            producer.produce(topic, _encode(body), key.encode())
            producer.poll(0)
        except (BufferError, KafkaException) as exc:  # a live view: drop rather than wait
            log.warning("live topics: dropped a message to %s: %s", topic, exc)


_FIELDS = ("_count", "_shift", "_s1", "_s2", "_min", "_max", "_last", "_last_ts")


def merge_stats(states: list[dict[str, Any]]) -> LiveStats:
    """Live statistics (:meth:`LiveStats.to_state`) of disjoint sets of devices, one per partition,
    as one: per-device series side by side, per-sensor ones combined (Chan et al. on the shifted
    sums: count, min, max exactly, mean and spread to rounding; ``last`` by event time)."""
    sensors: list[str] = []
    place: dict[str, int] = {}
    by_sensor: dict[str, list[Any]] = {f: [] for f in _FIELDS}
    series: list[list[str]] = []
    by_series: dict[str, list[Any]] = {f: [] for f in _FIELDS}
    total = 0
    for state in states:
        total += int(state["readings_total"])
        series += state["series"]
        for f in _FIELDS:
            by_series[f] += state["by_series"][f]
        for i, name in enumerate(state["sensors"][: len(state["by_sensor"]["_count"])]):
            one = {f: state["by_sensor"][f][i] for f in _FIELDS}
            j = place.get(name)
            if j is None:
                place[name] = len(sensors)
                sensors.append(name)
                for f in _FIELDS:
                    by_sensor[f].append(one[f])
            else:
                _combine(by_sensor, j, one)
    merged = {
        "sensors": sensors,
        "series": series,
        "by_sensor": by_sensor,
        "by_series": by_series,
        "readings_total": total,
    }
    return LiveStats.from_state(merged)


def merge_late(states: list[dict[str, Any]]) -> dict[str, int]:
    """sensor → late readings of the partitions' statistics together (each partition counts its
    own devices' readings, checkpointed with its windows, so the sum is the fleet's)."""
    total: dict[str, int] = {}
    for state in states:
        for sensor, n in state.get("late_total", {}).items():
            total[sensor] = total.get(sensor, 0) + int(n)
    return total


def merge_counts(states: list[dict[str, Any]]) -> dict[str, int]:
    """The partitions' counts of duplicates dropped and messages stored, summed (each partition
    counts its own devices' messages, and its count moves with it to a new owner)."""
    names = ("duplicates_total", "messages_total", "readings_total")
    return {name: sum(int(state.get(name, 0)) for state in states) for name in names}


def _combine(into: dict[str, list[Any]], j: int, one: dict[str, Any]) -> None:
    """Fold one sensor's stats into entry ``j``, moving its sums to ``j``'s shift."""
    n = one["_count"]
    if n == 0:
        return
    if into["_count"][j] == 0:
        for f in _FIELDS:
            into[f][j] = one[f]
        return
    d = one["_shift"] - into["_shift"][j]
    into["_s2"][j] += one["_s2"] + 2 * d * one["_s1"] + n * d * d
    into["_s1"][j] += one["_s1"] + n * d
    into["_count"][j] += n
    into["_min"][j] = min(into["_min"][j], one["_min"])
    into["_max"][j] = max(into["_max"][j], one["_max"])
    if one["_last_ts"] >= into["_last_ts"][j]:
        into["_last"][j], into["_last_ts"][j] = one["_last"], one["_last_ts"]


class LiveRelay:
    """An api instance's side: consume the live topics into the idle engine's channels and stats."""

    def __init__(self, bus: KafkaBus, engine: Engine) -> None:
        self.bus = bus
        self.engine = engine
        self.group = f"fleetstream-api-{uuid.uuid4().hex[:12]}"
        self.partials: dict[str, tuple[float, dict[str, Any]]] = {}  # partition -> (heard at, state)
        # the most readings the partitions counted together (None: no statistics yet), for the rate
        self.readings_seen: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Join a group of its own on both topics, from their latest offsets."""
        self._loop = asyncio.get_running_loop()
        for topic in (LIVE_TOPIC, STATS_TOPIC):
            await self.bus.ensure_topic(topic)
        config = {k: v for k, v in self.bus.config.items() if k != "error_cb"}
        # the bus's group settings (range assignment: brokers such as Tansu assign nothing to the
        # client's default list of strategies); from the latest offsets, committing nothing
        consumer = Consumer({**config, **group_config(self.group), "auto.offset.reset": "latest"})
        joined = threading.Event()

        def assigned(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            # start at each partition's end as of now, not at the end once the first fetch asks
            # for it: a message published after start() returned is then always relayed
            for tp in partitions:
                try:
                    tp.offset = consumer.get_watermark_offsets(tp, timeout=5.0, cached=False)[1]
                except KafkaException:
                    tp.offset = OFFSET_END
            consumer.assign(partitions)
            joined.set()

        consumer.subscribe([LIVE_TOPIC, STATS_TOPIC], on_assign=assigned)
        self._thread = threading.Thread(target=self._consume, args=(consumer,), daemon=True)
        self._thread.start()
        # Until the group is joined nothing is relayed: wait, so what starts after the relay (the
        # simulator's shadow agent reads the stored twins once, then follows events) misses no event.
        if await asyncio.to_thread(joined.wait, JOIN_WAIT_S):
            log.info("live topics: relaying in group %r", self.group)
        else:
            log.warning(
                "live topics: group %r not joined after %.0f s, relaying once it is", self.group, JOIN_WAIT_S
            )

    async def stop(self) -> None:
        """Stop consuming and leave the group."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)

    def _consume(self, consumer: Consumer) -> None:
        assert self._loop is not None
        try:
            while not self._stop.is_set():
                for message in consumer.consume(num_messages=500, timeout=0.2):
                    if message.error() is None:
                        self._loop.call_soon_threadsafe(self.deliver, message.topic(), message.value())
        finally:
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.close()

    def _count(self, counts: dict[str, int]) -> None:
        """The counters of ``/api/v1/stats/live`` and ``/metrics`` that the workers keep."""
        engine = self.engine
        engine.dedup.duplicates_total = counts["duplicates_total"]
        engine.messages_total = counts["messages_total"]
        # the rate of readings stored, from the growth of the total: not its first value (stored
        # before this api started), and a partition dropped as stale for a while, then heard of
        # again, must not count its readings twice
        total = counts["readings_total"]
        if self.readings_seen is not None and total > self.readings_seen:
            engine.rate.add(total - self.readings_seen, engine.clock.monotonic())
        self.readings_seen = max(total, self.readings_seen or 0)

    def deliver(self, topic: str | None, value: bytes | None) -> None:
        """Hand one message to the subscribers (on the event loop)."""
        try:
            body = _decode(value or b"")
            if topic == STATS_TOPIC:
                now = time.monotonic()
                for partition, state in body["partitions"].items():
                    self.partials[partition] = (now, state)
                fresh = [s for heard, s in self.partials.values() if now - heard < STALE_AFTER_S]
                self.engine.processors.stats = merge_stats(fresh)
                # /api/v1/stats/live and /metrics read the late counts from the windows processor,
                # which runs on the workers only: give it theirs.
                self.engine.processors.windows.late_total = merge_late(fresh)
                self._count(merge_counts(fresh))
            elif "windows" in body:
                self.engine.windows.publish([WindowAggregate.from_state(s) for s in body["windows"]])
            elif "events" in body:
                events = [msgspec.convert(e, DeviceEvent) for e in body["events"]]
                self.engine.events.publish(events)
                for event in events:  # long-polls of GET .../desired?wait= wake up
                    if event.type == DESIRED_CHANGED:
                        self.engine.desired_changed.notify(event.device_id)
            elif "alerts" in body:
                changes = [AlertChange(c["kind"], Alert.from_state(c["alert"])) for c in body["alerts"]]
                self.engine.alerts.publish(changes)
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError, ValueError) as exc:
            log.warning("live topics: skipping a message of %s: %s", topic, exc)
