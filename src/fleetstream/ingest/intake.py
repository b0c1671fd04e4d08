"""One message of a device-side source (MQTT now, a Kafka raw topic later) taken to the point
where its sender may be acknowledged.

HTTP answers a bad request with a 4xx; a broker has no such answer, so a source
keeps what it cannot ingest in the dead-letter table instead, and acknowledges
the message once its good readings are durable and its bad part is stored
beside them. Back-pressure (a full queue, the log down) is the one case where
the message is not acknowledged: it is retried after a pause, and a source that
stops meanwhile leaves it to the broker's redelivery (dedup keeps re-sends
harmless).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from fleetstream.domain.clock import Clock
from fleetstream.domain.records import DEVICE_ID_RULE, is_valid_device_id
from fleetstream.errors import FleetstreamError, InvalidInput, MalformedBody
from fleetstream.ingest.gateway import Gateway, IngestResult
from fleetstream.ports import DeadLetter, Store

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.05
RETRY_MAX_S = 5.0
_WARN_EVERY_S = 10.0


class Intake:
    """Ingest source payloads through the gateway; dead-letter what is bad; retry under back-pressure.

    Args:
        gateway: the process's gateway (readings take the same path as HTTP ones).
        store: where dead letters go.
        clock: gives the dead letters' receive time.
        source: the name dead letters carry (``mqtt``).
    """

    def __init__(self, gateway: Gateway, store: Store, clock: Clock, source: str) -> None:
        self.gateway = gateway
        self.store = store
        self.clock = clock
        self.source = source
        self.dead_letters_total = 0
        self.retries_total = 0
        self.last_error: str | None = None
        self._warned_at = -_WARN_EVERY_S

    async def take(
        self,
        payload: bytes,
        topic: str | None,
        device_id: str | None,
        stop: asyncio.Event,
        received_at: int | None = None,
    ) -> bool:
        """Ingest one payload; True once the sender may be acknowledged, False if ``stop`` came first.

        ``device_id`` (from the topic) fills messages that carry none; one they carry must match it.
        Transient failures (Overloaded, BusUnavailable, StoreError) are retried with a growing pause
        (capped by the error's ``retry_after``, at most 5 s); nothing else is raised. ``received_at``
        is the message's receive time when the source keeps one (see :meth:`Gateway.ingest`).
        """
        attempt = 0
        while True:
            try:
                letter = await self._ingest(payload, topic, device_id, received_at)
                if letter is not None:
                    await self.store.write_dead_letters([letter])
                    self.dead_letters_total += 1
                return True
            except FleetstreamError as exc:  # back-pressure or the store down: not the payload's fault
                self.retries_total += 1
                self.last_error = exc.message
                cap = min(getattr(exc, "retry_after", RETRY_MAX_S), RETRY_MAX_S)
                delay = min(cap, RETRY_FIRST_S * 2**attempt) * random.uniform(0.5, 1.0)
                self._warn(f"{exc.message}; not acknowledging, retrying in {delay:.2f} s")
                attempt += 1
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    continue
                return False

    async def _ingest(
        self, payload: bytes, topic: str | None, device_id: str | None, received_at: int | None = None
    ) -> DeadLetter | None:
        """The dead letter of this payload, or None when all of it was ingested (and is durable)."""
        if device_id is not None and not is_valid_device_id(device_id):
            return self._letter(
                topic, payload, f"topic level {device_id!r} is not a valid device id ({DEVICE_ID_RULE})"
            )
        try:
            result = await self._decode_and_publish(payload, device_id, received_at)
        except InvalidInput as exc:
            return self._letter(topic, payload, exc.message)
        except FleetstreamError:
            raise
        except Exception as exc:
            # A bug must not stall the subscription on one message: keep the payload for a person.
            log.exception("ingesting a %s message from %r failed", self.source, topic)
            return self._letter(topic, payload, f"internal error: {exc!r}")
        if result.items == 0:
            return self._letter(topic, payload, "the batch is empty")
        if result.rejected:
            first = result.rejected[0]["error"]
            reason = f"{len(result.rejected)} of {result.items} items rejected; first: {first}"
            return self._letter(topic, payload, reason, result.rejected)
        return None

    async def _decode_and_publish(
        self, payload: bytes, device_id: str | None, received_at: int | None = None
    ) -> IngestResult:
        # MQTT 3.1.1 carries no content type: JSON first, then NDJSON for several lines that are not
        # one JSON document (nothing is published when JSON decoding fails, so trying twice is safe).
        try:
            return await self.gateway.ingest(payload, "application/json", device_id, received_at)
        except MalformedBody:
            if sum(1 for line in payload.split(b"\n") if line.strip()) < 2:
                raise
        return await self.gateway.ingest(payload, "application/x-ndjson", device_id, received_at)

    def _letter(
        self, topic: str | None, payload: bytes, reason: str, errors: list[dict[str, Any]] | None = None
    ) -> DeadLetter:
        log.info("dead letter from %s topic %r: %s", self.source, topic, reason)
        # The raw bytes are kept up to the body limit: an oversized payload is known by its reason.
        kept = payload[: self.gateway.settings.max_body_bytes]
        return DeadLetter(self.clock.now_us(), self.source, topic, reason, kept, tuple(errors or ()))

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning("%s ingest: %s (%d retries so far)", self.source, text, self.retries_total)
