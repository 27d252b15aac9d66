"""The shop's operational database in MariaDB (Aurora MySQL in production).

    ensure_shop_schema(url, "shop", stores=50, products=500)

creates the database and six InnoDB tables if missing, and seeds stores and
the product catalog when their tables are empty (a second call changes
nothing). URLs are SQLAlchemy style without a database
(`mysql+pymysql://root@127.0.0.1:3306`).

    stores       id, name, size_class (flagship/large/medium/small), weight (relative order
                 volume), open_hour, close_hour
    products     id, sku, name, category, price
    orders       id, store_id, status, item_count, total, ordered_at, updated_at
    order_items  id, order_id, line_no, product_id, quantity, unit_price, amount
    payments     id, order_id, store_id, amount, method, status, paid_at, updated_at
    refunds      id, order_id, payment_id, store_id, amount, reason, created_at

Keys are BIGINT, money DECIMAL(12,2), times DATETIME(6) holding UTC (the
sessions run with time_zone '+00:00'; a DATETIME has no zone of its own).

Orders: status 'paid' when placed; 'cancelled' when the customer cancels
before settlement, and then its payment's status becomes 'voided' (no money
moved, no refund row); 'partially_refunded' / 'refunded' after refunds, which
are rows of `refunds` against the order's captured payment, never more in
sum than the payment. A store's net sales are its captured payments minus
its refunds.

Opening hours: open_hour <= hour < close_hour, in the store's local time,
with close_hour 24 for midnight; a close_hour below open_hour is a store open
over midnight (18 -> 3). There is no time zone column: the generator takes a
store's local hour to be the UTC hour (one zone for all stores).
"""

from __future__ import annotations

import logging
import math
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from services.generators.cdc_traffic import TrafficError, _check_name, _connect, _create_database, _server_url

log = logging.getLogger(__name__)

SHOP_DATABASE = "shop"
SHOP_TABLES = ["stores", "products", "orders", "order_items", "payments", "refunds"]
ORDER_STATUSES = ("paid", "cancelled", "partially_refunded", "refunded")
PAYMENT_STATUSES = ("captured", "voided")

