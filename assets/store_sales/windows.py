"""Per-store 30-minute sales windows, computed by SQL from the CDC current-state tables.

A sale belongs to the window of its order time (orders.ordered_at, UTC; the payment's
paid_at is the same instant). For the stores with orders in [window_start, window_end):

    gross_sales    captured payments of the window's orders that are not cancelled
    refund_amount  refunds of those orders, whenever the refund was made
    refund_count   their number
    net_sales      gross_sales - refund_amount
    order_count    orders that are not cancelled
    product_count  the quantities of their items
    avg_basket     gross_sales / order_count (0 without orders), half-up to cents
    late_changes   changes committed after window_end touching the window's orders: any change
                   of a refund, an update or delete of an order or its payment (history tables'
                   _commit_ts; a table without history contributes nothing)

Only the warehouse is read: never the operational database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from assets.store_sales.serving import WINDOW, to_utc, window_start_of

if TYPE_CHECKING:
    import pyarrow as pa

    from resources.warehouse import Warehouse

TABLE = "store_sales.store_sales_30min"
CLUSTER = "main"
SOURCES = ("shop_orders", "shop_order_items", "shop_payments", "shop_refunds")
_CENT = Decimal("0.01")


@dataclass(frozen=True)
class ShopTables:
    """The warehouse names of the shop's CDC tables (current state; history None when not kept)."""

    orders: str
    order_items: str
    payments: str
    refunds: str
    orders_history: str | None
    payments_history: str | None
    refunds_history: str | None

    @classmethod
    def from_mapping(cls, mapping: Any = None) -> ShopTables:
        from assets.cdc.mapping import load_mapping

        mapping = mapping or load_mapping()
        t = {name: mapping.by_target(f"{CLUSTER}.{name}") for name in SOURCES}

        def hist(name: str) -> str | None:
            return t[name].history_table if t[name].history else None

        return cls(
            orders=t["shop_orders"].current_table,
            order_items=t["shop_order_items"].current_table,
            payments=t["shop_payments"].current_table,
            refunds=t["shop_refunds"].current_table,
            orders_history=hist("shop_orders"),
            payments_history=hist("shop_payments"),
            refunds_history=hist("shop_refunds"),
        )


def sql_ts(value: datetime) -> str:
    return f"TIMESTAMPTZ '{to_utc(value).strftime('%Y-%m-%d %H:%M:%S')}+00'"


def window_sql(tables: ShopTables, start: datetime, history: Sequence[str] = ()) -> str:
    """The window's per-store figures (money not yet rounded, avg_basket not computed).

    `history` holds the history tables that exist (others are left out of late_changes)."""
    lo, hi = sql_ts(start), sql_ts(start + WINDOW)
    changes = []
    if tables.refunds_history and tables.refunds_history in history:
        changes.append(f"SELECT order_id FROM {tables.refunds_history} WHERE _commit_ts > {hi}")
    if tables.orders_history and tables.orders_history in history:
        changes.append(
            f"SELECT id AS order_id FROM {tables.orders_history} WHERE _commit_ts > {hi} AND _op <> 'I'"
        )
    if tables.payments_history and tables.payments_history in history:
        changes.append(
            f"SELECT order_id FROM {tables.payments_history} WHERE _commit_ts > {hi} AND _op <> 'I'"
        )
    late = " UNION ALL ".join(changes) or "SELECT CAST(NULL AS BIGINT) AS order_id WHERE false"
    return f"""
WITH win AS (
    SELECT id AS order_id, store_id, status FROM {tables.orders}
    WHERE ordered_at >= {lo} AND ordered_at < {hi}
),
sales AS (
    SELECT w.order_id, w.store_id, p.amount FROM win w
    JOIN {tables.payments} p ON p.order_id = w.order_id
    WHERE p.status = 'captured' AND w.status <> 'cancelled'
),
items AS (
    SELECT s.store_id, sum(i.quantity) AS qty FROM sales s
    JOIN {tables.order_items} i ON i.order_id = s.order_id GROUP BY s.store_id
),
refs AS (
    SELECT s.store_id, sum(r.amount) AS amount, count(*) AS n FROM sales s
    JOIN {tables.refunds} r ON r.order_id = s.order_id GROUP BY s.store_id
),
gross AS (
    SELECT store_id, sum(amount) AS amount, count(*) AS n FROM sales GROUP BY store_id
),
late AS (
    SELECT w.store_id, count(*) AS n FROM ({late}) c JOIN win w ON w.order_id = c.order_id
    GROUP BY w.store_id
)
SELECT st.store_id,
       CAST(coalesce(g.amount, 0) AS DECIMAL(18, 2)) AS gross_sales,
       CAST(coalesce(r.amount, 0) AS DECIMAL(18, 2)) AS refund_amount,
       CAST(coalesce(r.n, 0) AS BIGINT) AS refund_count,
       CAST(coalesce(g.n, 0) AS BIGINT) AS order_count,
       CAST(coalesce(i.qty, 0) AS BIGINT) AS product_count,
       CAST(coalesce(l.n, 0) AS BIGINT) AS late_changes
FROM (SELECT DISTINCT store_id FROM win) st
LEFT JOIN gross g ON g.store_id = st.store_id
LEFT JOIN refs r ON r.store_id = st.store_id
LEFT JOIN items i ON i.store_id = st.store_id
LEFT JOIN late l ON l.store_id = st.store_id
ORDER BY st.store_id
"""


