"""The shop database and its order traffic against the machine's MariaDB (a fresh database per test)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pymysql
import pytest
from sqlalchemy.engine import make_url

from services.cli import main as dp
from services.shop.schema import ensure_shop_schema
from services.shop.traffic import ShopError, late_refund, run_shop_traffic


def _split(mariadb_url: str) -> tuple[str, str]:
    url = make_url(mariadb_url)
    return url.set(database=None).render_as_string(hide_password=False), str(url.database)


def _rows(server: str, database: str, sql: str, params: Any = None) -> list[tuple]:
    url = make_url(server)
    conn = pymysql.connect(
        host=url.host, port=url.port, user=url.username, database=database, autocommit=True
    )
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def _one(server: str, database: str, sql: str, params: Any = None) -> Any:
    return _rows(server, database, sql, params)[0][0]


def _clock_at(hour: int) -> Callable[[], datetime]:
    """A clock starting at HH:10 UTC on a fixed day and running at real speed."""
    base = datetime(2026, 3, 2, hour, 10, tzinfo=UTC)
    t0 = time.monotonic()
    return lambda: base + timedelta(seconds=time.monotonic() - t0)


def _open_at(hour: int) -> str:
    """SQL: is the store open during `hour`? (written independently of schema.is_open)"""
    return (
        f"((open_hour < close_hour AND {hour} >= open_hour AND {hour} < close_hour)"
        f" OR (open_hour > close_hour AND ({hour} >= open_hour OR {hour} < close_hour)))"
    )


def test_schema_is_idempotent_and_seeds_skewed_stores(mariadb_url: str) -> None:
    server, db = _split(mariadb_url)
    counts = ensure_shop_schema(server, db, stores=50, products=500)
    assert counts == {
        "stores": 50,
        "products": 500,
        "orders": 0,
        "order_items": 0,
        "payments": 0,
        "refunds": 0,
    }
    before = _rows(server, db, "SELECT * FROM stores ORDER BY id")
    assert ensure_shop_schema(server, db, stores=80, products=10) == counts  # seeded once
    assert _rows(server, db, "SELECT * FROM stores ORDER BY id") == before

    types = dict(
        _rows(
            server,
            db,
            "SELECT concat(TABLE_NAME, '.', COLUMN_NAME), COLUMN_TYPE FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = %s",
            (db,),
        )
    )
    for table in ("stores", "products", "orders", "order_items", "payments", "refunds"):
        assert types[f"{table}.id"] == "bigint(20)", table
    for money in (
        "products.price",
        "orders.total",
        "order_items.amount",
        "payments.amount",
        "refunds.amount",
    ):
        assert types[money] == "decimal(12,2)", money
    for stamp in ("orders.ordered_at", "payments.paid_at", "refunds.created_at"):
        assert types[stamp] == "datetime(6)", stamp
    assert "'cancelled'" in types["orders.status"]
    engines = _rows(
        server, db, "SELECT DISTINCT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (db,)
    )
    assert engines == [("InnoDB",)]

    # a few big stores, many small: the biggest fifth holds most of the weight
    weights = sorted((float(w) for (w,) in _rows(server, db, "SELECT weight FROM stores")), reverse=True)
    assert sum(weights[:10]) > 0.5 * sum(weights)
    sizes = dict(_rows(server, db, "SELECT size_class, count(*) FROM stores GROUP BY 1"))
    assert sizes["small"] > sizes["medium"] > sizes["large"] > sizes["flagship"] >= 1
    # opening hours differ: at 3 o'clock some are open, most closed
    open_at_3 = _one(server, db, f"SELECT count(*) FROM stores WHERE {_open_at(3)}")
    assert 1 <= open_at_3 < 25
    prices = [p for (p,) in _rows(server, db, "SELECT price FROM products")]
    assert min(prices) >= 500 and max(prices) > 10 * min(prices)


def test_traffic_orders_payments_cancellations_and_refunds_agree(mariadb_url: str) -> None:
    server, db = _split(mariadb_url)
    ensure_shop_schema(server, db)
    stats = run_shop_traffic(
        server,
        db,
        orders_per_second=20,
        seconds=4,
        seed=11,
        cancel_share=0.15,
        refund_share=0.35,
        partial_share=0.5,
        cancel_delay=(0.1, 0.6),
        refund_delay=(0.3, 1.2),
        clock=_clock_at(12),
    )
    # the open loop kept its pace
    assert 70 <= stats.orders <= 81
    assert stats.achieved_rate == pytest.approx(20, rel=0.1)
    assert stats.max_lag < 1.0 and stats.closed_skips == 0

    # the stats are the rows the database holds
    assert stats.orders == _one(server, db, "SELECT count(*) FROM orders")
    assert stats.items == _one(server, db, "SELECT count(*) FROM order_items")
    assert stats.payments == _one(server, db, "SELECT count(*) FROM payments") == stats.orders
    assert stats.refunds == _one(server, db, "SELECT count(*) FROM refunds")
    assert stats.cancellations == _one(server, db, "SELECT count(*) FROM orders WHERE status = 'cancelled'")
    assert stats.cancellations == _one(server, db, "SELECT count(*) FROM payments WHERE status = 'voided'")
    assert stats.sales == _one(server, db, "SELECT sum(amount) FROM payments")
    assert stats.refunded == _one(server, db, "SELECT COALESCE(sum(amount), 0) FROM refunds")
    assert stats.cancellations >= 3 and stats.refunds >= 8
    assert 0 < stats.partial_refunds < stats.refunds

    # each payment is its order's items' sum; the order's total and item count agree
    mismatched = _rows(
        server,
        db,
        """SELECT o.id FROM orders o JOIN payments p ON p.order_id = o.id
           JOIN (SELECT order_id, sum(amount) AS s, count(*) AS n, sum(amount <> unit_price * quantity) AS bad
                 FROM order_items GROUP BY order_id) i ON i.order_id = o.id
           WHERE p.amount <> i.s OR o.total <> i.s OR o.item_count <> i.n OR i.bad > 0
              OR i.n NOT BETWEEN 1 AND 6 OR p.store_id <> o.store_id OR p.paid_at <> o.ordered_at""",
    )
    assert mismatched == []
    assert (
        _one(
            server,
            db,
            "SELECT count(*) FROM orders o WHERE NOT EXISTS"
            " (SELECT 1 FROM order_items i WHERE i.order_id = o.id)",
        )
        == 0
    )

    # refunds: never above their payment, never of a voided one, after the sale, status follows
    refunds = _rows(
        server,
        db,
        """SELECT p.order_id, p.amount, p.status, sum(r.amount), o.status,
                  min(r.created_at) > o.ordered_at + INTERVAL 0.2 SECOND, max(r.store_id = o.store_id)
           FROM refunds r JOIN payments p ON p.id = r.payment_id JOIN orders o ON o.id = r.order_id
           WHERE p.order_id = r.order_id GROUP BY p.id""",
    )
    assert len(refunds) == stats.refunds  # one refund an order here, each against its own payment
    kinds = set()
    for order_id, paid, payment_status, refunded, order_status, later, same_store in refunds:
        assert 0 < refunded <= paid, order_id
        assert payment_status == "captured", order_id
        assert later and same_store, order_id
        assert order_status == ("refunded" if refunded == paid else "partially_refunded"), order_id
        kinds.add(order_status)
    assert kinds == {"refunded", "partially_refunded"}
    # cancelled orders got no refund
    assert (
        _one(
            server,
            db,
            "SELECT count(*) FROM refunds r JOIN orders o ON o.id = r.order_id WHERE o.status = 'cancelled'",
        )
        == 0
    )
    # bigger stores sell more: flagship and large stores (a fifth of them) take most orders
    big = _one(
        server,
        db,
        "SELECT count(*) FROM orders o JOIN stores s ON s.id = o.store_id"
        " WHERE s.size_class IN ('flagship', 'large')",
    )
    assert big > 0.4 * stats.orders


def test_closed_stores_get_no_orders(mariadb_url: str) -> None:
    server, db = _split(mariadb_url)
    ensure_shop_schema(server, db)
    stats = run_shop_traffic(server, db, orders_per_second=40, seconds=2, seed=5, clock=_clock_at(3))
    assert stats.orders >= 60 and stats.closed_skips == 0
    closed = _one(server, db, f"SELECT count(*) FROM stores WHERE NOT {_open_at(3)}")
    assert closed > 25  # most stores are closed at 3 o'clock, so a wrong pick would show
    assert (
        _one(
            server,
            db,
            f"SELECT count(*) FROM orders o JOIN stores s ON s.id = o.store_id WHERE NOT {_open_at(3)}",
        )
        == 0
    )
    assert _one(server, db, "SELECT count(DISTINCT HOUR(ordered_at)) FROM orders") == 1
    assert _one(server, db, "SELECT min(HOUR(ordered_at)) FROM orders") == 3

    # no store open at all: the slots pass without orders
    _rows(server, db, "UPDATE stores SET open_hour = 9, close_hour = 17")
    quiet = run_shop_traffic(server, db, orders_per_second=20, seconds=1, seed=6, clock=_clock_at(20))
    assert quiet.orders == 0 and quiet.closed_skips >= 15
    assert _one(server, db, "SELECT count(*) FROM orders") == stats.orders


def test_late_refund_writes_a_refund_of_an_old_order(mariadb_url: str) -> None:
    server, db = _split(mariadb_url)
    ensure_shop_schema(server, db)
    stats = run_shop_traffic(
        server,
        db,
        orders_per_second=20,
        seconds=1,
        seed=3,
        cancel_share=0,
        refund_share=0,
        clock=_clock_at(11),
    )
    assert stats.orders >= 15 and stats.refunds == 0
    order_id, paid, store_id = _rows(
        server, db, "SELECT order_id, amount, store_id FROM payments ORDER BY id LIMIT 1"
    )[0]

    at = datetime(2026, 3, 3, 9, 30, tzinfo=timezone(timedelta(hours=9)))  # 00:30 UTC
    part = late_refund(server, db, order_id, amount="1.50", at=at)
    assert part.amount == Decimal("1.50") and not part.full
    row = _rows(
        server,
        db,
        "SELECT order_id, payment_id, store_id, amount, created_at FROM refunds WHERE id = %s",
        (part.id,),
    )
    assert row == [(order_id, part.payment_id, store_id, Decimal("1.50"), datetime(2026, 3, 3, 0, 30))]
    assert _one(server, db, "SELECT status FROM orders WHERE id = %s", (order_id,)) == "partially_refunded"

    with pytest.raises(ShopError, match="not within"):
        late_refund(server, db, order_id, amount=paid)  # 1.50 is refunded already
    rest = late_refund(server, db, order_id)  # what is left, now
    assert rest.full and rest.amount == paid - Decimal("1.50")
    assert _one(server, db, "SELECT sum(amount) FROM refunds WHERE order_id = %s", (order_id,)) == paid
    assert _one(server, db, "SELECT status FROM orders WHERE id = %s", (order_id,)) == "refunded"
    created = _one(server, db, "SELECT created_at FROM refunds WHERE id = %s", (rest.id,))
    assert abs(created - datetime.now(UTC).replace(tzinfo=None)) < timedelta(minutes=1)  # UTC, not local
    with pytest.raises(ShopError, match="in full already"):
        late_refund(server, db, order_id, amount="0.01")
    with pytest.raises(ShopError, match="no payment"):
        late_refund(server, db, 10**9)
    # a cancelled order's payment is voided: nothing to refund
    other = _one(server, db, "SELECT max(order_id) FROM payments")
    _rows(server, db, "UPDATE payments SET status = 'voided' WHERE order_id = %s", (other,))
    with pytest.raises(ShopError, match="voided"):
        late_refund(server, db, other)
    assert _one(server, db, "SELECT count(*) FROM refunds") == 2


def test_stop_event_ends_an_endless_run(mariadb_url: str) -> None:
    server, db = _split(mariadb_url)
    ensure_shop_schema(server, db, stores=5, products=20)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    began = time.monotonic()
    stats = run_shop_traffic(
        server,
        db,
        orders_per_second=10,
        stop=stop,
        seed=1,
        cancel_share=0.5,
        refund_share=0.5,
        cancel_delay=3600,
        refund_delay=3600,
    )
    assert time.monotonic() - began < 3
    assert 5 <= stats.orders <= 12
    # every order has a follow-up an hour away: none written, all pending
    assert stats.pending == stats.orders and stats.refunds == stats.cancellations == 0
    assert _one(server, db, "SELECT count(*) FROM refunds") == 0
    assert _one(server, db, "SELECT count(*) FROM orders WHERE status <> 'paid'") == 0


def test_cli_seeds_and_runs(mariadb_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    server, db = _split(mariadb_url)
    argv = ["shop-traffic", "--url", server, "--database", db, "--rate", "10", "--seconds", "1"]
    assert dp([*argv, "--stores", "7", "--products", "30", "--seed", "4", "--refund-delay", "0:1"]) == 0
    assert _one(server, db, "SELECT count(*) FROM stores") == 7
    assert _one(server, db, "SELECT count(*) FROM products") == 30
    orders = _one(server, db, "SELECT count(*) FROM orders")
    assert 5 <= orders <= 11
    assert f"{orders} orders" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        dp([*argv, "--refund-delay", "5:1"])
