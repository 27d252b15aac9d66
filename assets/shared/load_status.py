"""One load-status table for every domain: what ran, on which partitions, how long, and why it failed.

One row per (domain, dataset, stage, partition), replaced by each run, in
platform_status.load_status:

    domain, dataset, stage, partition, outcome, rows, duration_s, error, run_id, updated_at

`stage` is the step that loaded (raw, cleansed, load, ...); `outcome` is loaded,
failed or check_failed; `partition` is a partition key, a range 'first...last',
or 'all' for an unpartitioned dataset.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from resources.warehouse import Warehouse

STATUS_TABLE = "platform_status.load_status"
KEYS = ["domain", "dataset", "stage", "partition"]
ERROR_CHARS = 2000
log = logging.getLogger(__name__)


def status_row(
    *,
    domain: str,
    dataset: str,
    stage: str,
    partition: str,
    outcome: str,
    rows: int,
    duration_s: float,
    error: BaseException | str | None = None,
    run_id: str | None = None,
) -> dict:
    """One status row, for record_statuses."""
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}"
    return {
        "domain": domain,
        "dataset": dataset,
        "stage": stage,
        "partition": partition,
        "outcome": outcome,
        "rows": rows,
        "duration_s": round(duration_s, 3),
        "error": error[:ERROR_CHARS] if error else None,
        "run_id": run_id,
        "updated_at": datetime.now(UTC).replace(tzinfo=None),
    }


def record_statuses(warehouse: Warehouse, rows: list[dict]) -> None:
    """Write (replace) several status rows in one merge; never raises, so a load's own outcome shows."""
    if not rows:
        return
    try:
        import pyarrow as pa

        table = pa.Table.from_pylist(rows, schema=_schema())
        warehouse.merge(STATUS_TABLE, table, keys=KEYS)
    except Exception:  # the status is a report: never hide the load's own outcome behind it
        log.exception("could not record load status for %d rows (%s, ...)", len(rows), rows[0]["dataset"])


def _schema() -> Any:  # built lazily: pyarrow stays out of the module import
    import pyarrow as pa

    return pa.schema(
        [
            ("domain", pa.string()),
            ("dataset", pa.string()),
            ("stage", pa.string()),
            ("partition", pa.string()),
            ("outcome", pa.string()),
            ("rows", pa.int64()),
            ("duration_s", pa.float64()),
            ("error", pa.string()),
            ("run_id", pa.string()),
            ("updated_at", pa.timestamp("us")),
        ]
    )


def record_status(warehouse: Warehouse, **fields: Any) -> None:
    """Write (replace) the status row of one load (the fields of status_row); never raises."""
    record_statuses(warehouse, [status_row(**fields)])
