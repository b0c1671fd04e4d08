"""Helpers shared by the benchmarks: servers on free loopback ports stopped by PID, CPU use, tables.

Not a benchmark itself. Every process started here is a ``subprocess.Popen`` whose handle the
caller keeps and stops with :meth:`Server.stop` (terminate, wait, kill only if it hangs).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http(method: str, url: str, body: Any = None, *, timeout: float = 10.0) -> tuple[int, Any]:
    """One request with the standard library; returns (status, decoded JSON or text)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


@dataclass
class Server:
    """A server child process on ``127.0.0.1:port``, logging to ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        """Poll ``path`` until it answers 200; raise with the log when the process dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if http("GET", self.url + path, timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready within {timeout:g} s:\n{self.output()}")

    def stop(self) -> int:
        """Stop by PID: SIGTERM, wait, SIGKILL only if it does not exit within 30 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start(
    name: str, cmd: Sequence[str], port: int, log: Path, ready_path: str, ready_timeout: float = 60.0
) -> Server:
    """Start ``cmd`` (which must listen on ``port``) and wait until ``ready_path`` answers 200."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(name, proc, port, log)
    try:
        server.wait_ready(ready_path, ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server


def start_fleetstream(data: Path, log: Path, *extra: str, ready_timeout: float = 60.0) -> Server:
    """``fleetstream up --no-simulator --no-table`` on a free port with its DuckDB under ``data``.

    ``ready_timeout``: a first start on a file without a checkpoint replays every stored reading.
    """
    port = free_port()
    cmd = [
        sys.executable, "-m", "fleetstream", "up", "--no-simulator", "--no-table",
        "--port", str(port), "--data", str(data), "--log-level", "warning", *extra,
    ]  # fmt: skip
    return start("fleetstream", cmd, port, log, "/readyz", ready_timeout)


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far by a process: its main thread and all its other threads."""

    main_s: float
    others_s: float

    @property
    def total_s(self) -> float:
        return self.main_s + self.others_s


def cpu_of(pid: int) -> CpuSample:
    """Read /proc: user+system time of the main thread (the event loop) and of every other thread."""
    main = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended between listing and reading
            continue
        seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        if task.name == str(pid):
            main += seconds
        else:
            others += seconds
    return CpuSample(main, others)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q / 100 * len(sorted_values) + 0.5))
    return sorted_values[min(len(sorted_values), rank) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (renders in docs/benchmarks.md and reads fine in a terminal)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def machine() -> str:
    """One line about the machine: cores, CPU model, Python, key library versions."""
    model = "unknown CPU"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for dist in ("uvicorn", "uvloop", "httptools", "fastapi", "starlette", "msgspec", "duckdb", "pyarrow"):
        try:
            from importlib.metadata import version

            versions.append(f"{dist} {version(dist)}")
        except Exception:
            continue
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, " + ", ".join(versions)


def source_revision() -> str:
    """The commit of the tree under test, with ``+dirty`` when src/ has uncommitted changes."""
    root = HERE.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def stop_on_sigterm() -> None:
    """Make SIGTERM (and SIGINT, even when inherited as ignored) raise KeyboardInterrupt.

    The benchmarks then leave through their ``finally`` blocks, which stop every child process by
    PID, however they are stopped.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
