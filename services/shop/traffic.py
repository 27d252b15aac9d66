"""Live order traffic on the shop database (services/shop/schema.py), the source of seed 003.

    run_shop_traffic(url, "shop", orders_per_second=5, seconds=60)
    late_refund(url, "shop", order_id, amount=None)   a refund of an old order, written now

Open loop, as services/generators/cdc_traffic.py: order k is due at
start + k / rate whatever the server did with the ones before, so a slow
server shows up as lag (ShopStats.max_lag, a warning once per episode), not
as a silently lower rate.

Each order is one transaction: the order (status 'paid'), 1-6 order_items of
distinct products (popular products more often), and one captured payment of
exactly the items' sum. The store is drawn by its weight among the stores open
at the clock's hour (the UTC hour taken as the stores' local hour, see
schema.py); an order slot with no store open writes nothing and counts as
`closed_skips`.

Follow-ups, each its own later transaction:
- cancellation (`cancel_share` of orders, after `cancel_delay`): the order's
  status becomes 'cancelled' and its payment's 'voided' (cancelled before
  settlement: no money moved, so no refund row; the payment row keeps its
  amount and is excluded from sales by its status);
- refund (`refund_share` of the other orders, after `refund_delay`, hours by
  default): a row of `refunds` against the payment, partial (`partial_share`
  of refunds: 10-90 % of the payment) or full, and the order's status becomes
  'partially_refunded' or 'refunded'. Refunds of one payment never add up to
  more than the payment (checked under a row lock, late_refund too).
A follow-up not yet due when the run ends is not written (ShopStats.pending).

Delays (cancel_delay, refund_delay): seconds as a number, a (low, high)
uniform range, or a function of a random.Random giving seconds. The default
refund delay is log-normal, median 3 h, between 10 minutes and 3 days. Follow-ups wait
in real time (a monotonic clock) while their timestamps come from `clock`, which
tests replace to choose the hour.

Counts are added at commit: a transaction lost with its connection counts
nothing (the connection is re-opened and the run goes on; a lost follow-up is
tried again), so the stats equal the rows the database holds.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from services.generators.cdc_traffic import (
    _LOST,
    BEHIND_WARN_SECONDS,
    TrafficError,
    _check_name,
    _connect,
    _server_url,
    _Stop,
)
from services.generators.reconnect import reconnect
from services.shop.schema import SHOP_DATABASE, is_open

log = logging.getLogger(__name__)

Delay = float | tuple[float, float] | Callable[[random.Random], float]
Clock = Callable[[], datetime]

ITEMS_PER_ORDER = (1, 2, 3, 4, 5, 6)
ITEMS_WEIGHTS = (34, 26, 17, 11, 7, 5)
QUANTITIES = (1, 2, 3, 4)
QUANTITY_WEIGHTS = (80, 14, 4, 2)
METHODS = ("card", "mobile", "cash", "gift_card")
METHOD_WEIGHTS = (62, 25, 10, 3)
REFUND_REASONS = ("changed_mind", "damaged", "wrong_item", "quality", "late_delivery")
PROGRESS_SECONDS = 5.0
CENT = Decimal("0.01")


class ShopError(TrafficError):
    """The shop traffic cannot do this: no stores, an unknown order, a refund beyond its payment."""


def default_refund_delay(rng: random.Random) -> float:
    """Seconds from a sale to its refund: log-normal, median 3 h, clipped to 10 min .. 3 days."""
    return min(max(3 * 3600 * math.exp(rng.gauss(0.0, 0.8)), 600.0), 3 * 86_400.0)


def _draw(delay: Delay, rng: random.Random) -> float:
    if callable(delay):
        return max(0.0, float(delay(rng)))
    if isinstance(delay, tuple):
        low, high = delay
        return max(0.0, rng.uniform(low, high))
    return max(0.0, float(delay))


def _utc_naive(when: datetime) -> datetime:
    """A datetime for a DATETIME(6) column: UTC, no zone (a naive value is taken as UTC already)."""
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo is not None else when


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ShopStats:
    """What a run committed, and how well it kept the pace."""

    database: str
    target_rate: float  # orders/s asked
    orders: int = 0
    items: int = 0
    payments: int = 0
    cancellations: int = 0
    refunds: int = 0
    partial_refunds: int = 0  # of refunds
    sales: Decimal = Decimal(0)  # payments' sum as placed (cancellations included)
    voided: Decimal = Decimal(0)  # payments' sum of the cancelled orders
    refunded: Decimal = Decimal(0)
    closed_skips: int = 0  # order slots with no store open at the hour
    pending: int = 0  # follow-ups (cancellations, refunds) not yet due when the run ended
    transactions: int = 0
    seconds: float = 0.0
    max_lag: float = 0.0  # the most the run was behind its schedule, seconds
    reconnects: int = 0
    by_store: dict[int, int] = field(default_factory=dict)  # store id -> orders

    @property
    def achieved_rate(self) -> float:
        return self.orders / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.database}: {self.orders:,} orders ({self.items:,} items, {self.payments:,} payments),"
            f" {self.cancellations:,} cancelled, {self.refunds:,} refunds ({self.partial_refunds:,}"
            f" partial), {self.closed_skips:,} slots with no store open, {self.pending:,} follow-ups"
            f" pending; {self.seconds:.1f} s: {self.achieved_rate:,.1f} orders/s (target"
            f" {self.target_rate:g}/s, max lag {self.max_lag:.1f} s)"
        )


@dataclass(frozen=True)
class _Store:
    id: int
    weight: float
    open_hour: int
    close_hour: int


@dataclass(frozen=True)
class _FollowUp:
    kind: str  # 'cancel' or 'refund'
    order_id: int
    total: Decimal


@dataclass(frozen=True)
class Refund:
    id: int
    order_id: int
    payment_id: int
    amount: Decimal
    full: bool  # the payment is refunded completely now


def run_shop_traffic(
    url: str,
    database: str = SHOP_DATABASE,
    orders_per_second: float = 5.0,
    seconds: float | None = None,
    stop: threading.Event | None = None,
    progress: bool = False,
    seed: int | None = None,
    *,
    cancel_share: float = 0.04,
    refund_share: float = 0.06,
    partial_share: float = 0.5,
    cancel_delay: Delay = (10.0, 600.0),
    refund_delay: Delay = default_refund_delay,
    clock: Clock | None = None,
) -> ShopStats:
    """Place orders at `orders_per_second` until `seconds` have passed or `stop` is set (forever
    when neither is given), with cancellations and refunds following them; the run's stats.

    The database must hold stores and products (ensure_shop_schema). `clock` gives the time
    written to rows and whose hour decides which stores are open (default: now, UTC).
    """
    if not orders_per_second > 0 or math.isinf(orders_per_second):
        raise ShopError(f"orders_per_second must be a positive number, got {orders_per_second}")
    for name, share in (
        ("cancel_share", cancel_share),
        ("refund_share", refund_share),
        ("partial_share", partial_share),
    ):
        if not 0 <= share <= 1:
            raise ShopError(f"{name} must be between 0 and 1, got {share}")
    if cancel_share + refund_share > 1:
        raise ShopError("cancel_share and refund_share must add up to at most 1")
    import pymysql

    rng = random.Random(seed)
    clock = clock or _now
    stopped = _Stop(stop)
    stats = ShopStats(database, orders_per_second)
    conn = _connect(_server_url(url), _check_name("database", database))
    try:
        stores, products, popularity = _load_catalog(conn, database, rng)
    except BaseException:
        conn.close()
        raise
    open_by_hour: dict[int, tuple[list[_Store], list[float]]] = {}
    followups: list[tuple[float, int, _FollowUp]] = []  # (due, sequence, what): a heap
    sequence = itertools.count()

    interval = 1.0 / orders_per_second
    start = time.monotonic()
    done = 0  # order slots used: the schedule's clock
    behind_since: float | None = None
    next_progress = start + PROGRESS_SECONDS

    def finished() -> bool:
        return stopped() or (seconds is not None and time.monotonic() - start >= seconds)

    def open_stores(hour: int) -> tuple[list[_Store], list[float]]:
        if hour not in open_by_hour:
            chosen = [s for s in stores if is_open(s.open_hour, s.close_hour, hour)]
            open_by_hour[hour] = (chosen, [s.weight for s in chosen])
        return open_by_hour[hour]

    try:
        while not finished():
            now = time.monotonic()
            if progress and now >= next_progress:
                stats.seconds = now - start
                stats.pending = len(followups)
                print(_progress_line(stats), file=sys.stderr, flush=True)
                next_progress = now + PROGRESS_SECONDS
            if followups and followups[0][0] <= now:
                due_at, seq, what = heapq.heappop(followups)
                try:
                    _follow_up(conn, what, stats, rng, partial_share, _utc_naive(clock()))
                except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                    if isinstance(exc, pymysql.err.OperationalError) and exc.args[0] not in _LOST:
                        raise
                    heapq.heappush(followups, (due_at, seq, what))  # tried again once reconnected
                    conn = _reconnect(url, database, exc, stopped, stats)
                    if conn is None:
                        break
                continue
            due = start + done * interval
            if due > now:
                wake = min(due, followups[0][0] if followups else due, next_progress if progress else due)
                if stopped.wait(max(wake - now, 0.0)):
                    break
                behind_since = None
                continue
            lag = now - due
            stats.max_lag = max(stats.max_lag, lag)
            if lag > BEHIND_WARN_SECONDS and behind_since is None:
                behind_since = now
                log.warning(
                    "%s: shop traffic is %.1f s behind its schedule (target %g orders/s, achieved %.1f/s)",
                    database,
                    lag,
                    orders_per_second,
                    done / max(now - start, 1e-9),
                )
            done += 1
            at = _utc_naive(clock())
            candidates, weights = open_stores(at.hour)
            if not candidates:
                stats.closed_skips += 1
                continue
            store = rng.choices(candidates, weights)[0]
            try:
                order_id, total = _place_order(conn, store, products, popularity, rng, stats, at)
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                if isinstance(exc, pymysql.err.OperationalError) and exc.args[0] not in _LOST:
                    raise
                conn = _reconnect(url, database, exc, stopped, stats)
                if conn is None:
                    break
                continue
            fate = rng.random()
            if fate < cancel_share:
                what = _FollowUp("cancel", order_id, total)
                heapq.heappush(followups, (now + _draw(cancel_delay, rng), next(sequence), what))
            elif fate < cancel_share + refund_share:
                what = _FollowUp("refund", order_id, total)
                heapq.heappush(followups, (now + _draw(refund_delay, rng), next(sequence), what))
    finally:
        stats.seconds = time.monotonic() - start
        stats.pending = len(followups)
        if conn is not None:
            try:
                conn.rollback()
                conn.close()
            except Exception:  # a connection already gone has nothing to close
                pass
    if progress:
        print(_progress_line(stats), file=sys.stderr, flush=True)
    return stats


def _progress_line(stats: ShopStats) -> str:
    return (
        f"{stats.database}: {stats.orders:,} orders ({stats.achieved_rate:.1f}/s),"
        f" {stats.items:,} items, {stats.cancellations:,} cancelled, {stats.refunds:,} refunds,"
        f" {stats.pending:,} follow-ups waiting, max lag {stats.max_lag:.1f} s"
    )


def _load_catalog(
    conn: Any, database: str, rng: random.Random
) -> tuple[list[_Store], list[tuple[int, Decimal]], list[float]]:
    """The stores, the products (id, price) and each product's popularity weight."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, weight, open_hour, close_hour FROM stores ORDER BY id")
        stores = [_Store(int(i), float(w), int(o), int(c)) for i, w, o, c in cur.fetchall()]
        cur.execute("SELECT id, price FROM products ORDER BY id")
        products = [(int(i), Decimal(p)) for i, p in cur.fetchall()]
    conn.commit()
    if not stores or not products:
        raise ShopError(f"{database} has no stores or no products: run ensure_shop_schema first")
    ranks = list(range(1, len(products) + 1))
    rng.shuffle(ranks)  # a long tail: a few products sell much more often than the rest
    return stores, products, [1.0 / r**0.8 for r in ranks]


