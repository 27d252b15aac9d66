"""Per-table load status in the warehouse: what ran, on which partitions, and why it failed."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from resources.warehouse import Warehouse

STATUS_TABLE = "migration_status.load_status"
log = logging.getLogger(__name__)


def record_status(
    warehouse: Warehouse,
    source: str,
    table: str,
    tier: str,
    partitions: str,
    status: str,
    rows: int,
    error: BaseException | None = None,
) -> None:
    import pyarrow as pa

    row = pa.table(
        {
            "source": [source],
            "table_name": [table],
            "tier": [tier],
            "partitions": [partitions],
            "status": [status],
            "rows": pa.array([rows], pa.int64()),
            "error": pa.array([f"{type(error).__name__}: {error}"[:2000] if error else None], pa.string()),
            "updated_at": [datetime.now(UTC).replace(tzinfo=None)],
        }
    )
    try:
        warehouse.merge(STATUS_TABLE, row, keys=["source", "table_name", "tier", "partitions"])
    except Exception:  # the status is a report: never hide the load's own outcome behind it
        log.exception("could not record load status for %s.%s", source, table)
