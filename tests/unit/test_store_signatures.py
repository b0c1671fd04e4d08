"""Every adapter implements the whole Store port, with the port's own signatures.

A method added to :class:`~fleetstream.ports.Store` without every adapter fails here, before any
database is started; so does a renamed parameter (callers may pass it by keyword), a changed
default or type, or a method that is no longer ``async``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import pytest

from fleetstream.adapters.store.duckdb import DuckDBStore
from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.ports import Store
from fleetstream.testing import InMemoryStore

ADAPTERS = [DuckDBStore, PostgresStore, InMemoryStore]
PORT_METHODS = sorted(
    name for name, member in vars(Store).items() if inspect.isfunction(member) and not name.startswith("_")
)


def shape(fn: Callable[..., Any]) -> list[tuple[str, Any, Any, Any]]:
    """(name, kind, default, resolved type) of each parameter but ``self``, then the return type."""
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters.values())[1:]
    return [(p.name, p.kind, p.default, hints.get(p.name)) for p in params] + [
        ("return", None, None, hints.get("return"))
    ]


def test_the_port_is_what_this_test_expects() -> None:
    # Guards the discovery above (a Protocol keeps its methods as plain functions in its namespace),
    # so the test below cannot pass by checking nothing.
    assert {
        "start",
        "write",
        "write_derived",
        "query_alerts",
        "save_model_round",
        "delete_definition",
    } <= set(PORT_METHODS)
    assert "__init__" not in PORT_METHODS


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", PORT_METHODS)
def test_adapter_implements_the_port_method(adapter: type[Any], name: str) -> None:
    port_method = getattr(Store, name)
    method = getattr(adapter, name, None)
    assert method is not None, f"{adapter.__name__} lacks Store.{name}"
    assert inspect.iscoroutinefunction(method) == inspect.iscoroutinefunction(port_method), (
        f"{adapter.__name__}.{name}: async differs from the port"
    )
    assert shape(method) == shape(port_method), f"{adapter.__name__}.{name}: signature differs from the port"
