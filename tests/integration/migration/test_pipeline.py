"""The migration domain end to end on a generated card database in PostgreSQL:
initial load of every table through cleansed with every check passing, a second
day of changes, PII protection, analyst views, profiles and erasure."""

import os
from datetime import date

import dagster as dg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from assets.migration import DOMAIN
from assets.migration.erasure import AUDIT_TABLE, erase_subject
from assets.migration.factory import build_source_defs, table_key
from assets.migration.loads import dataset_name
from assets.migration.pii import PiiKeyError, decrypt_array, hash_array
from assets.migration.publish import view_name, warehouse_table
from assets.migration.registry import load_registry
from resources.lake import Tier
from resources.secrets import generate_key
from resources.sql_source import SqlSource
from resources.warehouse import DuckDBWarehouse
from services.generators.card_db import apply_day2, generate

END = date(2026, 11, 5)
# Transactions in the generated source; MIGRATION_TEST_SCALE=1000000 runs the same test at 1M rows.
SCALE = int(os.environ.get("MIGRATION_TEST_SCALE", "20000"))
FIRST = "2026-11-01"


@pytest.fixture
def env(pg_url, local_lake, tmp_path, monkeypatch):
    monkeypatch.setenv("PLATFORM_PII_KEY", generate_key())
    generate(pg_url, scale=SCALE, days=5, end_date=END, seed=7, progress=False)
    source = load_registry()[0].model_copy(update={"local_url": pg_url})
    defs = build_source_defs(source)
    resources = {
        **defs.resources,
        "lake": local_lake,
        "warehouse": DuckDBWarehouse(path=str(tmp_path / "wh.duckdb")),
    }
    return source, list(defs.assets), resources, SqlSource(url=pg_url)


def _keys(source, tiers, partitioned: bool):
    return [
        table_key(source, t, tier) for t in source.tables if t.partitioned == partitioned for tier in tiers
    ]


def _load_everything(source, assets, resources, last_day: str) -> list:
    """Observe, raw and cleansed for every table, then profiles and views; returns the check results."""
    checks = []
    unpartitioned = dg.materialize(
        assets, resources=resources, selection=_keys(source, ["source", "raw", "cleansed"], partitioned=False)
    )
    assert unpartitioned.success
    checks += unpartitioned.get_asset_check_evaluations()
    partitioned = dg.materialize(
        assets,
        resources=resources,
        selection=_keys(source, ["raw", "cleansed"], partitioned=True),
        tags={"dagster/asset_partition_range_start": FIRST, "dagster/asset_partition_range_end": last_day},
    )
    assert partitioned.success
    checks += partitioned.get_asset_check_evaluations()
    downstream = dg.materialize(
        assets,
        resources=resources,
        selection=_keys(source, ["profile"], False)
        + _keys(source, ["profile"], True)
        + [dg.AssetKey([DOMAIN, source.name, "views", v.name]) for v in source.views],
    )
    assert downstream.success
    return checks


def _sorted(table: pa.Table, keys: list[str]) -> list[dict]:
    return table.sort_by([(k, "ascending") for k in keys]).to_pylist()


def _assert_raw_equals_source(source, lake, db: SqlSource) -> None:
    for table in source.tables:
        expected = _sorted(db.read_arrow(f"SELECT * FROM {table.source_table}"), table.primary_key)
        actual = _sorted(
            lake.read_parquet(Tier.RAW, DOMAIN, dataset_name(source.name, table.name)), table.primary_key
        )
        assert len(actual) == len(expected), table.name
        assert actual == expected, table.name


