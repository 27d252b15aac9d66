"""When a 30-minute window runs: declarative automation with one condition of the domain's own.

WindowDue is true for the windows (partitions) that
- have closed and whose CDC data has arrived: the window's end is at or before the CDC watermark
  (windows.cdc_watermark, the commit time the four shop tables are loaded up to), not the wall clock;
- start within the 48 hours Redis serves, and not before the window of the shop's first sale (a
  first start does not queue 96 runs of empty windows);
- have no published materialization, or the latest one absorbed a different number of late changes
  (its `late_changes` metadata) than the CDC tables now hold for the window: a late refund re-runs
  its closed window.

The asset's condition adds what Dagster tracks itself: never while a run of the window is queued
or running (no duplicate runs), and a window whose latest run failed is asked again at the next
10-minute tick rather than at every evaluation; a window whose blocking check failed is asked again
10 minutes later (RETRY_AFTER), not at every evaluation. The condition reads the warehouse, the lake and
the instance, so its sensor is evaluated in the code server (use_user_code_server); the resources
are built from the profile at evaluation time, never at import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg

from assets.store_sales.serving import DEFAULT_KEEP_HOURS, WINDOW, to_utc

if TYPE_CHECKING:
    from resources.warehouse import Warehouse

KEEP_HOURS = DEFAULT_KEEP_HOURS
MAX_PER_EVALUATION = 8  # newest first: a backlog after a pause drains over a few ticks
RETRY_CRON = "*/10 * * * *"
RETRY_AFTER = timedelta(minutes=10)
SENSOR = "store_sales_automation"


def due_windows(
    watermark: datetime | None,
    now: datetime,
    first_sale: datetime | None,
    late: Mapping[datetime, int],
    done: Mapping[str, int],
    start: datetime,
    partition_of: Any,
    limit: int | None = MAX_PER_EVALUATION,
) -> list[str]:
    """The partition keys of the windows to run, newest first (the API serves the newest).

    `late` holds the late changes per window start; `done` the late changes the latest published
    materialization of each partition absorbed; `start` is where the partitions begin.
    """
    if watermark is None or first_sale is None:
        return []
    first = floor_window(first_sale)  # the window of the first sale is due; the hours before are not
    lo = max(start, now - timedelta(hours=KEEP_HOURS), first)
    ws = floor_window(lo)
    if ws < lo:
        ws += WINDOW
    out = []
    while ws + WINDOW <= min(watermark, now):
        key = partition_of(ws)
        if done.get(key) != late.get(ws, 0):
            out.append(key)
        ws += WINDOW
    return out[::-1][:limit]


def floor_window(value: datetime) -> datetime:
    """The start of the 30-minute window holding `value`."""
    t = to_utc(value)
    return t.replace(minute=0 if t.minute < 30 else 30, second=0, microsecond=0)


def latest_materializations(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitions: Iterable[str]
) -> dict[str, tuple[float, Mapping[str, Any]]]:
    """Per partition: the timestamp and metadata of its latest materialization."""
    wanted = set(partitions)
    seen: dict[str, tuple[float, Mapping[str, Any]]] = {}
    cursor = None
    while wanted - seen.keys():
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=sorted(wanted)), limit=500, cursor=cursor
        )
        for record in result.records:  # newest first: the first seen of a partition is its latest
            pk = record.partition_key
            if pk is not None and pk not in seen and record.asset_materialization is not None:
                seen[pk] = (record.timestamp, record.asset_materialization.metadata)
        if not result.has_more:
            break
        cursor = result.cursor
    return seen


def _published(meta: Mapping[str, Any]) -> bool:
    flag = meta.get("published")
    return flag is None or flag.value is True


def published_late_changes(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitions: Iterable[str]
) -> dict[str, int]:
    """Per partition, the late changes its latest materialization absorbed, if it was published
    (a run whose blocking check failed records `published: False`)."""
    return {
        pk: int(meta["late_changes"].value)
        for pk, (_, meta) in latest_materializations(instance, key, partitions).items()
        if "late_changes" in meta and _published(meta)
    }


def recently_blocked(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitions: Iterable[str], now: datetime
) -> set[str]:
    """The partitions whose latest run was blocked by its check less than RETRY_AFTER ago: retried
    after that, not at every evaluation (the run itself succeeded in recording an unpublished
    materialization, so Dagster's execution_failed does not hold it back)."""
    since = (now - RETRY_AFTER).timestamp()
    return {
        pk
        for pk, (ts, meta) in latest_materializations(instance, key, partitions).items()
        if not _published(meta) and ts > since
    }


def first_sale(warehouse: Warehouse) -> datetime | None:
    from assets.store_sales.windows import ShopTables, to_utc

    tables = ShopTables.from_mapping()
    if not warehouse.table_exists(tables.orders):
        return None
    value = warehouse.query(f"SELECT min(ordered_at) AS t FROM {tables.orders}")["t"][0].as_py()
    return None if value is None else to_utc(value)


def window_keys(
    watermark: datetime, now: datetime, first: datetime, start: datetime, partition_of: Any
) -> list[str]:
    """Every window that due_windows looks at (closed behind the watermark, in the 48 hours)."""
    return due_windows(watermark, now, first, {}, {}, start, partition_of, limit=None)


def due_partitions(warehouse: Warehouse, lake: Any, instance: dg.DagsterInstance, now: datetime) -> list[str]:
    from assets.store_sales.assets import KEY, PARTITIONS, partition_of
    from assets.store_sales.windows import cdc_watermark, late_counts

    watermark = cdc_watermark(warehouse, lake)
    first = first_sale(warehouse) if watermark is not None else None
    if watermark is None or first is None:
        return []
    late = late_counts(warehouse, max(PARTITIONS.start, now - timedelta(hours=KEEP_HOURS) - WINDOW), now)
    keys = window_keys(watermark, now, first, PARTITIONS.start, partition_of)
    done = published_late_changes(instance, KEY, keys)
    due = due_windows(watermark, now, first, late, done, PARTITIONS.start, partition_of, limit=None)
    blocked = recently_blocked(instance, KEY, due, now)
    return [k for k in due if k not in blocked][:MAX_PER_EVALUATION]


class WindowDue(dg.AutomationCondition):
    """True for the windows that closed behind the CDC watermark and are not yet published with
    their current count of late changes (see the module's docstring)."""

    @property
    def name(self) -> str:
        return "window_closed_behind_cdc_watermark_and_not_published"

    @property
    def description(self) -> str:
        return (
            "The window ended at or before the CDC watermark and has no published materialization"
            " with its current count of late changes"
        )

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        from resources.profiles import build_resources

        resources = build_resources()
        now = context.evaluation_time.astimezone(UTC)
        instance = context.asset_graph_view.instance
        keys = due_partitions(resources["warehouse"], resources["lake"], instance, now)
        subset = context.candidate_subset.compute_intersection_with_partition_keys(set(keys))
        return dg.AutomationResult(context=context, true_subset=subset)


def window_condition() -> dg.AutomationCondition:
    """The asset's condition: due, not in progress, and after a failure only at the retry tick."""
    retry = ~dg.AutomationCondition.execution_failed() | dg.AutomationCondition.cron_tick_passed(RETRY_CRON)
    return (
        WindowDue()
        & ~dg.AutomationCondition.in_progress()
        & retry.with_label("not failed, or at the 10-minute retry tick")
    )


def window_automation_sensor(target: Any) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        SENSOR,
        target=target,
        use_user_code_server=True,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        run_tags={"domain": "store_sales"},
        description="Evaluates the 30-minute windows' condition (assets.store_sales.automation) in the"
        " code server: a window runs once the CDC data past its end has arrived, again on late changes.",
    )
