"""A smoke run of ``benchmarks/prediction.py --quick``: it runs, scores every model and writes its table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "prediction.py"


def test_quick_prediction_benchmark_writes_a_table_of_three_models(tmp_path: Path) -> None:
    out = tmp_path / "prediction.md"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(SCRIPT.parents[1] / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    table = out.read_text(encoding="utf-8")
    assert table.strip() == done.stdout.strip()
    rows = [line for line in table.splitlines() if re.match(r"\| (federated|central|fixed rule)", line)]
    assert [r.split("|")[1].split()[0] for r in rows] == ["federated", "central", "fixed"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        alerts, hits, false_alarms = int(cells[2]), int(cells[3]), int(cells[4].split()[0])
        precision, failures, detected, recall = float(cells[5]), int(cells[6]), int(cells[7]), float(cells[8])
        assert alerts == hits + false_alarms
        assert precision == round(hits / alerts, 2)
        assert recall == round(detected / failures, 2)
    rounds = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert [r["round"] for r in rounds] == list(range(1, 9))
