"""The gateway: a request body in, validated messages published to the durable log, an answer out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleetstream.config import IngestSettings
from fleetstream.domain.clock import Clock
from fleetstream.errors import InvalidReading, PayloadTooLarge
from fleetstream.ingest.decode import body_kind, decode_body
from fleetstream.ingest.formats import DecodeContext
from fleetstream.ingest.typeregistry import UserTypes
from fleetstream.ports import READINGS_TOPIC, Bus


@dataclass(slots=True)
class IngestResult:
    """What happened to one request: items accepted (durable once returned) and rejected."""

    accepted: int
    readings: int
    items: int
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The response body."""
        return {"accepted": self.accepted, "rejected": self.rejected}


class Gateway:
    """Decode, validate and normalise bodies, then publish them and wait until they are durable."""

    def __init__(self, bus: Bus, clock: Clock, settings: IngestSettings) -> None:
        self.bus = bus
        self.clock = clock
        self.settings = settings
        self.requests_total = 0
        self.accepted_total = 0
        self.rejected_total = 0
        self.out_of_range_total = 0
        self.readings_accepted_total = 0
        # publishes to the bus: how many, how long they waited for the log, how many failed
        self.publishes_total = 0
        self.publish_seconds_total = 0.0
        self.publish_failures_total = 0
        self.user_types: UserTypes | None = None  # device types registered through the API

    async def ingest(
        self,
        body: bytes,
        content_type: str | None,
        device_id: str | None = None,
        received_at: int | None = None,
    ) -> IngestResult:
        """Ingest one body; returns once every accepted message is durable.

        ``received_at`` (µs) replaces the clock's receive time, for a source whose log keeps it
        (a Kafka message's timestamp): a redelivery then decodes exactly as the first delivery.

        Raises:
            UnsupportedMediaType, MalformedBody, PayloadTooLarge: the body as a whole is unusable.
            Overloaded, BusUnavailable: nothing was acknowledged; retry later.
        """
        self.requests_total += 1
        if len(body) > self.settings.max_body_bytes:
            msg = f"body of {len(body)} bytes is over the limit of {self.settings.max_body_bytes}"
            raise PayloadTooLarge(msg)
        kind = body_kind(content_type)
        ctx = DecodeContext(
            received_at if received_at is not None else self.clock.now_us(),
            round(self.settings.max_future_s * 1_000_000),
            device_id=device_id,
            out_of_range=self.settings.out_of_range,
            user_types=self.user_types,
        )
        decoded = decode_body(body, kind, ctx, self.settings.max_batch_items)
        self.rejected_total += len(decoded.rejected)
        batch = decoded.batch
        if batch.records:
            started = self.clock.monotonic()
            try:
                await self.bus.publish(READINGS_TOPIC, batch)
            except Exception:
                self.publish_failures_total += 1
                raise
            finally:
                self.publishes_total += 1
                self.publish_seconds_total += self.clock.monotonic() - started
            self.accepted_total += batch.messages_count
            self.readings_accepted_total += len(batch)
            self.out_of_range_total += decoded.flagged
        return IngestResult(
            accepted=batch.messages_count,
            readings=len(batch),
            items=decoded.items,
            rejected=decoded.rejected,
        )

    async def submit(self, body: bytes, content_type: str) -> None:
        """Ingest for in-process senders (the built-in simulator): errors raise, rejections too."""
        result = await self.ingest(body, content_type)
        if result.rejected:
            first = result.rejected[0]
            msg = f"{len(result.rejected)} of {result.items} messages rejected; first: {first['error']}"
            raise InvalidReading(msg, details=result.rejected)
