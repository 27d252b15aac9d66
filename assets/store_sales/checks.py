"""The window table's checks.

window_matches_recomputation  (in the asset's run, per partition, blocking) the rows to be
                              written equal a recomputation in Python from plain reads of the
                              CDC tables (no joins or sums in SQL); checked before the write,
                              so a failing window reaches neither the table nor Redis
redis_matches_warehouse       the newest windows Redis holds equal the warehouse's rows, byte
                              for byte in the canonical JSON the API serves
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import dagster as dg

from assets.store_sales import serving
from assets.store_sales.windows import ShopTables, finish_row, read_window, sql_ts

if TYPE_CHECKING:
    from resources.cache import RedisCache
    from resources.warehouse import Warehouse

RECOMPUTATION = "window_matches_recomputation"
REDIS = "redis_matches_warehouse"
LATEST_WINDOWS = 4  # how many of Redis's newest windows redis_matches_warehouse compares


def _rows(warehouse: Warehouse, sql: str) -> list[dict[str, Any]]:
    return warehouse.query(sql).to_pylist()


def recompute_window(
    warehouse: Warehouse, start: datetime, computed_at: datetime, tables: ShopTables | None = None
) -> list[dict[str, Any]]:
    """The window's rows computed in Python from the orders, payments, items and refunds read as
    they are (an independent reading of windows.window_sql's definitions)."""
    tables = tables or ShopTables.from_mapping()
    start = serving.window_start_of(start)
    end = start + serving.WINDOW
    orders = _rows(
        warehouse,
        f"SELECT id, store_id, status FROM {tables.orders}"
        f" WHERE ordered_at >= {sql_ts(start)} AND ordered_at < {sql_ts(end)}",
    )
    if not orders:
        return []
    store_of = {o["id"]: o["store_id"] for o in orders}
    ids = ", ".join(str(i) for i in store_of)
    payments = _rows(
        warehouse, f"SELECT order_id, amount, status FROM {tables.payments} WHERE order_id IN ({ids})"
    )
    sold = {o["id"] for o in orders if o["status"] != "cancelled"}
    sales = {
        p["order_id"]: p["amount"] for p in payments if p["status"] == "captured" and p["order_id"] in sold
    }
    figures: dict[int, dict[str, Any]] = {
        o["store_id"]: {
            "store_id": o["store_id"],
            "gross_sales": Decimal(0),
            "refund_amount": Decimal(0),
            "refund_count": 0,
            "order_count": 0,
            "product_count": 0,
            "late_changes": 0,
        }
        for o in orders
    }
    for order_id, amount in sales.items():
        f = figures[store_of[order_id]]
        f["gross_sales"] += amount
        f["order_count"] += 1
    for item in _rows(
        warehouse, f"SELECT order_id, quantity FROM {tables.order_items} WHERE order_id IN ({ids})"
    ):
        if item["order_id"] in sales:
            figures[store_of[item["order_id"]]]["product_count"] += item["quantity"]
    for refund in _rows(
        warehouse, f"SELECT order_id, amount FROM {tables.refunds} WHERE order_id IN ({ids})"
    ):
        if refund["order_id"] in sales:
            f = figures[store_of[refund["order_id"]]]
            f["refund_amount"] += refund["amount"]
            f["refund_count"] += 1
    late: dict[int, int] = defaultdict(int)
    for name, key, any_op in (
        (tables.refunds_history, "order_id", True),
        (tables.orders_history, "id", False),
        (tables.payments_history, "order_id", False),
    ):
        if not name or not warehouse.table_exists(name):
            continue
        for change in _rows(
            warehouse, f"SELECT {key} AS order_id, _op, _commit_ts FROM {name} WHERE {key} IN ({ids})"
        ):
            if (any_op or change["_op"] != "I") and serving.to_utc(change["_commit_ts"]) > end:
                late[store_of[change["order_id"]]] += 1
    for store, n in late.items():
        figures[store]["late_changes"] = n
    return [finish_row(figures[s], start, computed_at) for s in sorted(figures)]


def _canonical(rows: list[dict[str, Any]], with_computed_at: bool = True) -> dict[int, str]:
    out = {}
    for r in rows:
        row = dict(r)
        if not with_computed_at:
            row["computed_at"] = serving.to_utc(row["window_start"])
        out[int(row["store_id"])] = serving.encode_row(row)
    return out


def recomputation_result(
    warehouse: Warehouse, start: datetime, rows: list[dict[str, Any]] | None = None
) -> dg.AssetCheckResult:
    """`rows` (the rows about to be written), or else the rows written, against the recomputation."""
    written = read_window(warehouse, start) if rows is None else rows
    again = recompute_window(warehouse, start, start)
    a, b = _canonical(written, False), _canonical(again, False)
    differing = sorted(s for s in a.keys() | b.keys() if a.get(s) != b.get(s))
    return dg.AssetCheckResult(
        check_name=RECOMPUTATION,
        passed=not differing,
        metadata={
            "stores": len(a),
            "differing_stores": dg.MetadataValue.json(differing[:20]),
            "differing_count": len(differing),
        },
        description=None if not differing else f"{len(differing)} stores differ from the recomputation",
    )


def redis_mismatches(
    cache: RedisCache, warehouse: Warehouse, windows: int = LATEST_WINDOWS
) -> dict[str, Any]:
    """For the newest windows Redis holds: the stores whose Redis row differs from the warehouse's."""
    client = cache.client()
    tokens = [
        t.decode() if isinstance(t, bytes) else t
        for t in client.zrevrange(f"{serving.prefix(cache)}windows", 0, windows - 1)
    ]
    out: dict[str, Any] = {}
    for token in tokens:
        start = serving.to_utc(token)
        raw = client.hgetall(serving.window_key(cache, start))
        in_redis = {int(k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
        in_warehouse = _canonical(read_window(warehouse, start))
        differing = sorted(
            s for s in in_redis.keys() | in_warehouse.keys() if in_redis.get(s) != in_warehouse.get(s)
        )
        if differing:
            out[token] = differing
    return {"windows": tokens, "differing": out}


def redis_result(cache: RedisCache, warehouse: Warehouse) -> dg.AssetCheckResult:
    found = redis_mismatches(cache, warehouse)
    return dg.AssetCheckResult(
        check_name=REDIS,
        passed=not found["differing"],
        metadata={
            "windows_compared": dg.MetadataValue.json(found["windows"]),
            "differing": dg.MetadataValue.json(found["differing"]),
        },
    )
