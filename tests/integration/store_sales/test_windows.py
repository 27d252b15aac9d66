"""store_sales_30min end to end on real services: shop traffic in MariaDB -> the CDC capture (binlog)
-> DMS files in a local lake -> the CDC load asset -> two window partitions materialized -> the
warehouse table and Redis; a late refund re-aggregates its window; the checks and the automation
condition (evaluated as the code server's automation sensor evaluates it).

The traffic's clock runs 300 times faster than real time from a window three hours back, so
one minute of simulated sales takes 0.2 s and two windows fill in about 12 s. The figures are
asserted against a computation of the test's own from the MariaDB rows (the asset never reads
MariaDB).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pymysql
import pytest
import yaml
from fastapi.testclient import TestClient

from assets.cdc.definitions import build
from assets.store_sales import serving
from assets.store_sales.assets import KEY, partition_of, store_sales_30min
from assets.store_sales.automation import (
    MAX_PER_EVALUATION,
    RETRY_AFTER,
    published_late_changes,
    recently_blocked,
)
from assets.store_sales.checks import REDIS, redis_result
from assets.store_sales.windows import TABLE, read_window, sql_ts
from resources.cache import RedisCache
from resources.lake import LocalLake
from resources.settings import PROJECT_ROOT
from resources.warehouse import DuckDBWarehouse
from services.shop.schema import ensure_shop_schema
from services.shop.traffic import late_refund, run_shop_traffic
from services.store_api.app import create_app
from tests.support.waiting import wait_for

URL = "mysql+pymysql://root@127.0.0.1:3306"
AUTH = {"Authorization": "Bearer t"}
SPEED = 300.0
_server_ids = itertools.count(int(uuid.uuid4().int % 1_000_000) * 100 + 5000)


def _mysql(database: str) -> Any:
    return pymysql.connect(
        host="127.0.0.1", port=3306, user="root", password="", database=database, autocommit=True
    )


@pytest.fixture
def shop_db() -> Iterator[str]:
    name = f"shop_{uuid.uuid4().hex[:10]}"
    try:
        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    except pymysql.err.OperationalError as exc:
        pytest.fail(f"MariaDB at 127.0.0.1:3306 is not reachable ({exc}); run scripts/services.sh")
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def _mapping(tmp_path: Path, database: str) -> Path:
    """The shop mapping (platform/catalogs/cdc/shop.yaml) on the test's database, cluster main."""
    shop = yaml.safe_load((PROJECT_ROOT / "platform/catalogs/cdc/shop.yaml").read_text())
    doc = {
        "defaults": {"flush_seconds": 0.5},
        "clusters": [{"name": "main", "local_url": URL, "server_id": next(_server_ids)}],
        "tables": [{**t, "database": database} for t in shop["tables"]],
    }
    directory = tmp_path / "mapping"
    directory.mkdir()
    (directory / "shop.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


def _caught_up(lake: LocalLake, database: str) -> None:
    """Wait until the capture's checkpoint is at or past the server's current binlog position."""
    with _mysql(database) as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        log_file, log_pos = cur.fetchone()[:2]
    key = "landing/cdc/main/_capture_checkpoint.json"

    def passed() -> bool:
        if not lake.exists(key):
            return False
        cp = json.loads(lake.get_bytes(key))
        return cp["log_file"] > log_file or (cp["log_file"] == log_file and cp["log_pos"] >= log_pos)

    wait_for(passed, 60, "the capture to reach the last change")
    time.sleep(1.0)


def _expected(database: str, start: datetime) -> dict[int, dict[str, Any]]:
    """The window's figures from MariaDB, computed here in Python; late_changes as every change
    after the sale (all of them are committed after the simulated window's end): one refund row
    and one order update per refund, an order and a payment update per cancellation."""
    end = start + serving.WINDOW
    lo, hi = start.replace(tzinfo=None), end.replace(tzinfo=None)
    with _mysql(database) as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(
            "SELECT id, store_id, status FROM orders WHERE ordered_at >= %s AND ordered_at < %s", (lo, hi)
        )
        orders = {r["id"]: r for r in cur.fetchall()}
        cur.execute("SELECT order_id, amount, status FROM payments")
        payments = {r["order_id"]: r for r in cur.fetchall() if r["order_id"] in orders}
        cur.execute("SELECT order_id, quantity FROM order_items")
        items = [r for r in cur.fetchall() if r["order_id"] in orders]
        cur.execute("SELECT order_id, amount FROM refunds")
        refunds = [r for r in cur.fetchall() if r["order_id"] in orders]
    out: dict[int, dict[str, Any]] = {}
    for o in orders.values():
        f = out.setdefault(
            o["store_id"],
            {
                "gross": Decimal(0),
                "refunds": Decimal(0),
                "refund_count": 0,
                "orders": 0,
                "items": 0,
                "late": 0,
            },
        )
        if o["status"] == "cancelled":
            f["late"] += 2
            continue
        assert payments[o["id"]]["status"] == "captured"
        f["gross"] += payments[o["id"]]["amount"]
        f["orders"] += 1
    for i in items:
        if orders[i["order_id"]]["status"] != "cancelled":
            out[orders[i["order_id"]]["store_id"]]["items"] += i["quantity"]
    for r in refunds:
        f = out[orders[r["order_id"]]["store_id"]]
        f["refunds"] += r["amount"]
        f["refund_count"] += 1
        f["late"] += 2
    return out


def _assert_window(warehouse: DuckDBWarehouse, database: str, start: datetime) -> list[dict[str, Any]]:
    rows = read_window(warehouse, start)
    expected = _expected(database, start)
    assert expected, f"the traffic placed no orders in the window {start}"
    assert {r["store_id"] for r in rows} == set(expected)
    for r in rows:
        e = expected[r["store_id"]]
        assert r["gross_sales"] == e["gross"], r
        assert r["refund_amount"] == e["refunds"], r
        assert r["net_sales"] == e["gross"] - e["refunds"], r
        assert (r["refund_count"], r["order_count"], r["product_count"]) == (
            e["refund_count"],
            e["orders"],
            e["items"],
        ), r
        basket = (e["gross"] / e["orders"]).quantize(Decimal("0.01")) if e["orders"] else Decimal("0.00")
        assert abs(r["avg_basket"] - basket) <= Decimal("0.01"), r
        assert r["late_changes"] == e["late"], r
        assert r["window_end"] - r["window_start"] == timedelta(minutes=30)
    return rows


def _redis_rows(cache: RedisCache, start: datetime) -> dict[int, str]:
    raw = cache.client().hgetall(serving.window_key(cache, start))
    return {int(k): v.decode() if isinstance(v, bytes) else v for k, v in raw.items()}


@contextmanager
def source_queries() -> Iterator[list[tuple[int, str, str]]]:
    """Every command MariaDB receives meanwhile on a connection opened meanwhile (its general log).

    Connections open before (the capture's binlog and control connections, this test's own) are left
    out: what remains can only come from the code under test. The server's logging settings are
    restored afterwards.
    """
    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    seen: list[tuple[int, str, str]] = []
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT @@global.general_log, @@global.log_output, NOW(6)")
            general_log, log_output, since = cur.fetchone()
            cur.execute("SELECT id FROM information_schema.PROCESSLIST")
            before = {row[0] for row in cur.fetchall()}
            cur.execute("SET GLOBAL log_output = 'TABLE'")
            cur.execute("SET GLOBAL general_log = 1")
        try:
            yield seen
        finally:
            with admin.cursor() as cur:
                cur.execute("SET GLOBAL general_log = 0")
                cur.execute(
                    "SELECT thread_id, command_type, argument FROM mysql.general_log WHERE event_time >= %s",
                    (since,),
                )
                seen.extend(
                    (int(t), str(c), a.decode() if isinstance(a, bytes) else str(a))
                    for t, c, a in cur.fetchall()
                    if int(t) not in before
                )
                cur.execute("SET GLOBAL log_output = %s", (log_output,))
                cur.execute(f"SET GLOBAL general_log = {int(general_log)}")
    finally:
        admin.close()


@pytest.mark.timeout(300)
def test_windows_from_live_cdc_with_a_late_refund(
    shop_db: str, tmp_path: Path, local_aws: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_shop_schema(URL, shop_db, stores=12, products=60)
    mapping_dir = _mapping(tmp_path, shop_db)
    lake_root = tmp_path / "lake"
    monkeypatch.setenv("PLATFORM_CDC_MAPPING", str(mapping_dir))
    monkeypatch.setenv("PLATFORM_LAKE_DIR", str(lake_root))
    lake = LocalLake(root=str(lake_root))
    warehouse = DuckDBWarehouse(path=str(tmp_path / "warehouse.duckdb"))
    cache = RedisCache(url="redis://127.0.0.1:6379/0", key_prefix=redis_prefix)
    env = dict(os.environ)
    env.update(PLATFORM_PROFILE="local", PLATFORM_VAR_DIR=str(tmp_path / "var"))

    now = datetime.now(UTC)
    base = now.replace(minute=0 if now.minute < 30 else 30, second=0, microsecond=0) - timedelta(hours=3)
    w1, w2 = base, base + serving.WINDOW
    t0 = time.monotonic()

    def clock() -> datetime:
        return base + timedelta(seconds=(time.monotonic() - t0) * SPEED)

    with open(tmp_path / "capture.log", "ab") as log:
        capture = subprocess.Popen(
            [sys.executable, "-m", "services.cdc.capture", "--mapping", str(mapping_dir)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: lake.exists("landing/cdc/main/_capture_checkpoint.json"), 30, "the capture to start")
        t0 = time.monotonic()
        stats = run_shop_traffic(
            URL,
            shop_db,
            orders_per_second=15,
            seconds=2 * 30 * 60 / SPEED - 0.5,  # stays inside the two windows
            seed=7,
            cancel_share=0.1,
            refund_share=0.2,
            cancel_delay=(0.05, 0.3),
            refund_delay=(0.05, 0.3),
            clock=clock,
        )
        assert stats.orders > 20 and stats.refunds > 0 and stats.cancellations > 0, stats.summary()
        _caught_up(lake, shop_db)

        cdc_defs = build(str(mapping_dir))
        cdc_assets = [a for a in cdc_defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
        cdc_resources = {"lake": lake, "warehouse": warehouse, "aws": local_aws}
        resources = {"warehouse": warehouse, "cache": cache}
        # The automation condition builds the profile's resources when it is evaluated: these paths.
        monkeypatch.setenv("PLATFORM_WAREHOUSE_PATH", warehouse.path)
        store_defs = dg.Definitions(assets=[store_sales_30min], resources=resources)

        with dg.instance_for_test() as instance:
            assert dg.materialize(cdc_assets, resources=cdc_resources, instance=instance).success

            # One automation evaluation asks for both windows (closed, and the CDC data is past their
            # ends), never for a window before the shop's first sale.
            with source_queries() as queries:
                first = dg.evaluate_automation_conditions(defs=store_defs, instance=instance)
                results = [
                    dg.materialize(
                        [store_sales_30min],
                        partition_key=partition_of(start),
                        resources=resources,
                        instance=instance,
                    )
                    for start in (w1, w2)
                ]
                with TestClient(create_app(cache=cache, warehouse=warehouse, token="t")) as api:
                    served = api.get(f"/v1/windows/{serving.window_token(w1)}/top?n=100", headers=AUTH)
                    served_w2 = api.get(f"/v1/windows/{serving.window_token(w2)}/top?n=100", headers=AUTH)
            # The evaluation, both windows, their checks and the API asked the shop's MariaDB nothing.
            assert queries == [], queries
            assert served.status_code == 200 and served_w2.status_code == 200, served.text
            asked = first.get_requested_partitions(KEY)
            assert {partition_of(w1), partition_of(w2)} <= asked, asked
            assert min(asked) == partition_of(w1)  # the shop's first sale is in w1
            assert len(asked) <= MAX_PER_EVALUATION

            for start, result in zip((w1, w2), results, strict=True):
                assert result.success
                evaluations = result.get_asset_check_evaluations()
                assert {e.check_name: e.passed for e in evaluations} == {
                    "window_matches_recomputation": True,
                    REDIS: True,
                }
                materialization = result.asset_materializations_for_node("store_sales_30min")[0]
                assert materialization.metadata["served_keys"].value == [serving.window_key(cache, start)]

            before = {start: _assert_window(warehouse, shop_db, start) for start in (w1, w2)}
            for start, rows in before.items():  # Redis holds exactly the warehouse's rows
                assert _redis_rows(cache, start) == {r["store_id"]: serving.encode_row(r) for r in rows}

            # A late refund of a sale of the first (closed, published) window.
            with _mysql(shop_db) as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT o.id, o.store_id FROM orders o JOIN payments p ON p.order_id = o.id"
                    " WHERE o.status = 'paid' AND o.ordered_at >= %s AND o.ordered_at < %s ORDER BY o.id LIMIT 1",
                    (w1.replace(tzinfo=None), (w1 + serving.WINDOW).replace(tzinfo=None)),
                )
                order_id, store_id = cur.fetchone()
            late_refund(URL, shop_db, order_id, amount="1.25")
            _caught_up(lake, shop_db)
            assert dg.materialize(cdc_assets, resources=cdc_resources, instance=instance).success

            # The next evaluation asks for the first window again (its late count grew), not for the
            # second, whose published materialization absorbed every late change it has.
            second = dg.evaluate_automation_conditions(
                defs=store_defs, instance=instance, cursor=first.cursor
            )
            again = second.get_requested_partitions(KEY)
            assert partition_of(w1) in again and partition_of(w2) not in again, again

            rerun = dg.materialize(
                [store_sales_30min], partition_key=partition_of(w1), resources=resources, instance=instance
            )
            assert rerun.success
            # The window's metadata counts the late changes it absorbed: the refund and the order's
            # status update on top of those of the first run.
            late_before = results[0].asset_materializations_for_node("store_sales_30min")[0].metadata
            late_after = rerun.asset_materializations_for_node("store_sales_30min")[0].metadata
            assert late_after["late_changes"].value == late_before["late_changes"].value + 2
            assert late_after["published"].value is True
            # Settled: a third evaluation asks for neither window.
            third = dg.evaluate_automation_conditions(
                defs=store_defs, instance=instance, cursor=second.cursor
            )
            assert not {partition_of(w1), partition_of(w2)} & third.get_requested_partitions(KEY)

            # A blocking check blocks: a duplicated payment in the CDC table (the SQL sums both, the
            # recomputation keeps one per order) makes w2's rows differ; nothing of w2 is written or
            # served, the run fails, the materialization says unpublished, and w2 stays due.
            served_before = _redis_rows(cache, w2)
            table_before = read_window(warehouse, w2)
            with warehouse.transaction() as tx:
                tx.execute(
                    "INSERT INTO cdc_main.shop_payments SELECT * FROM cdc_main.shop_payments WHERE order_id ="
                    f" (SELECT min(id) FROM cdc_main.shop_orders WHERE status = 'paid' AND ordered_at >="
                    f" {sql_ts(w2)} AND ordered_at < {sql_ts(w2 + serving.WINDOW)})"
                )
            blocked = dg.materialize(
                [store_sales_30min],
                partition_key=partition_of(w2),
                resources=resources,
                instance=instance,
                raise_on_error=False,
            )
            assert not blocked.success
            [check] = [
                e
                for e in blocked.get_asset_check_evaluations()
                if e.check_name == "window_matches_recomputation"
            ]
            assert not check.passed and check.metadata["differing_count"].value == 1
            meta = blocked.asset_materializations_for_node("store_sales_30min")[0].metadata
            assert meta["published"].value is False
            assert read_window(warehouse, w2) == table_before
            assert _redis_rows(cache, w2) == served_before
            assert partition_of(w2) not in published_late_changes(instance, KEY, [partition_of(w2)])
            assert partition_of(w1) in published_late_changes(instance, KEY, [partition_of(w1)])
            # Blocked windows are retried after RETRY_AFTER, not at every evaluation.
            blocked_now = recently_blocked(instance, KEY, [partition_of(w2)], datetime.now(UTC))
            assert blocked_now == {partition_of(w2)}
            later = datetime.now(UTC) + RETRY_AFTER + timedelta(seconds=5)
            assert recently_blocked(instance, KEY, [partition_of(w2)], later) == set()
            held = dg.evaluate_automation_conditions(defs=store_defs, instance=instance, cursor=third.cursor)
            assert partition_of(w2) not in held.get_requested_partitions(KEY)
            with warehouse.transaction() as tx:  # the duplicate goes; the window passes again
                tx.execute(
                    "DELETE FROM cdc_main.shop_payments WHERE rowid IN (SELECT max(rowid) FROM"
                    " cdc_main.shop_payments GROUP BY order_id HAVING count(*) > 1)"
                )
            assert dg.materialize(
                [store_sales_30min], partition_key=partition_of(w2), resources=resources, instance=instance
            ).success
        after = {r["store_id"]: r for r in _assert_window(warehouse, shop_db, w1)}
        old = {r["store_id"]: r for r in before[w1]}
        assert after[store_id]["net_sales"] == old[store_id]["net_sales"] - Decimal("1.25")
        assert after[store_id]["refund_count"] == old[store_id]["refund_count"] + 1
        assert after[store_id]["late_changes"] >= 1
        assert after[store_id]["late_changes"] == old[store_id]["late_changes"] + 2  # refund + order status
        assert (
            serving.decode_row(_redis_rows(cache, w1)[store_id])["net_sales"] == after[store_id]["net_sales"]
        )
        assert _redis_rows(cache, w1) == {r["store_id"]: serving.encode_row(r) for r in after.values()}
        # The API serves the re-aggregated window (from Redis; the warehouse agrees byte for byte).
        with TestClient(create_app(cache=cache, warehouse=warehouse, token="t")) as api:
            path = f"/v1/stores/{store_id}/windows?start={serving.window_token(w1)}"
            window = api.get(path + f"&end={serving.window_token(w1 + serving.WINDOW)}", headers=AUTH)
            assert window.status_code == 200 and window.headers["X-Served-From"] == "redis", window.text
            [served_row] = window.json()["windows"]
            assert Decimal(str(served_row["net_sales"])) == after[store_id]["net_sales"]
            assert served_row["late_changes"] == after[store_id]["late_changes"]
            old_served = {r["store_id"]: r for r in served.json()["stores"]}[store_id]
            assert Decimal(str(old_served["net_sales"])) == old[store_id]["net_sales"]
        count = warehouse.query(f"SELECT count(*) AS n FROM {TABLE}")["n"][0].as_py()
        assert count == len(after) + len(before[w2])  # the window was replaced, not appended

        # The Redis check passes, then fails once a served row is corrupted.
        assert redis_result(cache, warehouse).passed
        key = serving.window_key(cache, w1)
        row = json.loads(_redis_rows(cache, w1)[store_id])
        row["net_sales"] = "999999.99"
        cache.client().hset(key, str(store_id), json.dumps(row, separators=(",", ":")))
        failed = redis_result(cache, warehouse)
        assert not failed.passed
        assert failed.metadata["differing"].value == {serving.window_token(w1): [store_id]}

        # A quiet table does not hold the watermark back: orders now, no refund; once loaded, the
        # refunds table (nothing left to apply) counts as loaded up to the capture's checkpoint.
        quiet_start = time.monotonic()
        run_shop_traffic(
            URL, shop_db, orders_per_second=5, seconds=1.5, seed=3, cancel_share=0, refund_share=0
        )
        _caught_up(lake, shop_db)
        with dg.instance_for_test() as instance:
            assert dg.materialize(cdc_assets, resources=cdc_resources, instance=instance).success
        from assets.store_sales.windows import cdc_watermark

        by_tables, with_checkpoint = cdc_watermark(warehouse), cdc_watermark(warehouse, lake)
        assert by_tables is not None and with_checkpoint is not None
        assert with_checkpoint > by_tables, (by_tables, with_checkpoint)
        assert with_checkpoint >= datetime.now(UTC) - timedelta(seconds=time.monotonic() - quiet_start + 2)
    finally:
        capture.terminate()
        capture.wait(30)
        cache.client().close()


def _late_total(warehouse: DuckDBWarehouse, start: datetime) -> int:
    from assets.store_sales.windows import late_fingerprint

    return late_fingerprint(warehouse, start)


def test_the_asset_is_partitioned_every_30_minutes_in_utc() -> None:
    partitions = store_sales_30min.partitions_def
    assert isinstance(partitions, dg.TimeWindowPartitionsDefinition)
    assert partitions.get_partition_keys(datetime(2026, 11, 1, 1, 5, tzinfo=UTC)) == [
        "2026-11-01-00:00",
        "2026-11-01-00:30",
    ]
    assert store_sales_30min.group_names_by_key[KEY] == "store_sales"
    assert {k.path[-2] for k in store_sales_30min.asset_deps[KEY]} == {
        "shop_orders",
        "shop_order_items",
        "shop_payments",
        "shop_refunds",
    }


def test_due_windows_are_closed_behind_the_watermark_and_rerun_on_late_changes() -> None:
    from assets.store_sales.assets import PARTITIONS
    from assets.store_sales.automation import due_windows

    def due(watermark, now, first, late, done):  # type: ignore[no-untyped-def]
        return due_windows(watermark, now, first, late, done, PARTITIONS.start, partition_of)

    now = datetime(2026, 11, 24, 12, 10, tzinfo=UTC)
    watermark = datetime(2026, 11, 24, 11, 31, tzinfo=UTC)
    long_ago = datetime(2026, 11, 2, tzinfo=UTC)
    assert due(None, now, long_ago, {}, {}) == []
    assert due(watermark, now, None, {}, {}) == []  # no sale yet: nothing to aggregate
    found = due(watermark, now, long_ago, {datetime(2026, 11, 24, 11, 0, tzinfo=UTC): 3}, {})
    # 11:30 has closed at 12:00, but the CDC data reaches only 11:31: not due yet.
    assert found[0] == "2026-11-24-11:00" and len(found) == MAX_PER_EVALUATION
    assert found == sorted(found, reverse=True)
    # Nothing before the window of the shop's first sale (10:07 is in the 10:00 window).
    assert due(watermark, now, datetime(2026, 11, 24, 10, 7, tzinfo=UTC), {}, {}) == [
        "2026-11-24-11:00",
        "2026-11-24-10:30",
        "2026-11-24-10:00",
    ]
    # Nothing older than the 48 hours Redis serves, even with a first sale long before.
    oldest = due_windows(watermark, now, long_ago, {}, {}, PARTITIONS.start, partition_of, limit=None)
    assert oldest[-1] == "2026-11-22-12:30" and len(oldest) == 94
    done = {"2026-11-24-11:00": 3, "2026-11-24-10:30": 0}
    late = {datetime(2026, 11, 24, 11, 0, tzinfo=UTC): 3, datetime(2026, 11, 24, 10, 30, tzinfo=UTC): 1}
    again = due(watermark, now, long_ago, late, done)
    assert again[0] == "2026-11-24-10:30"  # a late change; 11:00 is unchanged
    assert "2026-11-24-11:00" not in again


def test_a_table_without_any_change_yet_does_not_hold_the_watermark(tmp_path: Path) -> None:
    """A new shop has orders and payments but no refund yet: once every landed file is applied, the
    refunds table counts as complete up to the capture's checkpoint (None here would hold every
    window back until the first refund)."""
    from assets.cdc import dms
    from assets.cdc.checkpoint import Checkpoint, save_checkpoint
    from assets.cdc.mapping import load_mapping
    from assets.cdc.state import FILES, create_state
    from assets.store_sales.windows import SOURCES, cdc_watermark

    mapping = load_mapping(_mapping(tmp_path, "shop"))
    lake = LocalLake(root=str(tmp_path / "lake"))
    warehouse = DuckDBWarehouse(path=str(tmp_path / "warehouse.duckdb"))
    create_state(warehouse)
    last = datetime(2026, 11, 24, 12, 40, 7)
    for n, name in enumerate(s for s in SOURCES if s != "shop_refunds"):
        target = mapping.by_target(f"main.{name}").target
        seq = dms.change_seq(3, 1000 + n, 0)
        warehouse.execute(
            f"INSERT INTO {FILES} (target, object_key, max_seq, last_commit_ts)"
            f" VALUES ('{target}', 'k{n}', '{seq}', TIMESTAMP '{last - timedelta(seconds=n)}')"
        )
    assert cdc_watermark(warehouse, mapping=mapping) is None  # without the lake, refunds is unknown
    save_checkpoint(lake, Checkpoint("main", "mysql-bin.000003", 5000))
    watermark = cdc_watermark(warehouse, lake, mapping=mapping)
    # the newest commit the checkpoint covers, less a second (nothing landed is left to apply)
    assert watermark == (last - timedelta(seconds=1)).replace(tzinfo=UTC), watermark
    save_checkpoint(lake, Checkpoint("main", "mysql-bin.000003", 500))  # before the files: not covered
    assert cdc_watermark(warehouse, lake, mapping=mapping) is None
