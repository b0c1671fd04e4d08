"""The public surface: exported names and settings."""

from __future__ import annotations

import pytest

import fleetstream
from fleetstream.config import load_settings
from fleetstream.errors import ConfigError


def test_exported_members() -> None:
    expected = {
        "BusUnavailable",
        "Clock",
        "ConfigError",
        "DeviceMessage",
        "FleetstreamError",
        "InvalidInput",
        "InvalidReading",
        "ManualClock",
        "Overloaded",
        "Reading",
        "Settings",
        "StoreError",
        "SystemClock",
        "__version__",
        "load_settings",
    }
    assert set(fleetstream.__all__) == expected
    for name in fleetstream.__all__:
        assert getattr(fleetstream, name) is not None, name


def test_settings_read_env_with_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSTREAM_PORT", "9001")
    monkeypatch.setenv("FLEETSTREAM_INGEST__MAX_BATCH_ITEMS", "7")
    s = load_settings()
    assert (s.port, s.ingest.max_batch_items) == (9001, 7)
    assert load_settings(port=9002).port == 9002  # explicit wins


def test_bad_settings_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSTREAM_INGEST__MAX_BATCH_ITEMS", "-1")
    with pytest.raises(ConfigError, match=r"ingest.max_batch_items: Input should be greater than 0"):
        load_settings()


def test_non_loopback_bind_needs_explicit_consent() -> None:
    with pytest.raises(ConfigError, match="no authentication"):
        load_settings(host="0.0.0.0")
    assert load_settings(host="0.0.0.0", unsafe_no_auth=True).host == "0.0.0.0"
    assert load_settings(host="::1").host == "::1"


def test_store_url_defaults_under_data_dir() -> None:
    assert load_settings(data="x/y").store_url == "duckdb:///x/y/fleetstream.duckdb"


def test_queue_must_hold_a_whole_batch() -> None:
    with pytest.raises(ConfigError, match=r"queue_max_records .* must be at least"):
        load_settings(ingest={"queue_max_records": 10, "max_batch_items": 100})
