"""The MQTT device shadow in cluster mode, run by ``fleetstream gateway --mqtt`` (docs/shadow.md).

Embedded, the engine holds every twin and the MQTT shadow client reads and changes them in memory.
In a cluster the twin of a device is held by the worker owning its partition, and stored by it in
PostgreSQL in the same transaction as the device event of each change. The gateway, which already
holds the MQTT connection for telemetry, bridges the two with the same topics and payloads:

- **desired** (``devices/{id}/desired``, retained, QoS 1): the workers publish each stored
  ``desired_changed`` event to the live topic; the gateway follows it (a consumer group of its
  own, from the latest offset), reads the device's stored twin and publishes its desired document.
  The live topic is a view that may drop messages, so every ``RECONCILE_S`` the gateway also
  compares the desired versions stored in ``twins`` with those it published and publishes what
  is newer; after every (re)connection to the broker it publishes every stored desired document
  again, as the embedded client does for the twins in memory.
- **reported** (``devices/{id}/reported``, QoS 1): each patch becomes a shadow command to the
  owning worker, exactly as ``PATCH /api/v1/devices/{id}/reported`` on an api does
  (:mod:`.writes`); the message is acknowledged to the broker once the worker stored it, or
  refused (logged and dropped, as embedded). The subscription is shared
  (``$share/fleetstream-shadow/...``), so with several gateways each report is applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaException

from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.adapters.bus.kafka_subscription import group_config
from fleetstream.adapters.mqtt_shadow import ShadowBridge
from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.cluster import writes
from fleetstream.cluster.live import LIVE_TOPIC
from fleetstream.cluster.writes import SHADOW, partition_of
from fleetstream.domain.clock import Clock
from fleetstream.domain.events import DESIRED_CHANGED
from fleetstream.domain.shadow import REPORTED
from fleetstream.errors import NotFound

log = logging.getLogger(__name__)

RECONCILE_S = 10.0
SHARED_REPORTED_FILTER = "$share/fleetstream-shadow/devices/+/reported"
# the stored twins that have a shadow ("shadow" is in a twin's JSON only once a version is set)
_DESIRED_VERSIONS = """SELECT device_id, (state::jsonb #>> '{shadow,desired_version}')::bigint
    FROM twins WHERE state LIKE %s"""
_HAS_SHADOW = '%"shadow":%'


def _following(consumer: Any, partitions: list[Any]) -> None:
    # until the group has assigned the live topic, changes reach devices by the reconciliation only
    log.info("MQTT shadow: following desired changes on %s (%d partitions)", LIVE_TOPIC, len(partitions))


class ClusterMqttShadow(ShadowBridge):
    """The MQTT shadow over a cluster's store and workers; see the module docstring.

    Args:
        url: the MQTT broker, ``mqtt://host:port``.
        store: the cluster's PostgreSQL store (open while this runs).
        bus: the cluster's Kafka bus (its live topic).
        client_id: the MQTT client id.
        clock: for the commands' timestamps.
        timeout_s: how long a report waits for the owning worker.
        reconcile_s: how often the stored desired versions are compared with those published.
    """

    reported_filter = SHARED_REPORTED_FILTER

    def __init__(
        self,
        url: str,
        store: PostgresStore,
        bus: KafkaBus,
        client_id: str,
        *,
        clock: Clock,
        timeout_s: float,
        reconcile_s: float = RECONCILE_S,
    ) -> None:
        super().__init__(url, client_id)
        self.store = store
        self.bus = bus
        self.clock = clock
        self.timeout_s = timeout_s
        self.reconcile_s = reconcile_s
        self.published: dict[str, int] = {}  # device → desired version published
        self._due: set[str] = set()
        self._everything = True  # compare every stored version on the next round
        self._wake = asyncio.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def _follow(self) -> None:
        await writes.create_table(self.store)  # reports are commands: the table may not exist yet
        await self.bus.ensure_topic(LIVE_TOPIC)
        config = {k: v for k, v in self.bus.config.items() if k != "error_cb"}
        group = f"fleetstream-shadow-{uuid.uuid4().hex[:12]}"  # every gateway sees every change
        consumer = Consumer({**config, **group_config(group), "auto.offset.reset": "latest"})
        consumer.subscribe([LIVE_TOPIC], on_assign=_following)
        self._thread = threading.Thread(target=self._consume, args=(consumer,), daemon=True)
        self._thread.start()
        self._task = asyncio.create_task(self._publish_forever(), name="fleetstream-mqtt-desired")

    async def _unfollow(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)

    def _republish(self) -> None:
        self.published.clear()
        self._everything = True
        self._wake.set()

    async def _report(self, device: str, patch: Any) -> None:
        twins = await self.store.load_twins([device])
        if not twins:
            msg = f"no device {device!r} has sent anything yet"
            raise NotFound(msg)
        body = {"section": REPORTED, "patch": patch, "if_match": None}
        partition = partition_of(twins[0].position)
        await writes.submit(
            self.store,
            partition,
            device,
            SHADOW,
            body,
            now_us=self.clock.now_us(),
            timeout_s=self.timeout_s,
        )

    # -- desired documents -------------------------------------------------------------------------

    def _consume(self, consumer: Consumer) -> None:
        """The live topic's desired changes → :meth:`_changed` (on Kafka's thread)."""
        loop = self._loop
        assert loop is not None
        try:
            while not self._stop.is_set():
                for message in consumer.consume(num_messages=500, timeout=0.2):
                    if message.error() is not None:
                        continue
                    with contextlib.suppress(msgspec.DecodeError, KeyError, TypeError, AttributeError):
                        body = msgspec.msgpack.decode(message.value() or b"")
                        devices = [
                            e["device_id"] for e in body.get("events", ()) if e["type"] == DESIRED_CHANGED
                        ]
                        if devices:
                            loop.call_soon_threadsafe(self._changed, devices)
        finally:
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.close()

    def _changed(self, devices: list[str]) -> None:
        self._due.update(devices)
        self._wake.set()

    async def _publish_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.reconcile_s)
                quiet = False
            except TimeoutError:
                quiet = True
            self._wake.clear()
            try:
                await self.publish_due(reconcile=quiet)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: try again on the next round
                log.warning("MQTT shadow: publishing desired documents failed: %s", exc)

    async def publish_due(self, *, reconcile: bool) -> int:
        """Publish the desired documents changed since they were last published; how many.

        Args:
            reconcile: also compare every stored desired version with the one published.
        """
        due, self._due = self._due, set()
        try:
            return await self._publish(due, reconcile=reconcile or self._everything)
        except Exception:
            self._due |= due  # for the next round
            raise

    async def _publish(self, due: set[str], *, reconcile: bool) -> int:
        if reconcile:
            stored = await self.store.execute(_DESIRED_VERSIONS, [_HAS_SHADOW])
            self._everything = False  # (after a connection ``published`` is empty: all are newer)
            for device, version in stored:
                if version and int(version) > self.published.get(device, 0):
                    due.add(device)
        if not due or self._client is None:
            return 0
        count = 0
        for twin in await self.store.load_twins(sorted(due)):
            if twin.desired_version and twin.desired_version > self.published.get(twin.device_id, 0):
                self.publish(twin)
                self.published[twin.device_id] = twin.desired_version
                count += 1
        return count
