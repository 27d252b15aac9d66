"""The report snapshot domain's names: its asset, its dynamic partitions and its render pool."""

import dagster as dg

DOMAIN = "reports"
SNAPSHOT = dg.AssetKey([DOMAIN, "report_snapshot"])
# One partition per snapshot id, added by the report_requests sensor.
SNAPSHOTS = dg.DynamicPartitionsDefinition(name="report_snapshots")
# Bounds simultaneous renders (platform/dagster.yaml: concurrency.pools.default_limit).
POOL = "report_render"
