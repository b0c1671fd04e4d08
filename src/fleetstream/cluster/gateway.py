"""``fleetstream gateway``: HTTP (and MQTT, Kafka) ingest straight to the Kafka bus, no engine.

A request is answered 202 only once the broker acknowledged every accepted message (the bus's
publish waits for its delivery reports); while the broker cannot be reached the answer is 503
with ``Retry-After`` and an error body naming the broker, never a crash. ``/readyz`` asks the
broker for its metadata, so a load balancer stops sending to a gateway whose broker is gone.

With ``--mqtt`` or ``--kafka-source`` the gateway also takes device messages from those brokers,
acknowledging (MQTT PUBACK, Kafka offset commit) only once the bus publish returned; what cannot be
ingested is kept as a dead letter, in the ``--store`` the gateway then needs for that. With
``--store`` the gateway also validates the device types registered through any api instance
(:mod:`.typestore`, re-read every second); without it only the built-in types are known. With
``--mqtt`` and ``--store`` it also runs the MQTT device shadow for the cluster (:mod:`.mqtt_shadow`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

from fleetstream import __version__
from fleetstream.adapters import BUSES, STORES, by_url
from fleetstream.api import errors
from fleetstream.api.routes import ingest
from fleetstream.cluster import gateway_metrics
from fleetstream.cluster.typestore import StoredTypes
from fleetstream.config import Settings
from fleetstream.domain.clock import Clock, SystemClock
from fleetstream.errors import ConfigError
from fleetstream.ingest.gateway import Gateway
from fleetstream.ingest.intake import Intake
from fleetstream.ports import Bus, Source, Store

if TYPE_CHECKING:
    from fleetstream.adapters.store.postgres import PostgresStore
    from fleetstream.cluster.mqtt_shadow import ClusterMqttShadow

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 2.0


class GatewayNode:
    """The bus and the gateway of one gateway process (what the ingest routes need)."""

    def __init__(self, settings: Settings, *, bus: Bus | None = None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.bus: Bus = bus or by_url(
            BUSES,
            settings.bus,
            "bus",
            max_pending=settings.ingest.queue_max_records,
            ack_timeout_s=settings.ingest.ack_timeout_s,
        )
        self.gateway = Gateway(self.bus, self.clock, settings.ingest)
        self.store: Store | None = None  # dead letters of device-side sources; device types
        self.sources: dict[str, Source] = {}
        self.device_types: StoredTypes | None = None
        self.shadow: ClusterMqttShadow | None = None  # the MQTT device shadow, with --mqtt
        self.started = False
        if settings.mqtt or settings.kafka_source:
            self._add_sources(settings)
        if settings.store is not None and settings.store_url.startswith(("postgresql://", "postgres://")):
            if self.store is None:
                self.store = cast("Store", by_url(STORES, settings.store_url, "store"))
            # the types registered through any api, re-read every second (see cluster.typestore)
            self.device_types = StoredTypes(cast("PostgresStore", self.store))
            self.gateway.user_types = self.device_types

    def _add_sources(self, settings: Settings) -> None:
        """MQTT and Kafka device-side sources, acknowledging a message once its publish returned."""
        if settings.store is None:
            msg = (
                "--mqtt and --kafka-source keep the messages they cannot ingest as dead letters: "
                "give the gateway --store postgresql://... for them"
            )
            raise ConfigError(msg)
        self.store = cast("Store", by_url(STORES, settings.store_url, "store"))
        if settings.mqtt:
            from fleetstream.adapters.mqtt import MqttSource, default_client_id

            intake = Intake(self.gateway, self.store, self.clock, "mqtt")
            client_id = default_client_id(settings.port)
            mqtt = MqttSource(settings.mqtt, topic=settings.mqtt_topic, intake=intake, client_id=client_id)
            self.sources[mqtt.name] = mqtt
            self._add_shadow(settings, f"{client_id}-shadow")
        if settings.kafka_source:
            from fleetstream.adapters.kafka_source import KafkaSource

            kafka = KafkaSource(
                settings.kafka_source, intake=Intake(self.gateway, self.store, self.clock, "kafka")
            )
            self.sources[kafka.name] = kafka

    def _add_shadow(self, settings: Settings, client_id: str) -> None:
        from fleetstream.adapters.bus.kafka import KafkaBus
        from fleetstream.adapters.store.postgres import PostgresStore

        if not isinstance(self.bus, KafkaBus) or not isinstance(self.store, PostgresStore):
            return  # the shadow needs the cluster's store and live topic
        from fleetstream.cluster.mqtt_shadow import ClusterMqttShadow

        assert settings.mqtt is not None
        self.shadow = ClusterMqttShadow(
            settings.mqtt,
            self.store,
            self.bus,
            client_id,
            clock=self.clock,
            timeout_s=settings.ingest.ack_timeout_s,
        )

    async def start(self) -> None:
        """Connect to the broker (a broker that is down only makes publishes fail until it is back),
        then start the sources."""
        if self.store is not None:
            await self.store.start()
        if self.device_types is not None:
            await self.device_types.start()
        else:
            log.info("no --store: device types registered through the api are not known here")
        await self.bus.start()
        for source in self.sources.values():
            await source.start()
        if self.shadow is not None:
            await self.shadow.start()
        self.started = True

    async def stop(self) -> None:
        """Stop the sources (what they hold is published first), then disconnect; publishes still
        waiting fail (their senders get a 503 and retry)."""
        self.started = False
        if self.shadow is not None:
            await self.shadow.stop()
        for source in self.sources.values():
            try:
                await source.stop()
            except Exception:
                log.exception("stopping source %s failed", source.name)
        await self.bus.close()
        if self.device_types is not None:
            await self.device_types.stop()
        if self.store is not None:
            await self.store.close()

    async def broker_status(self) -> tuple[bool, str]:
        """Whether the broker answers a metadata request now, and what it said."""
        config = getattr(self.bus, "config", None)
        if config is None:  # an in-memory bus is always there
            return True, "in-memory bus"
        from confluent_kafka.admin import AdminClient

        def probe() -> int:
            return len(AdminClient(config).list_topics(timeout=_PROBE_TIMEOUT_S).brokers)

        try:
            brokers = await asyncio.to_thread(probe)
        except Exception as exc:
            return False, f"Kafka broker {config.get('bootstrap.servers')} unreachable: {exc}"
        return True, f"{brokers} broker(s) at {config.get('bootstrap.servers')}"


def create_gateway_app(node: GatewayNode) -> FastAPI:
    """The gateway's HTTP API: the ingest routes, ``/healthz``, ``/readyz`` and ``/metrics``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(title="fleetstream gateway", version=__version__, lifespan=lifespan)
    app.state.runtime = node  # the ingest routes take the settings and the gateway from it
    errors.install(app)
    app.include_router(ingest.router)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the broker answers")
    async def readyz() -> JSONResponse:
        if not node.started:
            return JSONResponse({"status": "unavailable", "reason": "gateway not started"}, 503)
        ok, detail = await node.broker_status()
        body: dict[str, Any] = {"status": "ready" if ok else "unavailable", "broker": detail}
        if node.sources:
            body["sources"] = {name: source.status() for name, source in node.sources.items()}
        if not ok:
            body["reason"] = detail
        return JSONResponse(body, 200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        up = node.started and (await node.broker_status())[0]
        text = gateway_metrics.render(node, up)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return app
