"""Settings: one frozen tree, built once at the edge (CLI or ``create_app``) and passed down.

Every field reads ``FLEETSTREAM_<NAME>`` from the environment; nested groups use
``__`` (``FLEETSTREAM_INGEST__MAX_BATCH_ITEMS=5000``). A TOML file named by
``FLEETSTREAM_CONFIG`` is read too; explicit values (CLI flags) win over the
environment, which wins over the file.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from fleetstream.domain.timeutil import parse_duration
from fleetstream.errors import ConfigError
from fleetstream.ingest.kafka import parse_kafka_url
from fleetstream.ingest.mqtt import DEFAULT_TOPIC, TopicFilter, parse_mqtt_url


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IngestSettings(_Group):
    """Limits of the ingest gateway."""

    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0, description="largest request body")
    max_batch_items: int = Field(10_000, gt=0, description="most messages in one request")
    max_future_s: float = Field(
        86_400.0, gt=0, description="how far ahead of the server clock an event time may be"
    )
    queue_max_records: int = Field(
        200_000, gt=0, description="readings waiting to be made durable before 503"
    )
    ack_timeout_s: float = Field(30.0, gt=0, description="longest wait for durability before 503")
    out_of_range: Literal["reject", "flag"] = Field(
        "reject",
        description="value outside its type's valid range: reject the message, or accept and count it",
    )


class EngineSettings(_Group):
    """How the stream processors are driven."""

    batch_max_records: int = Field(50_000, gt=0, description="most messages made durable in one group commit")
    writes_in_flight: int = Field(
        2, ge=1, le=16, description="batches deduplicated and queued for the store while one is written"
    )
    checkpoint_interval_s: float = Field(
        5.0, gt=0, description="how often processor state is checkpointed (replay after a crash starts there)"
    )
    flush_interval_s: float = Field(
        1.0, gt=0, description="how often emitted windows, device events and changed twins are stored"
    )
    webhook_attempts: int = Field(5, ge=1, le=20, description="tries of an alert webhook delivery")
    webhook_backoff_s: float = Field(
        0.5, gt=0, description="wait before the first webhook retry (doubling after each)"
    )


class StreamSettings(_Group):
    """Event-time semantics: windows, watermark, lateness, device status (docs/stream.md)."""

    windows: str = Field("10s,1m", description="tumbling window sizes, comma-separated (e.g. 10s,1m,1h)")
    out_of_orderness_s: float = Field(5.0, ge=0, description="watermark = newest event time minus this")
    allowed_lateness_s: float = Field(
        30.0, ge=0, description="an emitted window still takes readings this long past its end"
    )
    idle_timeout_s: float = Field(
        10.0, gt=0, description="with no input this long, the watermark follows the wall clock"
    )
    max_ahead_s: float = Field(
        5.0, ge=0, description="event time ahead of arrival by more than this does not move the watermark"
    )
    idle_after_s: float = Field(30.0, gt=0, description="a device silent this long is idle")
    offline_after_s: float = Field(120.0, gt=0, description="a device silent this long is offline")
    evict_after_s: float = Field(
        600.0,
        gt=0,
        description="an offline twin silent this long leaves memory (reloaded on its next reading)",
    )

    @property
    def window_sizes_us(self) -> tuple[int, ...]:
        """The window sizes in microseconds, smallest first."""
        return tuple(sorted({parse_duration(part) for part in self.windows.split(",") if part.strip()}))

    @property
    def dedup_horizon_us(self) -> int:
        """Dedup memory keeps this much event time: older re-sends are beyond the lateness anyway."""
        return round((self.out_of_orderness_s + self.allowed_lateness_s) * 1_000_000)


def _seconds(value: Any) -> Any:
    """Duration text (``500ms``, ``2s``, ``1m``) as seconds; numbers pass through."""
    if isinstance(value, str):
        from fleetstream.simulator.delivery import parse_duration  # only when a text is given

        try:
            return parse_duration(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None  # so that the error names the field
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]


class SimulatorSettings(_Group):
    """The built-in fleet; the delivery knobs (docs/simulator.md) are off by default."""

    enabled: bool = True
    devices: int = Field(50, ge=0, le=100_000)
    rate: float = Field(1.0, gt=0, description="messages per device per second (typed kinds)")
    seed: int | None = None
    jitter_s: Seconds = Field(0.0, ge=0, description="each message is sent 0..this late (event time kept)")
    duplicates: float = Field(0.0, ge=0, le=1, description="fraction of messages sent twice")
    late: float = Field(0.0, ge=0, le=1, description="fraction of messages held back for late_delay_s")
    late_delay_s: Seconds = Field(50.0, gt=0, description="how long late messages are held")
    clock_skew_s: Seconds = Field(0.0, ge=0, description="each device's clock is off by up to this")
    real_host: bool = Field(False, description="one extra device with this machine's real sensors (psutil)")


class PredictorSettings(_Group):
    """The failure predictor in the running engine (docs/prediction.md)."""

    enabled: bool = True
    threshold: float | None = Field(
        None, gt=0, le=1, description="risk that opens a failure_predicted alert (default: the model's)"
    )
    window_s: Seconds = Field(
        60.0, gt=0, description="window size the predictor reads (off unless in stream.windows)"
    )
    reload_s: Seconds = Field(
        10.0, gt=0, description="how often the model registry is checked for a new round"
    )


class KafkaGroupSettings(_Group):
    """Consumer-group timeouts of the Kafka bus (docs/kafka.md#group-settings-and-why)."""

    session_timeout_ms: int = Field(
        3000, ge=1000, le=1_800_000, description="a member silent this long loses its partitions"
    )
    heartbeat_interval_ms: int = Field(500, ge=100, le=600_000, description="below the session timeout")


class Settings(BaseSettings):
    """All of fleetstream's settings."""

    model_config = SettingsConfigDict(
        env_prefix="FLEETSTREAM_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data: Path = Path("data")
    store: str | None = Field(None, description="store URL; default duckdb:///<data>/fleetstream.duckdb")
    bus: str = "memory://"
    mqtt: str | None = Field(None, description="MQTT broker to subscribe to: mqtt://host:port")
    mqtt_topic: str = Field(DEFAULT_TOPIC, description="MQTT topic filter; $share/<group>/... to share load")
    kafka_source: str | None = Field(None, description="Kafka topic of device messages: kafka://host/topic")
    unsafe_no_auth: bool = False
    table: bool = True
    log_level: str = "info"
    ingest: IngestSettings = IngestSettings()
    engine: EngineSettings = EngineSettings()
    kafka_group: KafkaGroupSettings = KafkaGroupSettings()
    stream: StreamSettings = StreamSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    predictor: PredictorSettings = PredictorSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = os.environ.get("FLEETSTREAM_CONFIG")
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @property
    def store_url(self) -> str:
        """The store URL, defaulting to a DuckDB file under the data directory."""
        return self.store or f"duckdb:///{self.data / 'fleetstream.duckdb'}"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from overrides, the environment and the optional TOML file.

    Raises:
        ConfigError: naming each bad field and why.
    """
    nested = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**nested)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        msg = f"invalid settings: {problems}"
        raise ConfigError(msg) from None
    _check_bind(settings)
    _check_urls(settings)
    if settings.mqtt:
        parse_mqtt_url(settings.mqtt)
        TopicFilter.parse(settings.mqtt_topic)
    if settings.kafka_source:
        parse_kafka_url(settings.kafka_source)
    _check_stream(settings.stream)
    group = settings.kafka_group
    if group.heartbeat_interval_ms >= group.session_timeout_ms:
        msg = (
            f"kafka_group.heartbeat_interval_ms ({group.heartbeat_interval_ms}) must be below "
            f"kafka_group.session_timeout_ms ({group.session_timeout_ms})"
        )
        raise ConfigError(msg)
    if settings.ingest.queue_max_records < settings.ingest.max_batch_items:
        msg = (
            f"ingest.queue_max_records ({settings.ingest.queue_max_records}) must be at least "
            f"ingest.max_batch_items ({settings.ingest.max_batch_items}): a full batch could never be queued"
        )
        raise ConfigError(msg)
    return settings


def _check_urls(settings: Settings) -> None:
    """Refuse a bus or store URL no adapter takes before any process starts, so every command
    says what is wrong instead of failing with a traceback halfway through its startup."""
    from fleetstream.adapters import BUSES, STORES

    for kind, url, registry in (("bus", settings.bus, BUSES), ("store", settings.store_url, STORES)):
        if urlsplit(url).scheme not in registry:
            known = ", ".join(f"{s}://" for s in registry)
            msg = f"unknown {kind} URL {url!r}: expected one of {known}"
            raise ConfigError(msg)
    if urlsplit(settings.bus).scheme == "kafka":
        from fleetstream.adapters.bus.kafka import parse_bus_url  # imports the Kafka client

        parse_bus_url(settings.bus)


def _check_stream(stream: StreamSettings) -> None:
    try:
        sizes = stream.window_sizes_us
    except ValueError as exc:
        msg = f"stream.windows: {exc}"
        raise ConfigError(msg) from None
    if not sizes or sizes[0] <= 0:
        msg = f"stream.windows: give at least one window size above zero, got {stream.windows!r}"
        raise ConfigError(msg)
    odd = [s for s in sizes if s % sizes[0]]
    if odd:
        msg = f"stream.windows: every size must be a multiple of the smallest ({stream.windows!r})"
        raise ConfigError(msg)
    if not stream.idle_after_s < stream.offline_after_s <= stream.evict_after_s:
        msg = (
            "stream: idle_after_s < offline_after_s <= evict_after_s must hold, got "
            f"{stream.idle_after_s}, {stream.offline_after_s}, {stream.evict_after_s}"
        )
        raise ConfigError(msg)


def _check_bind(settings: Settings) -> None:
    host = settings.host
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not settings.unsafe_no_auth:
        msg = (
            f"refusing to bind to {host}: fleetstream has no authentication configured, so it "
            "listens on 127.0.0.1 only. To expose it anyway (e.g. behind an authenticating "
            "proxy), pass --unsafe-no-auth or set FLEETSTREAM_UNSAFE_NO_AUTH=1."
        )
        raise ConfigError(msg)