def _place_order(
    conn: Any,
    store: _Store,
    products: list[tuple[int, Decimal]],
    popularity: list[float],
    rng: random.Random,
    stats: ShopStats,
    at: datetime,
) -> tuple[int, Decimal]:
    """One order with its items and payment, committed; (order id, total)."""
    wanted = min(rng.choices(ITEMS_PER_ORDER, ITEMS_WEIGHTS)[0], len(products))
    chosen: dict[int, Decimal] = {}
    while len(chosen) < wanted:
        product_id, price = rng.choices(products, popularity)[0]
        chosen[product_id] = price
    lines = []
    for line_no, (product_id, price) in enumerate(chosen.items(), start=1):
        quantity = rng.choices(QUANTITIES, QUANTITY_WEIGHTS)[0]
        lines.append((line_no, product_id, quantity, price, (price * quantity).quantize(CENT)))
    total = sum((line[4] for line in lines), Decimal(0))
    method = rng.choices(METHODS, METHOD_WEIGHTS)[0]
    try:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO orders (store_id, status, item_count, total, ordered_at, updated_at)"
                " VALUES (%s, 'paid', %s, %s, %s, %s)",
                (store.id, len(lines), total, at, at),
            )
            order_id = int(cur.lastrowid)
            marks = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(lines))
            cur.execute(
                "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price, amount)"
                f" VALUES {marks}",
                [v for line in lines for v in (order_id, *line)],
            )
            cur.execute(
                "INSERT INTO payments (order_id, store_id, amount, method, status, paid_at, updated_at)"
                " VALUES (%s, %s, %s, %s, 'captured', %s, %s)",
                (order_id, store.id, total, method, at, at),
            )
        conn.commit()
    except BaseException:
        _rollback(conn)
        raise
    stats.transactions += 1
    stats.orders += 1
    stats.items += len(lines)
    stats.payments += 1
    stats.sales += total
    stats.by_store[store.id] = stats.by_store.get(store.id, 0) + 1
    return order_id, total


