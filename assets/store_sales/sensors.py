"""store_sales_windows_sensor: materialize a window once it has closed and the CDC data up to its
end has arrived, and again when changes committed after its end touch it (late changes).

The CDC watermark is the minimum over the four shop tables of the latest commit time loaded
(cdc_state.files); a table with no landed file left to apply counts as loaded up to the capture's
checkpoint (windows.cdc_watermark), so a quiet refunds table does not hold the windows back.

Every tick looks at the windows of the last 48 hours (and never before the partitions'
start) that end at or before the watermark: a window is requested when the cursor has no
record of it, or when its count of late changes differs from the one recorded. Run keys are
"<partition>:<late changes>", so the same state never runs twice.
"""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from assets.store_sales.assets import KEEP_HOURS, KEY, PARTITIONS, partition_of, store_sales_30min
from assets.store_sales.serving import WINDOW
from assets.store_sales.windows import cdc_watermark, late_counts
from resources.lake import LakeStorage
from resources.warehouse import Warehouse

MAX_REQUESTS = 24  # per tick, newest first: a first start after a pause catches up over a few ticks


def due_windows(
    watermark: datetime | None, now: datetime, late: dict[datetime, int], done: dict[str, int]
) -> list[tuple[str, int]]:
    """(partition, late changes) of the windows to run, newest first (the API serves the newest)."""
    if watermark is None:
        return []
    first = max(PARTITIONS.start, now - timedelta(hours=KEEP_HOURS))
    start = first.replace(minute=0 if first.minute < 30 else 30, second=0, microsecond=0)
    if start < first:
        start += WINDOW
    out = []
    while start + WINDOW <= min(watermark, now):
        key = partition_of(start)
        n = late.get(start, 0)
        if done.get(key) != n:
            out.append((key, n))
        start += WINDOW
    return out[::-1][:MAX_REQUESTS]


@dg.sensor(
    name="store_sales_windows_sensor",
    target=[store_sales_30min],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs a 30-minute window once it closed and the CDC loads reached its end; again"
    " when late changes touch it.",
)
def store_sales_windows_sensor(
    context: dg.SensorEvaluationContext, warehouse: Warehouse, lake: LakeStorage
) -> dg.SensorResult:
    now = datetime.now(UTC)
    done: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    watermark = cdc_watermark(warehouse, lake)
    if watermark is None:
        return dg.SensorResult(skip_reason="the shop's CDC tables have not all been loaded yet")
    lo = max(PARTITIONS.start, now - timedelta(hours=KEEP_HOURS) - WINDOW)
    late = late_counts(warehouse, lo, now)
    due = due_windows(watermark, now, late, done)
    requests = [
        dg.RunRequest(
            run_key=f"{key}:{n}", partition_key=key, asset_selection=[KEY], tags={"late_changes": str(n)}
        )
        for key, n in due
    ]
    for key, n in due:
        done[key] = n
    oldest = partition_of(lo)
    done = {k: v for k, v in done.items() if k >= oldest}  # keys sort like their times
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(done, sort_keys=True))
