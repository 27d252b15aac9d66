"""store_sales_30min: per-store sales of every 30-minute window (UTC), from the shop's CDC tables.

A partition is one window ("2026-11-24-10:30" is [10:30, 11:00) UTC). Its run computes the
window in the warehouse (assets.store_sales.windows), replaces the window's rows in
store_sales.store_sales_30min in one transaction, then publishes the window to Redis
(assets.store_sales.serving) when it started within the last 48 hours, the span Redis keeps.
Runs are started by declarative automation (assets.store_sales.automation): once a window has
closed and the CDC loads have caught up with its end, and again when late changes touch it.

The blocking check runs before anything is written: when the window's rows differ from the
independent recomputation, neither the warehouse table nor Redis receives them (the API keeps
serving the last window that passed), the materialization says `published: False` and the run
fails with the check's figures.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg

from assets.cdc.factory import current_key
from assets.cdc.mapping import load_mapping
from assets.shared.conventions import domain_asset_args
from assets.store_sales import serving
from assets.store_sales.automation import window_condition
from assets.store_sales.windows import CLUSTER, SOURCES, TABLE

DOMAIN = "store_sales"
KEY = dg.AssetKey("store_sales_30min")
FMT = "%Y-%m-%d-%H:%M"
PARTITIONS = dg.TimeWindowPartitionsDefinition(
    cron_schedule="*/30 * * * *", start=datetime(2026, 11, 1, tzinfo=UTC), fmt=FMT, timezone="UTC"
)
KEEP_HOURS = serving.DEFAULT_KEEP_HOURS
# The target is a window in the API within 2 minutes of its close. A partition is materialized
# every 30 minutes (at each close), so the time since the last one warns past 32 minutes (the
# newest window is over 2 minutes late) and fails past 40 (a window missed by 10 minutes).
FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(minutes=40), warn_window=timedelta(minutes=32)
)


def source_keys() -> list[dg.AssetKey]:
    """The current-state assets of the four shop tables the windows read."""
    mapping = load_mapping()
    return [current_key(mapping.by_target(f"{CLUSTER}.{name}")) for name in SOURCES]


def window_of(partition_key: str) -> datetime:
    return datetime.strptime(partition_key, FMT).replace(tzinfo=UTC)


def partition_of(start: datetime) -> str:
    return serving.to_utc(start).strftime(FMT)


@dg.asset(
    key=KEY,
    deps=source_keys(),
    partitions_def=PARTITIONS,
    description="Per store and 30-minute window (UTC): gross and net sales, refunds, orders, items,"
    " average basket and late changes; history in the warehouse, the last 48 h in Redis.",
    kinds={"duckdb", "redis"},
    metadata={"table": TABLE},
    freshness_policy=FRESHNESS,
    automation_condition=window_condition(),
    check_specs=[
        dg.AssetCheckSpec(
            "window_matches_recomputation",
            asset=KEY,
            blocking=True,
            description="The window's rows equal a recomputation in Python from plain reads of the CDC"
            " tables.",
        ),
        dg.AssetCheckSpec(
            "redis_matches_warehouse",
            asset=KEY,
            description="The newest windows in Redis equal the warehouse's rows (the API's JSON).",
        ),
    ],
    required_resource_keys={"warehouse", "cache"},
    **domain_asset_args(DOMAIN),
)
def store_sales_30min(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    from assets.store_sales.checks import recomputation_result, redis_result
    from assets.store_sales.windows import compute_window, rows_table, window_predicate

    start = window_of(context.partition_key)
    warehouse, cache = context.resources.warehouse, context.resources.cache
    now = datetime.now(UTC)
    served: list[str] = []
    # The window, its check and its write read one snapshot of the CDC tables (one transaction; on
    # DuckDB it also holds the file lock, so no CDC load lands between the computation and the
    # recomputation, which would fail the check on a race rather than on a defect).
    with warehouse.transaction() as tx:
        rows = compute_window(tx, start, now)
        check = recomputation_result(tx, start, rows)
        if check.passed:
            tx.replace_where(TABLE, rows_table(rows), window_predicate(start))
    if not check.passed:
        context.log.error(
            f"window {context.partition_key} not published: {check.description}"
            f" ({check.metadata['differing_count'].value} stores differ)"
        )
    elif start + serving.WINDOW > now - timedelta(hours=KEEP_HOURS):
        serving.publish_window(cache, start, rows, keep_hours=KEEP_HOURS)
        served = [serving.window_key(cache, start)]
    else:
        context.log.info(f"window {context.partition_key} is older than {KEEP_HOURS} h: not put in Redis")
    net = sum((r["net_sales"] for r in rows), Decimal("0"))
    return dg.MaterializeResult(
        metadata={
            "published": check.passed,
            "stores": len(rows),
            "orders": sum(r["order_count"] for r in rows),
            "net_sales": float(net),
            "net_sales_text": serving.money(net),
            "late_changes": sum(r["late_changes"] for r in rows),
            "served_keys": dg.MetadataValue.json(served),
        },
        check_results=[check, redis_result(cache, warehouse)],
    )
