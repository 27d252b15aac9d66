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

from resources.warehouse import Warehouse

STATUS_TABLE = "platform_status.load_status"
KEYS = ["domain", "dataset", "stage", "partition"]
ERROR_CHARS = 2000
log = logging.getLogger(__name__)


def record_status(
    warehouse: Warehouse,
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
) -> None:
    """Write (replace) the status row of one load; never raises, so a load's own outcome shows."""
    try:
        import pyarrow as pa

        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        row = pa.table(
            {
                "domain": [domain],
                "dataset": [dataset],
                "stage": [stage],
                "partition": [partition],
                "outcome": [outcome],
                "rows": pa.array([rows], pa.int64()),
                "duration_s": pa.array([round(duration_s, 3)], pa.float64()),
                "error": pa.array([error[:ERROR_CHARS] if error else None], pa.string()),
                "run_id": pa.array([run_id], pa.string()),
                "updated_at": [datetime.now(UTC).replace(tzinfo=None)],
            }
        )
        warehouse.merge(STATUS_TABLE, row, keys=KEYS)
    except Exception:  # the status is a report: never hide the load's own outcome behind it
        log.exception("could not record load status for %s %s (%s, %s)", domain, dataset, stage, partition)
