"""Train the failure predictor from a store's windows and the simulator's failures file.

``fleetstream train`` calls :func:`train_from_store`: it reads every device's
closed windows of one size from the store, labels each feature row with the
ground truth (``fleetstream simulate --failures FILE``), groups devices into
sites, runs federated rounds (:mod:`fleetstream.domain.federated`) and saves
each round in the store's model registry. Round numbers continue those
already stored, so the registry is one history across training runs.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from fleetstream.domain.failure_truth import Outage, label
from fleetstream.domain.features import HOST_SENSORS, FeatureExtractor, feature_rows
from fleetstream.domain.federated import ModelRound, classification_metrics, site_of, train_federated
from fleetstream.domain.window_records import ALL_DEVICES
from fleetstream.errors import ConfigError
from fleetstream.ports import Store, WindowQuery

Windows = list[tuple[int, dict[str, tuple[float, float | None]]]]
_EVER = (0, 4_102_444_800_000_000)  # 1970 .. 2100: every window a store can hold
_PAGE = 1_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(text: str | None, where: str) -> int | None:
    if text in (None, ""):
        return None
    try:
        dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        msg = f"{where}: {text!r} is not an RFC 3339 time"
        raise ConfigError(msg) from None
    if dt.tzinfo is None:
        msg = f"{where}: {text!r} has no time zone"
        raise ConfigError(msg)
    return (dt - _EPOCH) // timedelta(microseconds=1)  # exact: no float seconds


def load_outages(path: Path) -> dict[str, list[Outage]]:
    """The failures file (JSON lines, or CSV when it ends in ``.csv``): outages per device.

    Raises:
        ConfigError: the file cannot be read or a record is malformed (the message says where).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read the failures file {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from None
    records: list[dict[str, Any]] = []
    if path.suffix.lower() == ".csv":
        records = list(csv.DictReader(text.splitlines()))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    msg = f"{path}:{n}: not JSON ({exc.msg})"
                    raise ConfigError(msg) from None
    out: dict[str, list[Outage]] = {}
    for n, r in enumerate(records, 1):
        where = f"{path}: record {n}"
        if not isinstance(r, dict) or not r.get("device_id") or not r.get("degraded_at"):
            msg = f"{where}: needs device_id and degraded_at (see docs/simulator.md, the failures file)"
            raise ConfigError(msg)
        degraded = _us(r["degraded_at"], where)
        assert degraded is not None
        outage = Outage(
            str(r["device_id"]),
            degraded,
            _us(r.get("failing_at"), where),
            _us(r.get("failed_at"), where),
            _us(r.get("recovered_at"), where),
        )
        out.setdefault(outage.device_id, []).append(outage)
    return out


def load_site_map(path: Path) -> dict[str, str]:
    """A CSV of ``device_id,site`` rows (a header row ``device_id,site`` is allowed): site per device.

    Raises:
        ConfigError: the file cannot be read or a row has not two non-empty cells.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read the site map {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from None
    out: dict[str, str] = {}
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or (n == 1 and [c.strip() for c in row] == ["device_id", "site"]):
            continue
        cells = [c.strip() for c in row]
        if len(cells) != 2 or not all(cells):
            msg = f"{path}:{n}: expected device_id,site, got {','.join(row)!r}"
            raise ConfigError(msg)
        out[cells[0]] = cells[1]
    return out


async def store_windows(store: Store, size_us: int) -> dict[str, Windows]:
    """Every device's stored windows of ``size_us``, grouped by window end: sensor → (mean, stddev)."""
    devices: list[str] = []
    offset = 0
    while True:
        total, page = await store.list_twins(None, None, _PAGE, offset)
        devices += [t.device_id for t in page]
        offset += len(page)
        if not page or offset >= total:
            break
    out: dict[str, Windows] = {}
    for device in devices:
        if device == ALL_DEVICES:
            continue
        query = WindowQuery(size_us, _EVER[0], _EVER[1], device_id=device, limit=10_000_000)
        by_end: dict[int, dict[str, tuple[float, float | None]]] = {}
        for w in await store.query_windows(query):
            if w.mean is not None:
                by_end.setdefault(w.end, {})[w.sensor] = (w.mean, w.stddev)
        if by_end:
            out[device] = sorted(by_end.items())
    return out


def _rows(
    devices: list[str], windows: dict[str, Windows], truth: dict[str, list[Outage]]
) -> tuple[np.ndarray, np.ndarray]:
    xs: list[list[float]] = []
    ys: list[int] = []
    for device in devices:
        times, rows = feature_rows(FeatureExtractor(HOST_SENSORS), device, windows[device])
        xs += rows
        ys += [label(truth.get(device, []), t) for t in times]
    width = len(FeatureExtractor(HOST_SENSORS).names)
    return np.asarray(xs, np.float64).reshape(len(xs), width), np.asarray(ys, np.float64)


async def train_from_store(
    store: Store,
    truth: dict[str, list[Outage]],
    *,
    sites: int = 4,
    rounds: int = 10,
    epochs: int = 10,
    size_us: int = 60_000_000,
    validation: float = 0.2,
    site_key: Callable[[str], str] | None = None,
    now: datetime | None = None,
) -> list[ModelRound]:
    """Train federated rounds on the store's windows and save each; the saved rounds.

    Devices are split (seeded by their ids) into training and validation devices; each
    round's metrics are the averaged model's on the validation devices.

    Raises:
        ConfigError: bad numbers, no windows of a host sensor, or no failure among the training rows.
    """
    if sites < 1 or rounds < 1 or epochs < 1 or not 0 <= validation < 1:
        msg = "sites, rounds and epochs must be >= 1 and the validation share in [0, 1)"
        raise ConfigError(msg)
    windows = await store_windows(store, size_us)
    names = FeatureExtractor(HOST_SENSORS).names
    devices = sorted(windows)
    random.Random(0).shuffle(devices)
    n_val = int(len(devices) * validation)
    val, fit = devices[:n_val], devices[n_val:]
    key = site_key or (lambda d: site_of(d, sites))
    by_site: dict[str, list[str]] = {}
    for d in fit:
        by_site.setdefault(key(d), []).append(d)
    data = {s: _rows(devs, windows, truth) for s, devs in sorted(by_site.items())}
    data = {s: xy for s, xy in data.items() if len(xy[1])}
    if not data:
        sensors = ", ".join(HOST_SENSORS)
        msg = f"no device has {size_us // 1_000_000} s windows of every host sensor ({sensors})"
        raise ConfigError(msg)
    if not any(y.sum() for _, y in data.values()):
        msg = "no training row falls in a degradation that ended in a failure: nothing to learn from"
        raise ConfigError(msg)
    x_val, y_val = _rows(val, windows, truth)

    def evaluate(model: Any) -> dict[str, float]:
        return classification_metrics(model.predict(x_val), y_val) if len(y_val) else {}

    stamp = now or datetime.now(UTC)
    created = round(stamp.timestamp() * 1_000_000)
    stored = await store.list_model_rounds()
    first = stored[-1].round if stored else 0
    trained = train_federated(data, names, rounds, epochs, evaluate=evaluate, now_us=created)
    out = []
    for r in trained:
        number = first + r.round
        saved = replace(r, round=number, version=f"{stamp:%Y%m%dT%H%M%SZ}-r{number}")
        await store.save_model_round(saved)
        out.append(saved)
    return out


def store_url_of(text: str) -> str:
    """``data/fleetstream.duckdb`` (must exist) or a store URL → a store URL.

    Raises:
        ConfigError: a path that is not an existing file.
    """
    if "://" in text:
        return text
    path = Path(text)
    if not path.is_file():
        msg = f"no store file at {text}: give the DuckDB file of `fleetstream up --data DIR` or a store URL"
        raise ConfigError(msg)
    return f"duckdb:///{path.resolve()}"


def format_rounds(rounds: list[ModelRound]) -> str:
    """The rounds as a small text table."""
    lines = [f"{'round':>5}  {'version':<24} {'sites':>5} {'rows':>8} {'log loss':>9} {'AUC':>6}"]
    for r in rounds:
        loss, auc = r.metrics.get("log_loss"), r.metrics.get("auc")
        lines.append(
            f"{r.round:>5}  {r.version:<24} {r.n_sites:>5} {r.n_samples:>8,} "
            f"{'-' if loss is None else f'{loss:.4f}':>9} {'-' if auc is None else f'{auc:.3f}':>6}"
        )
    return "\n".join(lines)


async def run_training(
    store_url: str, failures: Path, *, site_map: Path | None = None, **options: Any
) -> list[ModelRound]:
    """Open the store, train (see :func:`train_from_store`), close it; the saved rounds.

    ``site_map`` names each device's site (a CSV of ``device_id,site``); devices not in it
    are hashed into ``sites`` groups.

    Raises:
        ConfigError: a bad store, failures file, site map or option.
    """
    from fleetstream.adapters import STORES, by_url

    truth = load_outages(failures)
    if site_map is not None:
        mapping = load_site_map(site_map)
        hashed = int(options.get("sites", 4))
        options["site_key"] = lambda d: mapping.get(d) or site_of(d, hashed)
    store: Store = by_url(STORES, store_url_of(store_url), "store")
    await store.start()
    try:
        return await train_from_store(store, truth, **options)
    finally:
        await store.close()
