"""A render worker in its own process, for the test that kills one mid-render:

    python -m tests.integration.reports.worker <snapshot id> <lake root> <warehouse path>

It runs the snapshot's partition of report_snapshot (an ephemeral instance: what matters is the
DynamoDB state it leaves), with the settings it inherits from the test's environment."""

from __future__ import annotations

import sys

import dagster as dg

from assets.reports.partitions import SNAPSHOTS
from resources.aws import AwsClients
from resources.lake import LocalLake
from resources.warehouse import DuckDBWarehouse
from tests.integration.reports.flow import report_defs, snapshot_asset


def main(snapshot_id: str, lake_root: str, warehouse_path: str) -> int:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SNAPSHOTS.name, [snapshot_id])
    result = dg.materialize(
        [snapshot_asset(report_defs())],
        partition_key=snapshot_id,
        instance=instance,
        resources={
            "aws": AwsClients(use_local_endpoint=True),
            "lake": LocalLake(root=lake_root),
            "warehouse": DuckDBWarehouse(path=warehouse_path),
        },
        raise_on_error=False,
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
