"""Assets that describe the lake itself: what landed each day, and what every tier holds."""

import io
from collections import defaultdict
from datetime import timedelta

import dagster as dg

from assets.shared.automation import parents_materialized
from assets.shared.conventions import PARTITIONS_START, domain_asset_args
from resources.lake import LakePartition, LakeStorage, Tier
from resources.lake.paths import LakePathError, parse_key
from resources.ledger import FileLedger, FileRef
from resources.warehouse import Warehouse

DOMAIN = "lake_ops"
daily = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1)


def _parquet_rows(lake: LakeStorage, key: str) -> int | None:
    """Row count from the Parquet footer, or None if the object is not readable Parquet."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(io.BytesIO(lake.get_bytes(key))).metadata.num_rows
    except Exception:
        return None


# Domains whose sensors record their own arrivals: CDC lands several files a second, and reading
# every one's footer here (in each of these runs) held two of three run slots for minutes.
OWN_ARRIVALS = ("cdc",)


@dg.asset(
    key=["lake_ops", "landing_arrivals"],
    partitions_def=daily,
    description="Per day: objects, bytes and rows that arrived in the landing tier, per domain and dataset.",
    kinds={"parquet"},
    **domain_asset_args(DOMAIN),
)
def landing_arrivals(
    context: dg.AssetExecutionContext, lake: LakeStorage, warehouse: Warehouse
) -> dg.MaterializeResult:
    import pyarrow as pa

    day = LakePartition.from_key(context.partition_key, context.assets_def.partitions_def)
    counted: list[FileRef] = []
    stats: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"objects": 0, "bytes": 0, "rows": 0})
    unreadable = []
    for obj in lake.list_objects(f"{Tier.LANDING.value}/"):
        try:
            key = parse_key(obj.key)
        except LakePathError:
            continue  # reported by the lake_inventory conventions check
        if key.partition is None or key.partition.day != day.day or key.domain in OWN_ARRIVALS:
            continue
        counted.append(FileRef(obj.key, lake.etag(obj)))
        entry = stats[(key.domain, key.dataset)]
        entry["objects"] += 1
        entry["bytes"] += obj.size
        rows = _parquet_rows(lake, obj.key) if obj.key.endswith(".parquet") else None
        if rows is None:
            unreadable.append(obj.key)
        else:
            entry["rows"] += rows

    summary = pa.table(
        {
            "day": [day.day] * len(stats),
            "domain": [d for d, _ in stats],
            "dataset": [s for _, s in stats],
            "objects": [v["objects"] for v in stats.values()],
            "bytes": [v["bytes"] for v in stats.values()],
            "rows": [v["rows"] for v in stats.values()],
        }
    )
    # A fixed file name makes a re-run replace the day's summary instead of adding one.
    written = lake.write_parquet(summary, Tier.CURATED, DOMAIN, "landing_arrivals", day, "summary.parquet")
    if unreadable:
        context.log.warning(f"{len(unreadable)} landing objects are not readable Parquet: {unreadable[:10]}")
    # The day's summary now covers these files: the sensors need not ask for them again.
    FileLedger(warehouse).record(
        context.asset_key.to_user_string(),
        counted,
        run_id=context.run.run_id,
        partition_key=context.partition_key,
    )
    return dg.MaterializeResult(
        metadata={
            "objects": sum(v["objects"] for v in stats.values()),
            "bytes": sum(v["bytes"] for v in stats.values()),
            "rows": sum(v["rows"] for v in stats.values()),
            "datasets": len(stats),
            "unreadable_objects": len(unreadable),
            "path": dg.MetadataValue.path(lake.uri(written)),
        }
    )


# eager() would wait for every day of landing_arrivals to exist; the inventory
# should refresh after any day's arrivals instead (once some day has arrived at all).
_REFRESH_AFTER_ARRIVALS = (
    (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since_last_handled()
    & parents_materialized()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after new arrivals")


@dg.asset(
    key=["lake_ops", "lake_inventory"],
    deps=[landing_arrivals],
    description="Objects, bytes and partitions per tier and dataset across the whole lake.",
    kinds={"parquet"},
    automation_condition=_REFRESH_AFTER_ARRIVALS | dg.AutomationCondition.on_cron("0 * * * *"),
    freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=2)),
    **domain_asset_args(DOMAIN),
)
def lake_inventory(context: dg.AssetExecutionContext, lake: LakeStorage) -> dg.MaterializeResult:
    import pyarrow as pa

    rows: dict[tuple[str, str, str], dict] = {}
    nonconforming = []
    for tier in Tier:
        for obj in lake.list_objects(f"{tier.value}/"):
            try:
                key = parse_key(obj.key)
            except LakePathError:
                nonconforming.append(obj.key)
                continue
            entry = rows.setdefault(
                (tier.value, key.domain, key.dataset),
                {"objects": 0, "bytes": 0, "partitions": set(), "newest": obj.last_modified},
            )
            entry["objects"] += 1
            entry["bytes"] += obj.size
            if key.partition:
                entry["partitions"].add(key.partition)
            entry["newest"] = max(entry["newest"], obj.last_modified)

    ordered = sorted(rows.items())
    table = pa.table(
        {
            "tier": [t for (t, _, _), _ in ordered],
            "domain": [d for (_, d, _), _ in ordered],
            "dataset": [s for (_, _, s), _ in ordered],
            "objects": [v["objects"] for _, v in ordered],
            "bytes": [v["bytes"] for _, v in ordered],
            "partitions": [len(v["partitions"]) for _, v in ordered],
            "newest_object": [v["newest"] for _, v in ordered],
        }
    )
    written = lake.write_parquet(table, Tier.CURATED, DOMAIN, "lake_inventory", None, "inventory.parquet")
    metadata: dict[str, dg.RawMetadataValue] = {
        "datasets": len(ordered),
        "objects": sum(v["objects"] for _, v in ordered),
        "bytes": sum(v["bytes"] for _, v in ordered),
        "nonconforming_objects": len(nonconforming),
        "nonconforming_sample": dg.MetadataValue.json(nonconforming[:20]),
        "path": dg.MetadataValue.path(lake.uri(written)),
        "inventory": dg.MetadataValue.md(_markdown(ordered)),
    }
    for tier in Tier:
        in_tier = [v for (t, _, _), v in ordered if t == tier.value]
        metadata[f"{tier.value}_objects"] = sum(v["objects"] for v in in_tier)
        metadata[f"{tier.value}_bytes"] = sum(v["bytes"] for v in in_tier)
    context.log.info(f"inventoried {metadata['objects']} objects in {len(ordered)} datasets")
    return dg.MaterializeResult(metadata=metadata)


def _markdown(ordered: list) -> str:
    lines = ["| tier | dataset | objects | bytes | partitions |", "|---|---|---:|---:|---:|"]
    for (tier, domain, dataset), v in ordered:
        lines.append(
            f"| {tier} | {domain}/{dataset} | {v['objects']} | {v['bytes']} | {len(v['partitions'])} |"
        )
    return "\n".join(lines)


@dg.asset_check(asset=lake_inventory, description="Every object in the lake follows the path conventions.")
def lake_paths_follow_conventions(lake: LakeStorage) -> dg.AssetCheckResult:
    bad = []
    for tier in Tier:
        for obj in lake.list_objects(f"{tier.value}/"):
            try:
                parse_key(obj.key)
            except LakePathError as exc:
                bad.append(str(exc))
    return dg.AssetCheckResult(
        passed=not bad,
        metadata={"nonconforming_objects": len(bad), "examples": dg.MetadataValue.json(bad[:10])},
    )
