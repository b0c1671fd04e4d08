"""Adapters of the ports, chosen by URL through one registry of lazy imports.

Drivers load only when their URL is used, so optional ones stay optional extras.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from fleetstream.errors import ConfigError

BUSES: dict[str, str] = {
    "memory": "fleetstream.adapters.bus.memory:MemoryBus",
    "kafka": "fleetstream.adapters.bus.kafka:KafkaBus",
}
STORES: dict[str, str] = {
    "duckdb": "fleetstream.adapters.store.duckdb:DuckDBStore",
    "postgresql": "fleetstream.adapters.store.postgres:PostgresStore",
    "postgres": "fleetstream.adapters.store.postgres:PostgresStore",
}


def by_url(registry: dict[str, str], url: str, kind: str, **kwargs: Any) -> Any:
    """Instantiate the adapter registered for the URL's scheme with ``(url, **kwargs)``."""
    scheme = urlsplit(url).scheme
    target = registry.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in registry)
        msg = f"unknown {kind} URL {url!r}: expected one of {known}"
        raise ConfigError(msg)
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"the {scheme}:// {kind} needs an optional dependency: {exc}"
        raise ConfigError(msg) from exc
    return getattr(module, class_name)(url, **kwargs)
