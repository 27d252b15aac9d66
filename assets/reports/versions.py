"""The version of the data a report reads: each upstream asset's latest materialization.

A snapshot id includes these versions (services.snapshots.ids.snapshot_id), so a request over
unchanged data maps to the snapshot already made, and any new materialization of an asset the
report reads (any partition of it) makes the same request render anew.
"""

from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

from services.snapshots.catalog import Report
from services.snapshots.ids import snapshot_id

NEVER = "never-materialized"


def upstream_versions(instance: dg.DagsterInstance, keys: Iterable[str]) -> dict[str, str]:
    """'a/b/c' -> the storage id of the asset's latest materialization ('never-materialized' if
    none), read in one query."""
    wanted = sorted(set(keys))
    records = instance.get_asset_records([dg.AssetKey.from_user_string(k) for k in wanted])
    latest = {
        r.asset_entry.asset_key.to_user_string(): r.asset_entry.last_materialization_storage_id
        for r in records
    }
    return {k: str(latest[k]) if latest.get(k) is not None else NEVER for k in wanted}


def current_snapshot(
    instance: dg.DagsterInstance, report: Report, params: Mapping[str, Any], reads: Iterable[str]
) -> tuple[str, dict[str, str]]:
    """The snapshot id a request for report with (typed) params names now, and the versions it
    was computed from: the one computation the sensor and the HTTP API's reuse path share."""
    versions = upstream_versions(instance, reads)
    return snapshot_id(report.id, params, versions, report.fingerprint), versions