_DDL = [
    """CREATE TABLE IF NOT EXISTS stores (
        id BIGINT NOT NULL PRIMARY KEY,
        name VARCHAR(100) NOT NULL,
        size_class ENUM('flagship','large','medium','small') NOT NULL,
        weight DECIMAL(8,2) NOT NULL,
        open_hour TINYINT NOT NULL,
        close_hour TINYINT NOT NULL,
        created_at DATETIME(6) NOT NULL,
        CONSTRAINT stores_hours CHECK (open_hour BETWEEN 0 AND 23 AND close_hour BETWEEN 1 AND 24
                                       AND open_hour <> close_hour),
        CONSTRAINT stores_weight CHECK (weight > 0)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS products (
        id BIGINT NOT NULL PRIMARY KEY,
        sku VARCHAR(32) NOT NULL UNIQUE,
        name VARCHAR(200) NOT NULL,
        category VARCHAR(50) NOT NULL,
        price DECIMAL(12,2) NOT NULL,
        created_at DATETIME(6) NOT NULL,
        CONSTRAINT products_price CHECK (price > 0)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS orders (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        store_id BIGINT NOT NULL,
        status ENUM('paid','cancelled','partially_refunded','refunded') NOT NULL,
        item_count INT NOT NULL,
        total DECIMAL(12,2) NOT NULL,
        ordered_at DATETIME(6) NOT NULL,
        updated_at DATETIME(6) NOT NULL,
        KEY orders_store_time (store_id, ordered_at),
        CONSTRAINT orders_store FOREIGN KEY (store_id) REFERENCES stores (id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS order_items (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        order_id BIGINT NOT NULL,
        line_no INT NOT NULL,
        product_id BIGINT NOT NULL,
        quantity INT NOT NULL,
        unit_price DECIMAL(12,2) NOT NULL,
        amount DECIMAL(12,2) NOT NULL,
        UNIQUE KEY order_items_line (order_id, line_no),
        CONSTRAINT order_items_order FOREIGN KEY (order_id) REFERENCES orders (id),
        CONSTRAINT order_items_product FOREIGN KEY (product_id) REFERENCES products (id),
        CONSTRAINT order_items_quantity CHECK (quantity > 0)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS payments (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        order_id BIGINT NOT NULL,
        store_id BIGINT NOT NULL,
        amount DECIMAL(12,2) NOT NULL,
        method ENUM('card','mobile','cash','gift_card') NOT NULL,
        status ENUM('captured','voided') NOT NULL,
        paid_at DATETIME(6) NOT NULL,
        updated_at DATETIME(6) NOT NULL,
        UNIQUE KEY payments_order (order_id),
        KEY payments_store_time (store_id, paid_at),
        CONSTRAINT payments_order FOREIGN KEY (order_id) REFERENCES orders (id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS refunds (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        order_id BIGINT NOT NULL,
        payment_id BIGINT NOT NULL,
        store_id BIGINT NOT NULL,
        amount DECIMAL(12,2) NOT NULL,
        reason VARCHAR(50) NOT NULL,
        created_at DATETIME(6) NOT NULL,
        KEY refunds_store_time (store_id, created_at),
        CONSTRAINT refunds_order FOREIGN KEY (order_id) REFERENCES orders (id),
        CONSTRAINT refunds_payment FOREIGN KEY (payment_id) REFERENCES payments (id),
        CONSTRAINT refunds_amount CHECK (amount > 0)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
]

# Size classes: (share of stores, weight range). A few big stores take a large share of orders.
SIZE_CLASSES: dict[str, tuple[float, tuple[float, float]]] = {
    "flagship": (0.06, (20.0, 40.0)),
    "large": (0.14, (8.0, 15.0)),
    "medium": (0.30, (3.0, 6.0)),
    "small": (0.50, (0.5, 2.0)),
}
# Opening hours by size class: (open_hour, close_hour) choices; (0, 24) is open all day,
# (18, 3) over midnight.
HOURS: dict[str, list[tuple[int, int]]] = {
    "flagship": [(0, 24), (8, 23), (9, 22)],
    "large": [(9, 22), (8, 22), (10, 23)],
    "medium": [(10, 22), (7, 23), (9, 21), (0, 24)],
    "small": [(9, 21), (11, 20), (17, 3), (0, 24), (8, 19), (10, 22)],
}
_CATEGORIES = {  # category -> (median price, spread of its log-normal)
    "grocery": (4_500, 0.6),
    "beverage": (2_500, 0.5),
    "bakery": (5_000, 0.4),
    "household": (9_000, 0.7),
    "cosmetics": (22_000, 0.8),
    "electronics": (89_000, 1.0),
    "apparel": (39_000, 0.6),
    "stationery": (3_000, 0.6),
}
_PLACES = ["Gangnam", "Hongdae", "Jamsil", "Mapo", "Yeouido", "Suwon", "Bundang", "Ilsan", "Haeundae"]
_PLACES += ["Seomyeon", "Daegu", "Gwangju", "Daejeon", "Incheon", "Jeonju", "Ulsan", "Pangyo"]
_ADJECTIVES = ["fresh", "classic", "mini", "premium", "organic", "daily", "family", "smart", "soft"]


def is_open(open_hour: int, close_hour: int, hour: int) -> bool:
    """Is a store with these hours open during `hour` (0-23)? close_hour < open_hour: over midnight."""
    if open_hour < close_hour:
        return open_hour <= hour < close_hour
    return hour >= open_hour or hour < close_hour


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def ensure_shop_schema(
    url: str,
    database: str = SHOP_DATABASE,
    *,
    stores: int = 50,
    products: int = 500,
    seed: int = 3,
) -> dict[str, int]:
    """Create the database and its tables if missing; seed `stores` stores and `products` products
    when their tables are empty. Returns the row count of each table afterwards."""
    if stores < 1 or products < 1:
        raise TrafficError(f"stores and products must be at least 1, got {stores} and {products}")
    _create_database(url, _check_name("database", database))
    conn = _connect(_server_url(url), database)
    try:
        with conn.cursor() as cur:
            for sql in _DDL:
                cur.execute(sql)
            conn.commit()
            rng = random.Random(seed)
            now = _now()
            cur.execute("SELECT count(*) FROM stores FOR UPDATE")
            if cur.fetchone()[0] == 0:
                cur.executemany(
                    "INSERT INTO stores (id, name, size_class, weight, open_hour, close_hour, created_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(*row, now) for row in store_rows(stores, rng)],
                )
                log.info("%s: seeded %d stores", database, stores)
            cur.execute("SELECT count(*) FROM products FOR UPDATE")
            if cur.fetchone()[0] == 0:
                cur.executemany(
                    "INSERT INTO products (id, sku, name, category, price, created_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    [(*row, now) for row in product_rows(products, rng)],
                )
                log.info("%s: seeded %d products", database, products)
            conn.commit()
            counts = {}
            for table in SHOP_TABLES:
                cur.execute(f"SELECT count(*) FROM `{table}`")
                counts[table] = int(cur.fetchone()[0])
        conn.commit()
        return counts
    finally:
        conn.close()


def store_rows(n: int, rng: random.Random) -> list[tuple[Any, ...]]:
    """(id, name, size_class, weight, open_hour, close_hour) of n stores: sizes by SIZE_CLASSES'
    shares (the first store a flagship open all day, so some store is open at any hour)."""
    classes = list(SIZE_CLASSES)
    counts = {c: math.floor(SIZE_CLASSES[c][0] * n) for c in classes}
    counts["flagship"] = max(counts["flagship"], 1)
    while sum(counts.values()) < n:  # the rounding's remainder: small stores
        counts["small"] += 1
    while sum(counts.values()) > n:
        biggest = max((c for c in classes if counts[c] > (c == "flagship")), key=lambda c: counts[c])
        counts[biggest] -= 1
    sizes = [c for c in classes for _ in range(counts[c])]
    rows = []
    for i, size in enumerate(sizes, start=1):
        low, high = SIZE_CLASSES[size][1]
        weight = Decimal(str(round(rng.uniform(low, high), 2)))
        open_hour, close_hour = (0, 24) if i == 1 else rng.choice(HOURS[size])
        name = f"{_PLACES[(i - 1) % len(_PLACES)]} {size} #{i}"
        rows.append((i, name, size, weight, open_hour, close_hour))
    return rows


def product_rows(n: int, rng: random.Random) -> list[tuple[Any, ...]]:
    """(id, sku, name, category, price) of n products: log-normal prices per category, in won
    rounded to 10 (at least 500)."""
    categories = list(_CATEGORIES)
    rows = []
    for i in range(1, n + 1):
        category = categories[(i - 1) % len(categories)] if i <= len(categories) else rng.choice(categories)
        median, spread = _CATEGORIES[category]
        price = max(500, int(round(median * math.exp(rng.gauss(0, spread)), -1)))
        name = f"{rng.choice(_ADJECTIVES)} {category} {i}"
        rows.append((i, f"SKU-{i:06d}", name, category, Decimal(price).quantize(Decimal("0.01"))))
    return rows
