"""The DuckDB table of the model registry: one row per federated training round.

Functions over a connection, called by :class:`~fleetstream.adapters.store.duckdb.DuckDBStore` on
its writer or reader threads. Saving a round again (same round number) replaces it.
"""

from __future__ import annotations

import duckdb
import msgspec

from fleetstream.domain.federated import ModelRound

DDL = """
CREATE TABLE IF NOT EXISTS model_rounds (
    round INTEGER PRIMARY KEY,       -- 1, 2, ... across training runs (a run continues the numbering)
    version VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,   -- UTC
    n_sites INTEGER NOT NULL,
    n_samples BIGINT NOT NULL,
    params VARCHAR NOT NULL,         -- JSON: the averaged model (standardisation included)
    metrics VARCHAR NOT NULL         -- JSON: e.g. {"log_loss": 0.15, "auc": 0.94}
);
"""

_encode = msgspec.json.Encoder().encode


def save_model_round(con: duckdb.DuckDBPyConnection, r: ModelRound) -> None:
    """Store one round (replacing a stored round of the same number)."""
    con.execute(
        "INSERT OR REPLACE INTO model_rounds VALUES (?, ?, make_timestamp(?), ?, ?, ?, ?)",
        [
            r.round,
            r.version,
            r.created_at,
            r.n_sites,
            r.n_samples,
            _encode(r.params).decode(),
            _encode(r.metrics).decode(),
        ],
    )


def list_model_rounds(con: duckdb.DuckDBPyConnection) -> list[ModelRound]:
    """Every stored round, oldest first."""
    rows = con.execute(
        """SELECT round, version, epoch_us(created_at), n_sites, n_samples, params, metrics
           FROM model_rounds ORDER BY round"""
    ).fetchall()
    return [
        ModelRound(int(n), str(v), msgspec.json.decode(p), int(s), int(k), msgspec.json.decode(m), int(c))
        for n, v, c, s, k, p, m in rows
    ]
