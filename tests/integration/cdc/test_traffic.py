"""The CDC change-traffic generator against the machine's MariaDB: schemas, counts, pacing."""

from __future__ import annotations

import json
import math
import threading
import time

import pymysql
import pytest
from sqlalchemy.engine import make_url

from services.generators.cdc_traffic import (
    TrafficError,
    ensure_bench_schema,
    ensure_demo_schema,
    run_traffic,
)


def _split(mariadb_url: str) -> tuple[str, str]:
    url = make_url(mariadb_url)
    return url.set(database=None).render_as_string(hide_password=False), str(url.database)


def _rows(server: str, database: str, sql: str) -> list[tuple]:
    url = make_url(server)
    conn = pymysql.connect(host=url.host, port=url.port, user=url.username, database=database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def _count(server: str, database: str, table: str) -> int:
    return int(_rows(server, database, f"SELECT count(*) FROM `{table}`")[0][0])


def test_demo_schema_and_counts_agree(mariadb_url: str) -> None:
    server, db = _split(mariadb_url)
    main = ensure_demo_schema(server, db, "main")
    second = ensure_demo_schema(server, db, "second")
    assert ensure_demo_schema(server, db, "main") == main  # idempotent
    assert main == ["customers", "orders", "order_lines"] and second == ["stock"]
    types = dict(
        _rows(
            server,
            db,
            "SELECT concat(TABLE_NAME, '.', COLUMN_NAME), COLUMN_TYPE FROM information_schema.COLUMNS"
            f" WHERE TABLE_SCHEMA = '{db}'",
        )
    )
    assert types["customers.is_active"] == "bit(1)"
    assert types["customers.vip"] == "tinyint(1)"
    assert types["orders.status"] == "enum('new','paid','shipped','cancelled')"
    assert types["stock.flags"] == "bit(1)"

    n = 600
    tables = [*main, *second]
    stats = run_traffic(server, db, tables, rate=math.inf, changes=n, mix=(0.5, 0.3, 0.2), txn_size=4, seed=7)
    assert stats.changes == n
    for table in tables:
        assert _count(server, db, table) == stats.net_rows(table), table
    # the asked mix, within sampling noise (updates/deletes on an empty table insert instead)
    assert 0.42 * n < stats.total("insert") < 0.62 * n
    assert 0.22 * n < stats.total("update") < 0.38 * n
    assert 0.13 * n < stats.total("delete") < 0.27 * n
    assert stats.transactions == math.ceil(stats.statements / 4)

    # JSON, NULLs and references to existing parents arrive
    profiles = [r[0] for r in _rows(server, db, "SELECT profile FROM customers")]
    assert any(p is None for p in profiles) and any(p is not None for p in profiles)
    assert all("tier" in json.loads(p) for p in profiles if p is not None)
    assert (
        _rows(server, db, "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id")[0][0] > 0
    )

    # a second run continues on the existing keys
    more = run_traffic(server, db, ["order_lines"], rate=math.inf, changes=200, seed=8)
    assert _count(server, db, "order_lines") == stats.net_rows("order_lines") + more.net_rows("order_lines")


def test_bench_schema_multirow_statements(mariadb_url: str) -> None:
    server, db = _split(mariadb_url)
    tables = ensure_bench_schema(server, db, tables=5)
    assert tables == ["t01", "t02", "t03", "t04", "t05"]
    stats = run_traffic(server, db, tables, rate=math.inf, changes=5_000, statement_rows=100, txn_size=5)
    assert stats.changes == 5_000
    assert sum(_count(server, db, t) for t in tables) == sum(stats.net_rows(t) for t in tables)
    assert stats.statements < 100


def test_pacing_reports_achieved_rate(mariadb_url: str) -> None:
    server, db = _split(mariadb_url)
    tables = ensure_demo_schema(server, db, "second")
    commits: list[int] = []
    started = time.monotonic()
    stats = run_traffic(
        server, db, tables, rate=20, seconds=1.5, on_commit=lambda s: commits.append(s.changes)
    )
    took = time.monotonic() - started
    assert 1.4 < took < 3
    assert 20 <= stats.changes <= 32  # ~30 due in 1.5 s
    assert 13 < stats.achieved_rate < 22
    assert commits == sorted(commits) and commits[-1] == stats.changes


def test_stop_event_and_clear_errors(mariadb_url: str) -> None:
    server, db = _split(mariadb_url)
    tables = ensure_demo_schema(server, db, "second")
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    stats = run_traffic(server, db, tables, rate=5, stop=stop)  # forever, but for the stop
    assert stats.seconds < 2 and stats.changes >= 1

    with pytest.raises(TrafficError, match="does not exist"):
        run_traffic(server, db, ["missing"], rate=1, changes=1)
    with pytest.raises(TrafficError, match="not reachable"):
        run_traffic("mysql+pymysql://root@127.0.0.1:1", db, tables, rate=1, changes=1)
    with pytest.raises(TrafficError, match="kind"):
        ensure_demo_schema(server, db, "third")
