"""The rules stage inside the stream processors: CPU cost of rules, alerts and their device events.

The same stream and rules as ``benchmarks/rules.py`` (10 rules of every kind, 12 zones), fed to
``StreamProcessors.on_batch`` as the engine does after each commit, twice in one run:

1. with no rules (live stats, windows, twins: the baseline);
2. with the rules set (``StreamProcessors.set_rules``): the rule book, the alert lifecycle, and
   the ``alert_*`` / ``zone_*`` events appended to the twins.

    .venv/bin/python benchmarks/alert_stage.py [--devices 20000] [--seconds 40]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

from fleetstream.config import StreamSettings
from fleetstream.domain.rulebook import parse_rule, parse_zone
from fleetstream.engine.processors import StreamProcessors
from rules import RULES, ZONES, stream


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=20_000, help="fleet size")
    p.add_argument("--seconds", type=int, default=40, help="event time of the stream")
    args = p.parse_args(argv)
    batches = list(stream(args.devices, args.seconds))
    gc.collect()
    gc.freeze()
    print(f"{args.devices:,} devices, {args.seconds} s of event time, {len(RULES)} rules, {len(ZONES)} zones")
    base = 0.0
    for label, with_rules in (("no rules", False), ("rules, alerts, events", True)):
        sp = StreamProcessors(StreamSettings())
        if with_rules:
            sp.set_rules([parse_rule(r) for r in RULES], [parse_zone(z) for z in ZONES])
        cpu, rows, events, alerts = 0.0, 0, 0, 0
        for batch, now in batches:
            began = time.process_time()
            out = sp.on_batch(batch, now)
            cpu += time.process_time() - began
            rows, events, alerts = rows + len(batch), events + len(out.events), alerts + len(out.alerts)
            sp.alert_changes.clear()  # the engine takes them for live subscribers
        base = base or cpu
        print(
            f"{label:>22}: {rows:,} readings in {cpu:.2f} CPU s = {rows / cpu:,.0f}/s "
            f"({cpu / base:.2f}x), {events:,} device events, {alerts:,} alert changes"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
