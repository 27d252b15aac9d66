"""What the report snapshot flow tests share with the worker process they kill: the reports'
Definitions built over store_sales_30min (the upstream the test reports read), and running one
sensor run request the way the daemon would."""

from __future__ import annotations

from typing import Any

import dagster as dg

from assets.reports.definitions import build_defs
from assets.reports.partitions import SNAPSHOT, SNAPSHOTS
from assets.store_sales.assets import KEY as STORE_SALES
from assets.store_sales.assets import PARTITIONS as STORE_SALES_PARTITIONS

UPSTREAM = {STORE_SALES: STORE_SALES_PARTITIONS}


def report_defs() -> dg.Definitions:
    """The reports domain's Definitions over the catalog in PLATFORM_REPORTS_DIR."""
    return build_defs(UPSTREAM)


def snapshot_asset(defs: dg.Definitions) -> dg.AssetsDefinition:
    [asset] = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition) and a.key == SNAPSHOT]
    return asset


def sensor(defs: dg.Definitions, name: str) -> dg.SensorDefinition:
    [found] = [s for s in defs.sensors or [] if s.name == name]
    return found


def apply(instance: dg.DagsterInstance, result: dg.SensorResult | dg.SkipReason) -> list[dg.RunRequest]:
    """What the daemon does with a tick's result before launching runs: add the partitions."""
    if isinstance(result, dg.SkipReason):
        return []
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(SNAPSHOTS.name, list(request.partition_keys))
    return list(result.run_requests or [])


def execute(
    defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest, resources: dict[str, Any]
) -> dg.ExecuteInProcessResult:
    """Run one run request of report_snapshot (as the run the daemon launches): its partition,
    its config (the batch's other snapshots) and its tags."""
    return dg.materialize(
        [snapshot_asset(defs)],
        partition_key=request.partition_key,
        run_config=request.run_config,
        resources=resources,
        instance=instance,
        tags=dict(request.tags),
        raise_on_error=False,
    )


def snapshots_of(request: dg.RunRequest) -> list[str]:
    """The snapshots a run request asks to render: its partition, then its config's others."""
    [op_config] = request.run_config["ops"].values()
    return [request.partition_key or "", *op_config["config"]["snapshots"]]
