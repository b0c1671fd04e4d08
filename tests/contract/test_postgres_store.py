"""What is particular to the PostgreSQL store (its answers are the Store contract's): the URL, the
schema and indexes it creates, reopening, and failures turned into StoreError at its edge."""

from __future__ import annotations

import psycopg
import pytest

from fleetstream.adapters import STORES, by_url
from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.domain.batch import Batch
from fleetstream.errors import ConfigError, StoreError
from fleetstream.ports import MetricsQuery

from .test_store_contract import DATA, LETTERS, S, call


def test_the_url_registry_opens_postgresql_urls() -> None:
    for url in ("postgresql://u@h/db", "postgres://u@h/db"):
        assert isinstance(by_url(STORES, url, "store"), PostgresStore)
    with pytest.raises(ConfigError, match="not a postgresql URL"):
        PostgresStore("mysql://u@h/db")


def test_the_schema_indexes_and_reopening(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    call(store.start())
    assert store.layout == "BRIN-indexed table"
    call(store.write(Batch.from_messages(DATA)))
    call(store.write_dead_letters(LETTERS[:1]))
    call(store.close())

    again = PostgresStore(postgres_url)
    call(again.start())  # the schema exists: created again harmlessly
    call(again.write_dead_letters(LETTERS[1:2]))
    assert call(again.log_position()) == (4, 30 * S)
    assert [d.id for d in call(again.dead_letters())] == [2, 1]
    indexes = call(again.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'readings'"))
    call(again.close())

    defs = dict(indexes)
    assert "USING brin (ts)" in defs["readings_ts"]
    assert "USING btree (seq)" in defs["readings_seq"]
    assert "WHERE (msg_id IS NOT NULL)" in defs["readings_msg_id"]
    with psycopg.connect(postgres_url) as con:
        keys = con.execute(
            """SELECT c.relname, pg_get_constraintdef(k.oid) FROM pg_constraint k
               JOIN pg_class c ON c.oid = k.conrelid
               WHERE k.contype = 'p' AND c.relnamespace = 'public'::regnamespace"""
        ).fetchall()
    assert dict(keys) == {
        "alerts": "PRIMARY KEY (id)",
        "checkpoints": "PRIMARY KEY (name)",
        "dead_letters": "PRIMARY KEY (id)",
        "device_events": "PRIMARY KEY (device_id, seq)",
        "late_readings": "PRIMARY KEY (seq, size_us)",
        "meta": "PRIMARY KEY (key)",
        "model_rounds": "PRIMARY KEY (round)",
        "readings_1h": "PRIMARY KEY (sensor, hour, shard)",
        "readings_1m": "PRIMARY KEY (sensor, minute, shard)",
        "rules": "PRIMARY KEY (id)",
        "twins": "PRIMARY KEY (device_id)",
        "windows": "PRIMARY KEY (size_us, device_id, start, sensor)",
        "zones": "PRIMARY KEY (id)",
    }


def test_a_schema_2_database_gains_the_alert_and_model_tables(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    call(store.start())
    call(store.write(Batch.from_messages(DATA)))
    call(store.close())
    # As the release before alerts and the model registry left it.
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute("DROP TABLE alerts, rules, zones, model_rounds")
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    again = PostgresStore(postgres_url)
    call(again.start())
    call(again.put_definition("rules", "hot", {"id": "hot"}))
    assert call(again.definitions("rules")) == {"hot": {"id": "hot"}}
    assert call(again.log_position()) == (4, 30 * S)  # the readings are still there
    assert call(again.execute("SELECT value FROM meta WHERE key = 'schema_version'")) == [("4",)]
    call(again.close())


def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        con.execute("INSERT INTO meta VALUES ('schema_version', '99')")

    with pytest.raises(StoreError, match=r"newer fleetstream \(schema 99 > 4\)"):
        call(PostgresStore(postgres_url).start())


def test_an_unreachable_server_is_a_store_error_without_the_password() -> None:
    store = PostgresStore("postgresql://fleet:s3cret@127.0.0.1:1/db?connect_timeout=2")

    with pytest.raises(StoreError) as failed:
        call(store.start())

    assert "cannot open PostgreSQL store postgresql://fleet:***@127.0.0.1:1/db" in failed.value.message
    assert "s3cret" not in failed.value.message


def test_dropped_connections_fail_one_call_then_reconnect(postgres_url: str) -> None:
    async def scenario() -> list[str]:
        store = PostgresStore(postgres_url, readers=1)
        await store.start()
        seen = []
        try:
            await store.write(Batch.from_messages(DATA[:1]))
            # The server ends every session of the store (as a restart or a failover would).
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(
                    """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                       WHERE datname = current_database() AND pid <> pg_backend_pid()"""
                )
            query = MetricsQuery(0, 100 * S, ("count",), ("t",))
            for step in (store.write(Batch.from_messages(DATA[1:2])), store.query_metrics(query)):
                try:
                    await step
                    seen.append("ok")
                except StoreError as exc:
                    seen.append(exc.message.split(":")[0])
            await store.write(Batch.from_messages(DATA[1:2]))
            seen.append(str((await store.query_metrics(query))["t"]["count"]))
        finally:
            await store.close()
        return seen

    assert call(scenario()) == ["PostgreSQL unreachable", "PostgreSQL unreachable", "2"]
