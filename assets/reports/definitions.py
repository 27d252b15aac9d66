"""The report snapshot domain's Definitions, built over the other domains' assets: each shipped
report's `reads` (platform/reports/*.yaml) is resolved against their asset keys, which gives the
snapshot asset its lineage and each report the assets whose versions identify its snapshots."""

from collections.abc import Mapping

import dagster as dg

from assets.reports.sensors import build_request_sensor, build_sweep_sensor
from assets.reports.snapshot import build_snapshot_asset
from services.snapshots.catalog import load_reports, resolve_reads


def build_defs(upstream: Mapping[dg.AssetKey, dg.PartitionsDefinition | None]) -> dg.Definitions:
    """`upstream`: every other asset of the code location with its partitions (None: unpartitioned)."""
    reports = load_reports()
    keys = {k.to_user_string(): k for k in upstream}
    reads = {report.id: resolve_reads(report, keys) for report in reports.values()}
    deps = [
        # A snapshot reads whole tables: every partition of a partitioned upstream.
        dg.AssetDep(keys[k], partition_mapping=dg.AllPartitionMapping())
        if upstream[keys[k]] is not None
        else dg.AssetDep(keys[k])
        for k in sorted({k for keys_read in reads.values() for k in keys_read})
    ]
    return dg.Definitions(
        assets=[build_snapshot_asset(reports, reads, deps)],
        sensors=[build_request_sensor(reports, reads), build_sweep_sensor(reads)],
    )