def _rollback(conn: Any) -> None:
    with contextlib.suppress(Exception):  # a connection gone rolled back on the server already
        conn.rollback()


def _follow_up(
    conn: Any, what: _FollowUp, stats: ShopStats, rng: random.Random, partial_share: float, at: datetime
) -> None:
    """A due cancellation or refund, in its own transaction."""
    try:
        with conn.cursor() as cur:
            if what.kind == "cancel":
                changed = cur.execute(
                    "UPDATE orders SET status = 'cancelled', updated_at = %s"
                    " WHERE id = %s AND status = 'paid'",
                    (at, what.order_id),
                )
                if changed:
                    cur.execute(
                        "UPDATE payments SET status = 'voided', updated_at = %s"
                        " WHERE order_id = %s AND status = 'captured'",
                        (at, what.order_id),
                    )
                conn.commit()
                if changed:
                    stats.cancellations += 1
                    stats.voided += what.total
                    stats.transactions += 1
                return
            amount = None
            if rng.random() < partial_share:
                share = Decimal(str(round(rng.uniform(0.1, 0.9), 4)))
                amount = min(max((what.total * share).quantize(CENT, ROUND_HALF_UP), CENT), what.total - CENT)
            refund = _refund(cur, what.order_id, amount if amount and amount > 0 else None, at, rng)
        conn.commit()
    except ShopError as exc:  # e.g. the order is gone or fully refunded already (by late_refund)
        _rollback(conn)
        log.info("%s: refund of order %d skipped: %s", stats.database, what.order_id, exc)
        return
    except BaseException:
        _rollback(conn)
        raise
    stats.transactions += 1
    stats.refunds += 1
    stats.partial_refunds += not refund.full
    stats.refunded += refund.amount


