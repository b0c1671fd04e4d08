"""Fixtures of the integration suite: real ``fleetstream up`` processes on free loopback ports."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ._support import ServerProcess

_ids = itertools.count()


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, launch_server: Callable[..., ServerProcess]
) -> Iterator[ServerProcess]:
    """One ``fleetstream up --no-simulator`` for a whole module; tests keep apart by device id."""
    srv = launch_server(tmp_path_factory.mktemp("shared") / "data", "--no-simulator")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def start(
    tmp_path: Path, launch_server: Callable[..., ServerProcess]
) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers (``start(*args, data=..., env=..., port=...)``); all are stopped by PID at teardown."""
    started: list[ServerProcess] = []

    def _start(*args: str, data: Path | None = None, **kwargs: Any) -> ServerProcess:
        srv = launch_server(data or tmp_path / "data", "--no-simulator", *args, **kwargs)
        started.append(srv)
        return srv

    yield _start
    for srv in started:
        srv.stop()


@pytest.fixture
def dev(request: pytest.FixtureRequest) -> str:
    """A device id prefix no other test of the session uses."""
    return f"{request.node.originalname.removeprefix('test_')[:40]}-{next(_ids)}"
