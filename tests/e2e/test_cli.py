"""The ``fleetstream`` command as a user runs it: help, ``up`` with the built-in simulator, Ctrl-C,
refusals (port in use, non-loopback host without auth, a data directory in use, a bad MQTT URL),
env vars, and MQTT ingest with the broker's own command-line client."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ..servers import Mosquitto, require

pytestmark = pytest.mark.e2e

FLEETSTREAM = str(Path(sys.executable).parent / "fleetstream")

UP_OPTIONS = {
    "--host": "FLEETSTREAM_HOST",
    "--port": "FLEETSTREAM_PORT",
    "--data": "FLEETSTREAM_DATA",
    "--devices": "FLEETSTREAM_SIMULATOR__DEVICES",
    "--rate": "FLEETSTREAM_SIMULATOR__RATE",
    "--simulator": "FLEETSTREAM_SIMULATOR__ENABLED",
    "--seed": "FLEETSTREAM_SIMULATOR__SEED",
    "--real-host": "FLEETSTREAM_SIMULATOR__REAL_HOST",
    "--store": "FLEETSTREAM_STORE",
    "--mqtt": "FLEETSTREAM_MQTT",
    "--mqtt-topic": "FLEETSTREAM_MQTT_TOPIC",
    "--table": "FLEETSTREAM_TABLE",
    "--unsafe-no-auth": "FLEETSTREAM_UNSAFE_NO_AUTH",
    "--log-level": "FLEETSTREAM_LOG_LEVEL",
}


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without FLEETSTREAM_* settings, a wide terminal, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSTREAM_")}
    return {**env, "COLUMNS": "200", "NO_COLOR": "1", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run a command that should end by itself (killed by the timeout if it does not)."""
    return subprocess.run(
        [FLEETSTREAM, *args],
        capture_output=True,
        text=True,
        env=env or _env(),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _get(port: int, path: str, timeout: float = 2) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class Up:
    """A running ``fleetstream up``."""

    proc: subprocess.Popen[bytes]
    port: int
    data: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"fleetstream up exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if _get(self.port, "/readyz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"fleetstream up not ready on port {self.port} within {timeout} s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10) -> tuple[int, float]:
        """Send ``sig`` by PID; (exit code, seconds it took). SIGKILL if it outlives ``timeout``."""
        began = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail(f"fleetstream up still running {timeout} s after signal {sig}:\n{self.output()}")
        return code, time.monotonic() - began


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Any]:
    """``up(*args, port=..., env=...)`` starts ``fleetstream up --no-table``; every one is stopped by PID."""
    started: list[Up] = []

    def start(
        *args: str, port: int | None = None, env: dict[str, str] | None = None, data: Path | None = None
    ) -> Up:
        data = data or tmp_path / f"data{len(started)}"
        data.mkdir(parents=True, exist_ok=True)
        log = tmp_path / f"up{len(started)}.log"
        port_args = ["--port", str(port)] if port is not None else []
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [FLEETSTREAM, "up", "--no-table", "--data", str(data), *port_args, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env or _env(),
            )
        server = Up(proc, port or int((env or {}).get("FLEETSTREAM_PORT", "8000")), data, log)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


# --- help ----------------------------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    result = _run("--help")

    assert result.returncode == 0, result.stderr
    assert "Usage: fleetstream" in result.stdout
    for command in ("up", "version"):
        assert re.search(rf"^\W*{command}\s+\S", result.stdout, re.MULTILINE), result.stdout


def test_up_help_lists_every_option_with_its_env_var() -> None:
    result = _run("up", "--help")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for option, env in UP_OPTIONS.items():
        line = next((x for x in lines if re.search(rf"\s{re.escape(option)}\s", x)), None)
        assert line is not None, f"{option} not in:\n{result.stdout}"
        assert f"[env var: {env}]" in line, line


def test_version() -> None:
    import fleetstream

    result = _run("version")

    assert (result.returncode, result.stdout) == (0, f"fleetstream {fleetstream.__version__}\n")


# --- up with the built-in simulator ----------------------------------------------------------------


def test_up_runs_the_simulated_fleet_and_ctrl_c_stops_cleanly(up: Any) -> None:
    server = up("--devices", "20", "--seed", "7", port=_free_port())
    server.wait_ready()

    def live() -> dict[str, Any]:
        status, body = _get(server.port, "/api/v1/stats/live")
        assert status == 200, body
        counters: dict[str, Any] = body["ingest"]
        return counters

    deadline = time.monotonic() + 10
    counters = live()
    while counters["devices"] < 20 and time.monotonic() < deadline:
        time.sleep(0.25)
        counters = live()
    assert counters["devices"] == 20, f"{counters} after 10 s:\n{server.output()}"
    first = counters["readings_total"]
    time.sleep(1.5)
    later = live()
    assert later["readings_total"] > first > 0
    assert later["devices"] == 20

    code, took = server.stop(signal.SIGINT)

    output = server.output()
    assert code == 0, output  # a clean stop is a success
    assert took < 10
    assert "stopped cleanly at log position" in output
    assert "Traceback" not in output
    con = duckdb.connect(str(server.data / "fleetstream.duckdb"), read_only=True)
    try:
        devices, readings = con.execute("SELECT count(DISTINCT device_id), count(*) FROM readings").fetchone()  # type: ignore[misc]
    finally:
        con.close()
    assert devices == 20
    assert readings >= later["readings_total"]  # everything acknowledged before Ctrl-C is stored


