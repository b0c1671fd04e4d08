"""A bus or store URL that no adapter takes is refused by the settings, with the reason, before
any command builds its runtime (it used to surface as a traceback from inside the startup)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetstream.config import load_settings
from fleetstream.errors import ConfigError

FLEETSTREAM = str(Path(sys.executable).parent / "fleetstream")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"bus": "http://127.0.0.1:9092"},
            "unknown bus URL 'http://127.0.0.1:9092': expected one of memory://, kafka://",
        ),
        (
            {"store": "mysql://u@h/db"},
            "unknown store URL 'mysql://u@h/db': expected one of duckdb://, postgresql://, postgres://",
        ),
        (
            {"bus": "kafka://127.0.0.1:9092/readings?partitions=abc"},
            "invalid Kafka bus URL 'kafka://127.0.0.1:9092/readings?partitions=abc': "
            "partitions must be a number from 1 to 10000",
        ),
        ({"bus": "kafka://b:1?partition=8"}, "unknown parameter(s) partition; known: partitions"),
        ({"bus": "kafka://"}, "invalid Kafka URL 'kafka:'"),
    ],
)
def test_bad_bus_and_store_urls_are_refused(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    assert message in caught.value.message


def test_good_urls_pass() -> None:
    settings = load_settings(bus="kafka://b:1/readings?partitions=8", store="postgres://u@h/db")
    assert (settings.bus, settings.store_url) == ("kafka://b:1/readings?partitions=8", "postgres://u@h/db")
    assert load_settings(bus="memory://").bus == "memory://"


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--bus", "kafka://127.0.0.1:1/readings?partitions=abc", "--no-table"],
        ["up", "--bus", "http://127.0.0.1:1", "--no-table"],
        ["api", "--bus", "kafka://127.0.0.1:1?partitions=0", "--store", "postgresql://u@127.0.0.1:1/db"],
    ],
)
def test_commands_say_what_is_wrong_with_exit_2(argv: list[str], tmp_path: Path) -> None:
    out = subprocess.run(
        [FLEETSTREAM, *argv, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p),
        },
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("error: "), out.stderr
    assert "bus URL" in out.stderr
