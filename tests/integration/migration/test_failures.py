"""A failed load names table, partition and cause, in the run and in the status table, and re-running it is safe."""

from datetime import date, datetime

import dagster as dg
import sqlalchemy as sa

from assets.migration.factory import build_source_defs, table_key
from assets.migration.registry import SourceSystem
from resources.sql_source import SqlSource
from resources.warehouse import DuckDBWarehouse

SOURCE = {
    "name": "shop",
    "description": "a small source",
    "url_env": "SHOP_URL",
    "local_url": "",
    "tables": [
        {
            "name": "orders",
            "description": "Orders.",
            "source_table": "orders",
            "load_mode": "append",
            "watermark_column": "order_id",
            "partition_column": "order_date",
            "partition_grain": "day",
            "partition_start": "2026-01-01",
        }
    ],
}


def test_failed_load_is_reported_and_rerun_is_safe(pg_url, local_lake, tmp_path):
    source = SourceSystem.model_validate({**SOURCE, "local_url": pg_url})
    defs = build_source_defs(source)
    warehouse = DuckDBWarehouse(path=str(tmp_path / "wh.duckdb"))
    resources = {**defs.resources, "lake": local_lake, "warehouse": warehouse}
    raw = table_key(source, source.tables[0], "raw")

    # The source table is missing: the run fails and says which table, partition and why.
    failed = dg.materialize(
        list(defs.assets),
        selection=[raw],
        resources=resources,
        partition_key="2026-02-01",
        raise_on_error=False,
    )
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.message
    assert "shop.orders" in message and "2026-02-01" in message and "orders" in message.lower()
    status = warehouse.query(
        'SELECT domain, dataset, stage, outcome, "partition", error, run_id FROM platform_status.load_status'
    ).to_pylist()
    assert status[0]["outcome"] == "failed" and status[0]["partition"] == "2026-02-01"
    where = (status[0]["domain"], status[0]["dataset"], status[0]["stage"])
    assert where == ("migration", "shop.orders", "raw")
    assert "orders" in status[0]["error"] and status[0]["run_id"] == failed.run_id

    # Once the table exists the same partition loads, and the status says so.
    db = SqlSource(url=pg_url)
    with db.engine().begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE orders (order_id BIGINT PRIMARY KEY, order_date DATE, at TIMESTAMP)")
        )
        conn.execute(
            sa.text("INSERT INTO orders VALUES (1, :d, :t), (2, :d, :t)"),
            {"d": date(2026, 2, 1), "t": datetime(2026, 2, 1, 10)},
        )
    for _ in range(2):  # and a second run adds nothing
        ok = dg.materialize(
            list(defs.assets), selection=[raw], resources=resources, partition_key="2026-02-01"
        )
        assert ok.success
        assert all(c.passed for c in ok.get_asset_check_evaluations())
    assert local_lake.read_parquet("raw", "migration", "shop__orders").num_rows == 2
    status = warehouse.query("SELECT outcome, duration_s FROM platform_status.load_status").to_pylist()
    assert [s["outcome"] for s in status] == ["loaded"]
    assert status[0]["duration_s"] >= 0
