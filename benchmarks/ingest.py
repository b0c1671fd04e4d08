"""Ingest throughput and latency of ``fleetstream up`` over HTTP, against a bare ASGI ceiling.

What it measures: readings per second acknowledged (HTTP 202, i.e. durable: committed to
DuckDB, DESIGN.md §5) by ``POST /api/v1/telemetry`` with JSON arrays of ``--batch`` readings
from ~1000 devices (typed and canonical messages), sent over ``--concurrency`` keep-alive
connections from a separate load process (``_loadgen.py``, raw asyncio on uvloop), for
``--seconds`` after a ``--warmup``; requests per second, p50/p99 request latency, errors.

Baseline, in the same run and with the same load process and bodies: the bare ceiling
(``_bare_server.py``), a minimal ASGI app on uvicorn (httptools, uvloop) that reads the body,
decodes it with ``msgspec.json.decode`` and answers 202. The ratio fleetstream/bare says how
much of what this HTTP stack can carry on this machine survives validation, dedup, the bus
and the group commit.

Afterwards the number of readings stored (``GET /api/v1/metrics?agg=count`` over all time) is
checked against the number acknowledged. Targets: >= 100,000 readings/s and >= 0.3 of bare.

    .venv/bin/python benchmarks/ingest.py [--seconds 20] [--concurrency 128] [--batch 100]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _harness import (
    HERE,
    OUT,
    CpuSample,
    Server,
    cpu_of,
    free_port,
    http,
    machine,
    median,
    source_revision,
    start,
    stop_on_sigterm,
    table,
)
from _harness import start_fleetstream as start_fleetstream_server

TARGET_READINGS_PER_S = 100_000
TARGET_RATIO = 0.3
ALL_TIME = "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"


@dataclass
class Run:
    """One measured run of the load process against one server."""

    target: str
    result: dict[str, Any]
    server_cpu: tuple[CpuSample, CpuSample] | None
    stored: int | None = None
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def window_s(self) -> float:
        return float(self.result["window_s"])

    def cpu_pct(self) -> tuple[float, float]:
        """Server CPU during the window: main thread (event loop) and all other threads, in %."""
        if self.server_cpu is None:
            return float("nan"), float("nan")
        a, b = self.server_cpu
        return 100 * (b.main_s - a.main_s) / self.window_s, 100 * (b.others_s - a.others_s) / self.window_s


def run_load(server: Server, args: argparse.Namespace, path: str, log: Path) -> Run:
    """Drive ``server`` with the load process; sample the server's CPU when the window opens/closes."""
    cmd = [
        sys.executable, str(HERE / "_loadgen.py"), "--port", str(server.port), "--path", path,
        "--seconds", str(args.seconds), "--warmup", str(args.warmup),
        "--concurrency", str(args.concurrency), "--batch", str(args.batch), "--devices", str(args.devices),
        *(["--by-format"] if args.by_format else []),
    ]  # fmt: skip
    samples: list[CpuSample] = []
    result: dict[str, Any] | None = None
    profiler: subprocess.Popen[bytes] | None = None
    with log.open("ab") as err:
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    try:
        assert load.stdout is not None
        deadline = time.monotonic() + args.warmup + args.seconds + 120
        for raw in load.stdout:
            line = raw.decode().strip()
            if line in ("WINDOW_START", "WINDOW_END"):
                samples.append(cpu_of(server.pid))
                if line == "WINDOW_START" and args.profile and server.name == "fleetstream":
                    profiler = start_profiler(server.pid, args)
            elif line.startswith("RESULT "):
                result = json.loads(line.removeprefix("RESULT "))
            if time.monotonic() > deadline:
                break
        load.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(10)
        if profiler is not None:
            stop_profiler(profiler)
    if result is None:
        raise RuntimeError(f"the load process gave no result (exit {load.returncode}); see {log}")
    cpu = (samples[0], samples[1]) if len(samples) == 2 else None
    return Run(server.name, result, cpu, peak_rss_mb=peak_rss_mb(server.pid))