def finish_row(raw: dict[str, Any], start: datetime, computed_at: datetime) -> dict[str, Any]:
    """A row of the window contract from the summed figures (money rounded to cents)."""
    gross = Decimal(raw["gross_sales"]).quantize(_CENT, rounding=ROUND_HALF_UP)
    refunds = Decimal(raw["refund_amount"]).quantize(_CENT, rounding=ROUND_HALF_UP)
    orders = int(raw["order_count"])
    basket = (gross / orders).quantize(_CENT, rounding=ROUND_HALF_UP) if orders else Decimal("0.00")
    return {
        "store_id": int(raw["store_id"]),
        "window_start": start,
        "window_end": start + WINDOW,
        "net_sales": gross - refunds,
        "gross_sales": gross,
        "refund_amount": refunds,
        "refund_count": int(raw["refund_count"]),
        "order_count": orders,
        "product_count": int(raw["product_count"]),
        "avg_basket": basket,
        "late_changes": int(raw["late_changes"]),
        "computed_at": to_utc(computed_at),
    }


def compute_window(
    warehouse: Warehouse, window_start: Any, computed_at: datetime, tables: ShopTables | None = None
) -> list[dict[str, Any]]:
    """The window's rows, one per store with orders in it, ordered by store_id."""
    start = window_start_of(window_start)
    tables = tables or ShopTables.from_mapping()
    for name in (tables.orders, tables.order_items, tables.payments, tables.refunds):
        if not warehouse.table_exists(name):
            raise RuntimeError(f"the CDC table {name} does not exist yet: load the shop tables first")
    history = [
        h
        for h in (tables.orders_history, tables.payments_history, tables.refunds_history)
        if h and warehouse.table_exists(h)
    ]
    result = warehouse.query(window_sql(tables, start, history))
    return [finish_row(r, start, computed_at) for r in result.to_pylist()]


def window_schema() -> pa.Schema:
    import pyarrow as pa

    money = pa.decimal128(18, 2)
    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("store_id", pa.int64()),
            ("window_start", ts),
            ("window_end", ts),
            ("net_sales", money),
            ("gross_sales", money),
            ("refund_amount", money),
            ("refund_count", pa.int64()),
            ("order_count", pa.int64()),
            ("product_count", pa.int64()),
            ("avg_basket", money),
            ("late_changes", pa.int64()),
            ("computed_at", ts),
        ]
    )


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=window_schema())


def window_predicate(start: datetime) -> str:
    return f"window_start = {sql_ts(window_start_of(start))}"


def read_window(warehouse: Warehouse, start: datetime) -> list[dict[str, Any]]:
    """The window's rows as the warehouse holds them, by store."""
    if not warehouse.table_exists(TABLE):
        return []
    from assets.store_sales.serving import FIELDS

    sql = f"SELECT {', '.join(FIELDS)} FROM {TABLE} WHERE {window_predicate(start)} ORDER BY store_id"
    return warehouse.query(sql).to_pylist()


