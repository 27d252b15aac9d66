"""The code location benchmarks/report_snapshots.py runs `dagster-daemon` on: the reports domain
alone, built over store_sales_30min as tests/integration/reports/flow.py builds it, so only the
report_requests and report_snapshot_sweep sensors tick. Resources are the local ones (AWS on the
benchmark's moto server, lake and warehouse under its PLATFORM_VAR_DIR); the in-process executor,
as platform/definitions.py sets it. The catalog comes from PLATFORM_REPORTS_DIR (the benchmark
points it at a directory holding store_sales_windows.yaml only: the other shipped reports read
assets this location does not have)."""

import dagster as dg

from assets.reports.definitions import build_defs
from assets.store_sales.assets import KEY as STORE_SALES
from assets.store_sales.assets import PARTITIONS as STORE_SALES_PARTITIONS
from resources.aws import AwsClients
from resources.lake import LocalLake
from resources.warehouse import DuckDBWarehouse

defs = dg.Definitions.merge(
    build_defs({STORE_SALES: STORE_SALES_PARTITIONS}),
    dg.Definitions(
        resources={
            "aws": AwsClients(use_local_endpoint=True),
            "lake": LocalLake(),
            "warehouse": DuckDBWarehouse(),
        },
        executor=dg.in_process_executor,
    ),
)