def peak_rss_mb(pid: int) -> float | None:
    """The server's peak resident memory so far (VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_profiler(pid: int, args: argparse.Namespace) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of the server over the window, when py-spy is installed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("  (--profile: py-spy not found; .venv/bin/pip install py-spy)", flush=True)
        return None
    out = Path(args.profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)), "--rate", "200",
           "--threads", "--nonblocking", "--output", str(out), *(["--gil"] if args.gil else [])]  # fmt: skip
    if out.suffix != ".svg":
        cmd += ["--format", "speedscope" if out.suffix == ".json" else "raw"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(profiler: subprocess.Popen[bytes]) -> None:
    try:
        profiler.wait(30)
    except subprocess.TimeoutExpired:
        profiler.terminate()
        profiler.wait(10)


def stored_readings(server: Server) -> int:
    """Readings stored, summed over sensors, from the query API over all time."""
    status, body = http("GET", f"{server.url}/api/v1/metrics?agg=count&{ALL_TIME}", timeout=60)
    if status != 200:
        raise RuntimeError(f"GET /api/v1/metrics answered {status}: {body}")
    return sum(int(m["count"]) for m in body["metrics"].values())


def bench_bare(args: argparse.Namespace, logs: Path) -> Run:
    port = free_port()
    log = logs / "bare-server.log"
    server = start(
        "bare", [sys.executable, str(HERE / "_bare_server.py"), "--port", str(port)], port, log, "/"
    )
    try:
        return run_load(server, args, "/ingest", logs / "loadgen.log")
    finally:
        server.stop()


def bench_fleetstream(args: argparse.Namespace, logs: Path, data: Path) -> Run:
    server = start_fleetstream_server(data, logs / "fleetstream.log")
    try:
        run = run_load(server, args, "/api/v1/telemetry", logs / "loadgen.log")
        run.stored = stored_readings(server)
    finally:
        code = server.stop()
        if code not in (0, -15):
            print(f"  fleetstream exited with {code}; log: {logs / 'fleetstream.log'}", flush=True)
    return run


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


def errors_of(run: Run) -> str:
    errors: dict[str, int] = run.result["errors"]
    if run.result.get("rejected_items"):
        errors = {**errors, "rejected": run.result["rejected_items"]}
    return ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "0"


def report(runs: list[Run], args: argparse.Namespace) -> bool:
    """Print the per-run and median tables, the ratio, the durability check; True if targets met."""
    rows = []
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.target] = seen.get(run.target, 0) + 1
        r = run.result
        main, others = run.cpu_pct()
        rows.append([
            f"{run.target} #{seen[run.target]}", fmt(r["readings_per_s"]), fmt(r["requests_per_s"]),
            fmt(r["p50_ms"], 1), fmt(r["p99_ms"], 1), errors_of(run),
            f"{fmt(main)} + {fmt(others)}", fmt(r["loadgen_cpu_pct"]),
            fmt(run.peak_rss_mb) if run.peak_rss_mb is not None else "-",
        ])  # fmt: skip
    headers = [
        "target",
        "readings/s",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "server CPU % (loop + other threads)",
        "load CPU %",
        "server peak RSS MB",
    ]
    print("\nEach run:\n" + table(headers, rows))
    seen = {}
    for run in runs:
        seen[run.target] = seen.get(run.target, 0) + 1
        series = " ".join(f"{n / 1000:.0f}" for n in run.result.get("per_second", []))
        print(f"  {run.target} #{seen[run.target]}, thousand readings acknowledged in each second: {series}")

    by: dict[str, list[Run]] = {"bare": [], "fleetstream": []}
    for run in runs:
        by[run.target].append(run)
    med: dict[str, dict[str, float]] = {}
    rows = []
    for target in ("bare", "fleetstream"):
        if not by[target]:
            continue
        m = {
            k: median([float(x.result[k]) for x in by[target]])
            for k in ("readings_per_s", "requests_per_s", "p50_ms", "p99_ms")
        }
        med[target] = m
        errors = sum(sum(x.result["errors"].values()) for x in by[target])
        rows.append(
            [
                target,
                fmt(m["readings_per_s"]),
                fmt(m["requests_per_s"]),
                fmt(m["p50_ms"], 1),
                fmt(m["p99_ms"], 1),
                str(errors),
            ]
        )
    n = len(by["fleetstream"]) or len(by["bare"])
    print(
        f"\nMedian of {n} run(s), {args.seconds:g} s each, "
        f"concurrency {args.concurrency}, batch {args.batch}:"
    )
    print(table(["target", "readings/s", "requests/s", "p50 ms", "p99 ms", "errors"], rows))

    ok = True
    if "fleetstream" in med:
        rate = med["fleetstream"]["readings_per_s"]
        hit = rate >= TARGET_READINGS_PER_S
        ok &= hit
        print(f"\nfleetstream: {rate:,.0f} readings/s acknowledged (target >= {TARGET_READINGS_PER_S:,}): "
              f"{'met' if hit else 'MISSED'}")  # fmt: skip
    if len(med) == 2:
        ratio = med["fleetstream"]["readings_per_s"] / med["bare"]["readings_per_s"]
        hit = ratio >= TARGET_RATIO
        ok &= hit
        print(f"ratio fleetstream/bare: {ratio:.3f} (target >= {TARGET_RATIO}): {'met' if hit else 'MISSED'}")
    for run in by["fleetstream"]:
        acked = int(run.result["acked_readings"])
        same = run.stored == acked
        ok &= same
        print(f"durability check: acknowledged {acked:,} readings, stored {run.stored:,}: "
              f"{'equal' if same else 'DIFFERENT'}")  # fmt: skip
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="measured window per run (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="load before the window opens (default 3)")
    p.add_argument("--concurrency", type=int, default=128, help="keep-alive connections (default 128)")
    p.add_argument("--batch", type=int, default=100, help="readings per request (default 100)")
    p.add_argument("--devices", type=int, default=1000, help="distinct devices (default 1000)")
    p.add_argument(
        "--by-format",
        action="store_true",
        help="each batch only typed or only canonical messages (default: every batch mixes both)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of each target, medians reported (default 1)")
    p.add_argument("--only", choices=("both", "bare", "fleetstream"), default="both")
    p.add_argument("--profile", metavar="OUT", help="py-spy record the fleetstream server (.svg/.json)")
    p.add_argument("--gil", action="store_true", help="with --profile: only samples holding the GIL")
    p.add_argument("--keep", action="store_true", help="keep the DuckDB data and logs under benchmarks/out/")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    started = datetime.now(UTC)
    print(f"ingest benchmark, {started:%Y-%m-%d %H:%M} UTC, fleetstream at {source_revision()}")
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ingest-", dir=OUT))
    runs: list[Run] = []
    keep = args.keep
    try:
        for i in range(args.repeat):
            if args.only in ("both", "bare"):
                print(f"run {i + 1}/{args.repeat}: bare ASGI ceiling ...", flush=True)
                runs.append(bench_bare(args, work))
            if args.only in ("both", "fleetstream"):
                print(f"run {i + 1}/{args.repeat}: fleetstream up ...", flush=True)
                runs.append(bench_fleetstream(args, work, work / f"data-{i}"))
                if not args.keep:
                    shutil.rmtree(work / f"data-{i}", ignore_errors=True)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except BaseException:
        keep = True  # the logs explain the failure
        raise
    finally:
        if keep:
            print(f"data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    ok = report(runs, args)
    print(f"\ntook {(datetime.now(UTC) - started).total_seconds():.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