def cdc_watermark(warehouse: Warehouse, lake: Any = None, mapping: Any = None) -> datetime | None:
    """The commit time up to which the four shop tables are loaded; None while one is not known to be.

    A table is loaded up to its latest commit applied (cdc_state.files). With the lake given, a
    quiet table (say refunds, overnight) does not hold the others back: when every change file of
    it that has landed is applied, it is complete up to the capture's checkpoint (every transaction
    before the checkpoint is in landed files), i.e. up to the latest commit applied of any of the
    four tables at or before the checkpoint's binlog position, less a second (commit times are whole
    seconds, and a transaction of that same second may follow the checkpoint).
    """
    from datetime import timedelta

    from assets.cdc.mapping import load_mapping
    from assets.cdc.state import FILES

    mapping = mapping or load_mapping()
    tables = [mapping.by_target(f"{CLUSTER}.{name}") for name in SOURCES]
    checkpoint = _checkpoint_seq(lake) if lake is not None else None  # read before listing files
    if not warehouse.table_exists(FILES):
        return None
    quoted = ", ".join(f"'{t.target}'" for t in tables)
    rows = warehouse.query(
        f"SELECT target, max(last_commit_ts) AS ts FROM {FILES} WHERE target IN ({quoted}) GROUP BY target"
    ).to_pylist()
    found = {r["target"]: to_utc(r["ts"]) for r in rows if r["ts"] is not None}
    if checkpoint is not None:
        covered = warehouse.query(
            f"SELECT max(last_commit_ts) AS ts FROM {FILES} WHERE target IN ({quoted})"
            f" AND max_seq <= '{checkpoint}'"
        )["ts"][0].as_py()
        if covered is not None:
            complete = to_utc(covered) - timedelta(seconds=1)
            for t in tables:
                # A table with no change yet (refunds on a new shop) is as complete as a quiet one.
                behind = t.target not in found or found[t.target] < complete
                if behind and not _pending_files(lake, warehouse, t):
                    found[t.target] = complete
    if set(found) != {t.target for t in tables}:
        return None
    return min(found.values())


def _checkpoint_seq(lake: Any) -> str | None:
    """The AR_H_CHANGE_SEQ bound of the capture's checkpoint (every change at or below is landed)."""
    from assets.cdc import dms
    from assets.cdc.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(lake, CLUSTER)
    if checkpoint is None:
        return None
    return dms.change_seq(
        dms.binlog_number(checkpoint.log_file), checkpoint.log_pos, 10 ** dms.SEQ_DIGITS[2] - 1
    )


def _pending_files(lake: Any, warehouse: Warehouse, table: Any) -> bool:
    """Whether a change file of the table landed since yesterday (UTC) and is neither applied nor
    quarantined."""
    from datetime import UTC, timedelta

    from assets.cdc.apply import list_change_files
    from assets.cdc.state import FILES, QUARANTINE

    since = (datetime.now(UTC) - timedelta(days=1)).date()
    keys = {f.ref.key for f in list_change_files(lake, table, since=since)}
    if not keys:
        return False
    done = {
        r["object_key"]
        for r in warehouse.query(
            f"SELECT object_key FROM {FILES} WHERE target = '{table.target}'"
        ).to_pylist()
    }
    if warehouse.table_exists(QUARANTINE):  # released files are applied again: still pending
        held = warehouse.query(
            f"SELECT object_key FROM {QUARANTINE} WHERE target = '{table.target}' AND released_at IS NULL"
        )
        done |= {r["object_key"] for r in held.to_pylist()}
    return bool(keys - done)


def late_fingerprint(warehouse: Warehouse, start: datetime, tables: ShopTables | None = None) -> int:
    """The number of changes committed after the window's end touching its orders (late_changes
    summed over stores): when it grows, the window is recomputed."""
    rows = compute_window(warehouse, start, start, tables)
    return sum(r["late_changes"] for r in rows)


def late_counts(
    warehouse: Warehouse, lo: datetime, hi: datetime, tables: ShopTables | None = None
) -> dict[datetime, int]:
    """Late changes per window start, for the windows starting in [lo, hi) (one query)."""
    tables = tables or ShopTables.from_mapping()
    if not warehouse.table_exists(tables.orders):
        return {}
    parts = []
    for name, key, ops in (
        (tables.refunds_history, "order_id", ""),
        (tables.orders_history, "id", " AND _op <> 'I'"),
        (tables.payments_history, "order_id", " AND _op <> 'I'"),
    ):
        if name and warehouse.table_exists(name):
            parts.append(
                f"SELECT {key} AS order_id, _commit_ts FROM {name} WHERE _commit_ts > {sql_ts(lo)}{ops}"
            )
    if not parts:
        return {}
    sql = f"""
WITH win AS (
    SELECT id AS order_id, to_timestamp(floor(epoch(ordered_at) / 1800) * 1800) AS ws FROM {tables.orders}
    WHERE ordered_at >= {sql_ts(lo)} AND ordered_at < {sql_ts(hi)}
)
SELECT w.ws, count(*) AS n FROM ({" UNION ALL ".join(parts)}) c JOIN win w ON w.order_id = c.order_id
WHERE c._commit_ts > w.ws + INTERVAL 30 MINUTE
GROUP BY w.ws
"""
    return {to_utc(r["ws"]): int(r["n"]) for r in warehouse.query(sql).to_pylist()}
