"""The adapters cluster processes need: a Kafka bus and a PostgreSQL store, nothing else."""

from __future__ import annotations

from urllib.parse import urlsplit

from fleetstream.adapters import BUSES, STORES, by_url
from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.adapters.bus.kafka_group import GroupTimeouts
from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.config import Settings
from fleetstream.errors import ConfigError


def kafka_bus(settings: Settings) -> KafkaBus:
    """The Kafka bus the settings name.

    Raises:
        ConfigError: they name another bus.
    """
    if urlsplit(settings.bus).scheme != "kafka":
        msg = f"a worker consumes a Kafka bus: --bus kafka://host:port, not {settings.bus!r}"
        raise ConfigError(msg)
    timeouts = settings.kafka_group
    group = GroupTimeouts(timeouts.session_timeout_ms, timeouts.heartbeat_interval_ms)
    bus = by_url(BUSES, settings.bus, "bus", ack_timeout_s=settings.ingest.ack_timeout_s, group=group)
    assert isinstance(bus, KafkaBus)
    return bus


def postgres_store(settings: Settings) -> PostgresStore:
    """The PostgreSQL store the settings name.

    Raises:
        ConfigError: they name another store.
    """
    store = by_url(STORES, settings.store_url, "store")
    if not isinstance(store, PostgresStore):
        msg = f"workers share a PostgreSQL store: --store postgresql://..., not {settings.store_url!r}"
        raise ConfigError(msg)
    return store
