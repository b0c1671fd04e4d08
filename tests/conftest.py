"""Shared fixtures: a real `fleetstream up` process on a free loopback port, and the real servers of
``tests/servers.py`` (mosquitto, Tansu, PostgreSQL), each stopped by PID."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .servers import Mosquitto, Postgres, Tansu

FLEETSTREAM = [sys.executable, "-m", "fleetstream"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """A `fleetstream up` child process."""

    proc: subprocess.Popen[bytes]
    port: int
    data: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = 10,
    ) -> tuple[int, Any]:
        """One request; returns (status, decoded JSON body or text)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(
            self.url + path, method=method, data=data, headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def stop(self, sig: str = "term") -> int:
        """Stop by PID: ``term`` (clean), ``int`` (Ctrl-C) or ``kill`` (SIGKILL)."""
        if self.proc.poll() is None:
            {"term": self.proc.terminate, "kill": self.proc.kill, "int": lambda: self.proc.send_signal(2)}[
                sig
            ]()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    data: Path, *args: str, port: int | None = None, timeout: float = 30, env: dict[str, str] | None = None
) -> ServerProcess:
    """Start `fleetstream up` and wait until /readyz answers 200."""
    port = port or free_port()
    data.mkdir(parents=True, exist_ok=True)
    log = data / f"server-{port}-{time.monotonic_ns()}.log"
    cmd = [*FLEETSTREAM, "up", "--port", str(port), "--data", str(data), "--no-table", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    server = ServerProcess(proc, port, data, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fleetstream up exited with {proc.returncode}:\n{server.output()}")
        try:
            if server.call("GET", "/readyz", timeout=1)[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop("kill")
    raise RuntimeError(f"fleetstream up not ready within {timeout} s:\n{server.output()}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A `fleetstream up --no-simulator` on a fresh data directory."""
    srv = start_server(tmp_path / "data", "--no-simulator")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def launch_server() -> Callable[..., ServerProcess]:
    """``start_server`` as a fixture, for suites that cannot import this module by name (the
    ``tests/integration`` package, whose own conftest builds module-scoped servers from it)."""
    return start_server


# --- real servers (tests/servers.py) ------------------------------------------------------------


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A fresh mosquitto broker on a free loopback port (no persistence)."""
    broker = Mosquitto.launch()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def launch_mosquitto() -> Iterator[Callable[..., Mosquitto]]:
    """``launch_mosquitto(persistent=...)`` starts brokers; all are stopped by PID at teardown."""
    started: list[Mosquitto] = []

    def _launch(*, persistent: bool = False) -> Mosquitto:
        broker = Mosquitto.launch(persistent=persistent)
        started.append(broker)
        return broker

    yield _launch
    for broker in started:
        broker.close()


@pytest.fixture(scope="module")
def module_mosquitto() -> Iterator[Mosquitto]:
    """One mosquitto for a whole module; tests keep apart by topic and device id."""
    broker = Mosquitto.launch()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="module")
def module_tansu() -> Iterator[Tansu]:
    """One Kafka-protocol broker (Tansu, in memory) for a whole module; tests keep apart by topic."""
    broker = Tansu.launch()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One PostgreSQL cluster for the whole session (initdb takes seconds); see ``postgres_url``."""
    server = Postgres.launch()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server: Postgres) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL cluster."""
    return postgres_server.create_database()