def test_initial_load_day2_pii_and_erasure(env):
    source, assets, resources, db = env
    lake, warehouse = resources["lake"], resources["warehouse"]

    checks = _load_everything(source, assets, resources, END.isoformat())
    names = {(c.asset_key.path[-1], c.check_name) for c in checks}
    assert ("card_transactions", "source_row_count_matches") in names
    assert ("customers", "no_plaintext_pii") in names
    assert all(c.passed for c in checks), [
        (c.asset_key, c.check_name, c.metadata) for c in checks if not c.passed
    ]
    _assert_raw_equals_source(source, lake, db)

    # PII: encrypted columns decrypt to the source, purged ones are gone, hashes are not plaintext.
    customers = source.table("customers")
    cleansed = _sorted(
        lake.read_parquet(Tier.PROCESSED, DOMAIN, dataset_name(source.name, "customers")), ["customer_id"]
    )
    plain = _sorted(db.read_arrow("SELECT customer_id, name, phone, email FROM customers"), ["customer_id"])
    assert "rrn" not in cleansed[0] and "address" not in cleansed[0]
    encrypted = pa.array([r["name"] for r in cleansed])
    assert decrypt_array(encrypted).to_pylist() == [r["name"] for r in plain]
    assert all(r["name"].startswith("enc:v1:") for r in cleansed)
    with pytest.raises(PiiKeyError):
        decrypt_array(encrypted, key=generate_key())
    assert [r["email"] for r in cleansed] == hash_array(
        pa.array([(r["email"] or "").strip().lower() or None for r in plain])
    ).to_pylist()
    assert customers.pii["rrn"].value == "purge"

    # Mart types restored and invalid values nulled.
    mart = lake.read_parquet(Tier.PROCESSED, DOMAIN, dataset_name(source.name, "mart_customer_monthly"))
    assert mart.schema.field("total_amount").type == pa.decimal128(18, 2)
    assert mart.schema.field("last_txn_date").type == pa.date32()

    # Views and the status table are in the warehouse.
    assert (
        warehouse.query(f"SELECT count(*) AS n FROM {view_name(source.name, 'customer_card_spend')}")
        .column("n")[0]
        .as_py()
        > 0
    )
    status = (
        warehouse.query("SELECT DISTINCT outcome FROM platform_status.load_status")
        .column("outcome")
        .to_pylist()
    )
    assert status == ["loaded"]

    # Day 2: inserts, updates, deletes and a new day of transactions; every mode lands exactly.
    changes = apply_day2(db.url, seed=7)
    assert changes["customers"]["updated"] > 0 and changes["customers"]["deleted"] > 0
    checks = _load_everything(source, assets, resources, "2026-11-06")
    assert all(c.passed for c in checks)
    _assert_raw_equals_source(source, lake, db)
    wh_rows = warehouse.query(
        f"SELECT count(*) AS n FROM {warehouse_table(source.name, 'card_transactions')}"
    )
    assert wh_rows.column("n")[0].as_py() == db.table_row_count("card_transactions")

    # Erasure: a customer with cards and transactions disappears from every tier and view.
    with db.engine().connect() as conn:
        subject, cards = conn.execute(
            sa.text(
                "SELECT c.customer_id, array_agg(DISTINCT k.card_id) FROM customers c JOIN cards k USING (customer_id) "
                "JOIN card_transactions t ON t.card_id = k.card_id GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
            )
        ).one()
    removals = erase_subject(
        lake, warehouse, source, subject, "test", hash_array(pa.array([str(subject)]))[0].as_py()
    )
    assert {r.table for r in removals} >= {"customers", "cards", "card_transactions"}
    for table in source.tables:
        link = table.erasure
        if not link:
            continue
        ids = {str(subject)} if link.lookup_table is None else {str(c) for c in cards}
        for tier in (Tier.RAW, Tier.PROCESSED):
            data = lake.read_parquet(tier, DOMAIN, dataset_name(source.name, table.name))
            left = {str(v) for v in data.column(link.column).to_pylist()} & ids
            assert not left, (table.name, tier)
        in_wh = warehouse.query(
            f"SELECT count(*) AS n FROM {warehouse_table(source.name, table.name)} "
            f"WHERE CAST({link.column} AS VARCHAR) IN ({', '.join(repr(i) for i in ids)})"
        )
        assert in_wh.column("n")[0].as_py() == 0, table.name
    spend = warehouse.query(
        f"SELECT count(*) AS n FROM {view_name(source.name, 'customer_card_spend')} WHERE customer_id = {subject}"
    )
    assert spend.column("n")[0].as_py() == 0
    audit = warehouse.query(f"SELECT table_name, rows_removed, subject_hash FROM {AUDIT_TABLE}").to_pylist()
    assert sum(a["rows_removed"] for a in audit) == sum(r.rows for r in removals)
    assert all(str(subject) != a["subject_hash"] for a in audit)