def _refund(
    cur: Any,
    order_id: int,
    amount: Decimal | None,
    at: datetime,
    rng: random.Random | None = None,
    reason: str | None = None,
) -> Refund:
    """Refund `amount` of an order's payment (None: what is left of it), under a lock on the
    payment, within the caller's transaction; ShopError when the order has no captured payment or
    the amount is not within what is left."""
    cur.execute(
        "SELECT id, amount, status FROM payments WHERE order_id = %s FOR UPDATE",
        (order_id,),
    )
    row = cur.fetchone()
    if row is None:
        raise ShopError(f"order {order_id} has no payment (no such order?)")
    payment_id, paid, status = int(row[0]), Decimal(row[1]), row[2]
    if status != "captured":
        raise ShopError(f"order {order_id}'s payment is {status} (a cancelled order): nothing to refund")
    cur.execute("SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE payment_id = %s", (payment_id,))
    left = paid - Decimal(cur.fetchone()[0])
    if left <= 0:
        raise ShopError(f"order {order_id} is refunded in full already")
    value = left if amount is None else Decimal(amount).quantize(CENT, ROUND_HALF_UP)
    if not 0 < value <= left:
        raise ShopError(f"order {order_id}: a refund of {value} is not within the {left} left of {paid}")
    if reason is None:
        reason = (rng or random.Random()).choice(REFUND_REASONS)
    cur.execute("SELECT store_id FROM orders WHERE id = %s", (order_id,))
    store_id = int(cur.fetchone()[0])
    cur.execute(
        "INSERT INTO refunds (order_id, payment_id, store_id, amount, reason, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (order_id, payment_id, store_id, value, reason, at),
    )
    refund_id = int(cur.lastrowid)
    full = value == left
    cur.execute(
        "UPDATE orders SET status = %s, updated_at = %s WHERE id = %s",
        ("refunded" if full else "partially_refunded", at, order_id),
    )
    return Refund(refund_id, order_id, payment_id, value, full)


def late_refund(
    url: str,
    database: str,
    order_id: int,
    amount: Decimal | float | str | None = None,
    at: datetime | None = None,
    reason: str = "late_claim",
) -> Refund:
    """Write a refund of an (old) order now, in one transaction: `amount` (default: all that is
    left of its payment), timestamped `at` (default: now, UTC). ShopError when the order has no
    captured payment or the amount exceeds what is left; nothing is written then."""
    value = None if amount is None else Decimal(str(amount))
    when = _utc_naive(at or _now())
    conn = _connect(_server_url(url), _check_name("database", database))
    try:
        with conn.cursor() as cur:
            refund = _refund(cur, int(order_id), value, when, reason=reason)
        conn.commit()
        return refund
    except BaseException:
        _rollback(conn)
        raise
    finally:
        conn.close()


def _reconnect(url: str, database: str, error: Exception, stopped: _Stop, stats: ShopStats) -> Any:
    """A new connection after a lost one (the open transaction is lost); None when stopped first."""
    log.warning("%s: connection lost (%s); the open transaction is lost", database, error)
    return reconnect(
        lambda: _connect(_server_url(url), database),
        stopped.wait,
        stats,
        name=database,
        log=log,
        retry_on=TrafficError,
    )