def test_port_from_the_environment(up: Any) -> None:
    port = _free_port()
    server = up("--no-simulator", env=_env(FLEETSTREAM_PORT=str(port)))
    server.wait_ready()

    assert _get(port, "/healthz") == (200, {"status": "ok"})
    assert f"on http://127.0.0.1:{port} " in server.output()
    code, _ = server.stop(signal.SIGTERM)
    assert code == 0
    assert "stopped cleanly" in server.output()


def test_second_up_on_a_port_in_use_exits_2(up: Any, tmp_path: Path) -> None:
    port = _free_port()
    first = up("--no-simulator", port=port)
    first.wait_ready()

    result = _run(
        "up", "--no-table", "--no-simulator", "--port", str(port), "--data", str(tmp_path / "other")
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"port {port} on 127.0.0.1 is in use; pick another with --port" in result.stderr
    assert "Traceback" not in result.stderr
    assert _get(port, "/healthz") == (200, {"status": "ok"})  # the first one is untouched


def test_second_up_on_a_data_directory_in_use_exits_2(up: Any) -> None:
    first = up("--no-simulator", port=_free_port())
    first.wait_ready()

    result = _run(
        "up", "--no-table", "--no-simulator", "--port", str(_free_port()), "--data", str(first.data)
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: cannot open DuckDB file" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("how", ["flag", "env"])
def test_non_loopback_host_without_auth_exits_2(how: str) -> None:
    args = ["up", "--no-table", "--no-simulator", "--port", str(_free_port())]
    env = _env()
    if how == "flag":
        args += ["--host", "0.0.0.0"]  # refused before anything binds
    else:
        env["FLEETSTREAM_HOST"] = "0.0.0.0"

    result = _run(*args, env=env, timeout=20)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: refusing to bind to 0.0.0.0: fleetstream has no authentication configured" in result.stderr
    assert "--unsafe-no-auth" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_setting_exits_2_naming_it() -> None:
    result = _run("up", "--no-table", "--no-simulator", "--port", "70000")

    assert result.returncode == 2
    assert "error: invalid settings: port: " in result.stderr


# --- MQTT -------------------------------------------------------------------------------------------


def test_up_with_mqtt_stores_what_mosquitto_pub_sends(up: Any, mosquitto: Mosquitto) -> None:
    mosquitto_pub = require("mosquitto_pub", "apt-get install mosquitto-clients")
    port = _free_port()
    server = up("--no-simulator", port=port, env=_env(FLEETSTREAM_MQTT=mosquitto.url))
    server.wait_ready()
    assert f"MQTT: subscribed to 'devices/+/telemetry' on {mosquitto.url}" in server.output()

    # The example of docs/mqtt.md, as a user types it.
    for device, payload in [
        ("thermo-1", '{"timestamp": "2023-03-28T20:04:22Z", "temperature": 21.5, "tag": "Thermostat"}'),
        ("thermo-2", '[{"ts": "2023-03-28T20:04:23Z", "sensor": "temperature", "value": 23.5}]'),
        ("thermo-2", '{"ts": "2023-03-28T20:04:24Z", "sensor": "temperature", "value": "warm"}'),
    ]:
        command = [mosquitto_pub, "-h", "127.0.0.1", "-p", str(mosquitto.port), "-q", "1"]
        command += ["-t", f"devices/{device}/telemetry", "-m", payload]
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        assert result.returncode == 0, result.stderr

    query = "/api/v1/metrics?sensor=temperature&from=2023-03-28T20:00:00Z&to=2023-03-28T21:00:00Z"
    deadline = time.monotonic() + 10
    while _get(port, query)[1]["metrics"].get("temperature", {}).get("count") != 2:
        assert time.monotonic() < deadline, f"not stored within 10 s:\n{server.output()}"
        time.sleep(0.1)
    assert _get(port, query)[1]["metrics"]["temperature"] == {
        "count": 2,
        "min": 21.5,
        "max": 23.5,
        "avg": 22.5,
    }
    letters = _get(port, "/api/v1/dead-letters?source=mqtt")[1]["dead_letters"]
    error = 'value: expected a finite number, got "warm"'
    assert [(d["topic"], d["reason"]) for d in letters] == [
        ("devices/thermo-2/telemetry", f"1 of 1 items rejected; first: {error}")
    ]

    code, _ = server.stop(signal.SIGINT)

    output = server.output()
    assert (code, "Traceback" in output) == (0, False), output
    assert "stopped cleanly at log position 2" in output
    con = duckdb.connect(str(server.data / "fleetstream.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT device_id, value FROM readings ORDER BY ts").fetchall()
        letters = con.execute("SELECT source, topic, payload FROM dead_letters").fetchall()
    finally:
        con.close()
    assert rows == [("thermo-1", 21.5), ("thermo-2", 23.5)]
    assert letters == [
        (
            "mqtt",
            "devices/thermo-2/telemetry",
            b'{"ts": "2023-03-28T20:04:24Z", "sensor": "temperature", "value": "warm"}',
        )
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mqtt", "localhost:1883"], "error: invalid MQTT URL 'localhost:1883': expected mqtt://"),
        (["--mqtt", "mqtt://127.0.0.1:70000"], "the port must be a number from 1 to 65535"),
        (
            ["--mqtt", "mqtt://127.0.0.1", "--mqtt-topic", "devices/+x/telemetry"],
            "error: invalid MQTT topic filter 'devices/+x/telemetry': '+' must be a whole level",
        ),
        (
            ["--kafka-source", "127.0.0.1:9092"],
            "error: invalid Kafka URL '127.0.0.1:9092': expected kafka://host[:port][/topic][?group=NAME]",
        ),
    ],
)
def test_a_bad_mqtt_or_kafka_option_exits_2_with_the_reason(args: list[str], message: str) -> None:
    result = _run("up", "--no-table", "--no-simulator", "--port", str(_free_port()), *args)

    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
