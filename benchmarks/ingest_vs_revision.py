"""End-to-end ingest of this tree against an earlier revision, interleaved in one run.

What it measures: ``benchmarks/ingest.py --only fleetstream`` (HTTP → gateway → DuckDB → processors,
readings/s acknowledged) run alternately on the server of a git revision (the baseline, default
``6a422d9``: the embedded pipeline before the stream core) and on the working tree's, ``--pairs``
times, so machine noise hits both alike. Prints each run, the medians and the ratio; the target is
that the stream core (windows, twins, checkpoints) costs at most 20% of the baseline's figure.

The baseline's code is checked out as a git worktree under ``benchmarks/out/`` and run with its
``src`` first on ``PYTHONPATH`` (same virtualenv, same dependencies).

    .venv/bin/python benchmarks/ingest_vs_revision.py [--baseline 6a422d9] [--pairs 3] [--seconds 15]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from _harness import OUT, machine, source_revision, table

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 0.8
_RATE = re.compile(r"^fleetstream: ([\d,]+) readings/s", re.MULTILINE)


def worktree(revision: str) -> Path:
    """A checkout of ``revision`` under benchmarks/out (made once, reused)."""
    path = OUT / f"rev-{revision}"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), revision], check=True
        )
    return path


def measure(tree: Path, seconds: float) -> float:
    """readings/s of one ``ingest.py --only fleetstream`` run of the server in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    cmd = [
        sys.executable,
        str(tree / "benchmarks" / "ingest.py"),
        "--only",
        "fleetstream",
        "--seconds",
        str(seconds),
    ]
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=seconds * 10 + 120, check=False
    )
    found = _RATE.search(done.stdout)
    if found is None:
        raise SystemExit(f"no figure from {tree}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return float(found.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="6a422d9", help="git revision to compare with (default 6a422d9)")
    p.add_argument("--pairs", type=int, default=3, help="baseline/current run pairs (default 3)")
    p.add_argument("--seconds", type=float, default=15.0, help="measured window per run (default 15)")
    args = p.parse_args(argv)
    print(f"ingest against {args.baseline}, fleetstream at {source_revision()}")
    print(f"machine: {machine()}")
    base_tree = worktree(args.baseline)
    rows: list[list[object]] = []
    base: list[float] = []
    now: list[float] = []
    for i in range(1, args.pairs + 1):
        base.append(measure(base_tree, args.seconds))
        now.append(measure(ROOT, args.seconds))
        rows.append([i, f"{base[-1]:,.0f}", f"{now[-1]:,.0f}", f"{now[-1] / base[-1]:.3f}"])
        print(f"pair {i}: baseline {base[-1]:,.0f}, current {now[-1]:,.0f} readings/s", flush=True)
    rows.append(["median", f"{statistics.median(base):,.0f}", f"{statistics.median(now):,.0f}", ""])
    print(table(["pair", f"{args.baseline} readings/s", "current readings/s", "current / baseline"], rows))
    ratio = statistics.median(now) / statistics.median(base)
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    print(f"current / baseline (medians): {ratio:.3f} (target >= {TARGET_RATIO}): {verdict}")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
