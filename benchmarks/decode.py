"""Decode throughput of one request body, this tree against another revision's ``src``.

What it measures: messages per second through ``decode_body`` (both fast-path and general-path
bodies, batches of ``--batch``), best of ``--repeat`` timings, for this tree and for the tree
named by ``--baseline-src`` (e.g. an older revision unpacked with ``git archive REV src``),
each in its own interpreter. The ratio this/baseline shows what the range check costs.

    git archive HEAD~3 src | tar -x -C /tmp/base
    .venv/bin/python benchmarks/decode.py --baseline-src /tmp/base/src
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, timeit
from fleetstream.ingest.decode import decode_body
from fleetstream.ingest.formats import DecodeContext
batch, repeat = int(sys.argv[1]), int(sys.argv[2])
ctx = DecodeContext(1_700_000_000_000_000, 86_400_000_000)
t = "2023-11-14T22:00:00Z"
bodies = {
    "typed (fast path)": [
        {"device_id": f"d{i % 50}", "timestamp": t, "temperature": 20 + i % 10, "tag": "Thermostat"}
        for i in range(batch)
    ],
    "canonical (fast path)": [
        {"device_id": f"d{i % 50}", "timestamp": t, "sensor": "temperature", "value": 20.5}
        for i in range(batch)
    ],
    "envelope (general path)": [
        {"device_id": i % 50, "type": "heartbeat", "ts": t, "event": {"cpu_usage": 50.0, "mem_usage": 10.0}}
        for i in range(batch)
    ],
}
out = {}
for name, items in bodies.items():
    body = json.dumps(items).encode()
    assert len(decode_body(body, "json", ctx, 100_000).rejected) == 0
    n = max(1, 20_000 // batch)
    best = min(timeit.repeat(lambda: decode_body(body, "json", ctx, 100_000), number=n, repeat=repeat))
    out[name] = batch * n / best
print(json.dumps(out))
"""


def _run(src: Path, batch: int, repeat: int) -> dict[str, float]:
    env_src = str(src)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(batch), str(repeat)],
        env={"PYTHONPATH": env_src},
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(proc.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-src", type=Path, required=True, help="another revision's src directory")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent / "src"
    base = _run(args.baseline_src, args.batch, args.repeat)
    this = _run(here, args.batch, args.repeat)
    print(f"{'body':<26}{'baseline msg/s':>16}{'this msg/s':>14}{'ratio':>8}")
    for name in this:
        print(f"{name:<26}{base[name]:>16,.0f}{this[name]:>14,.0f}{this[name] / base[name]:>8.2f}")


if __name__ == "__main__":
    main()
