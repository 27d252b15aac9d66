"""Assets and checks for every registered table, built from the registry by one factory.

Per table: source (observed) -> raw (as extracted) -> cleansed (rules, PII) ; per
source system: analyst views in the warehouse over the cleansed tables.
"""

import time
from datetime import timedelta

import dagster as dg

from assets.migration import DOMAIN, checks
from assets.migration.loads import dataset_name, each_partition, load_cleansed, load_raw, source_max
from assets.migration.profile import histogram_png, markdown, numeric_columns, profile_table
from assets.migration.publish import create_view, publish, view_name, warehouse_table
from assets.migration.registry import SourceSystem, TableSpec, ViewSpec
from assets.shared.automation import after_parent_updates, daily_at, initial_load, observe_every
from assets.shared.conventions import domain_asset_args
from assets.shared.load_status import record_status
from resources.lake import Grain, LakePartition, LakeStorage
from resources.lake.datasets import LoadState
from resources.profiles import sql_source
from resources.sql_source import SqlSource

LOAD_CRON = "0 2 * * *"  # nightly, after the on-prem batch window
OBSERVE_CRON = "*/15 * * * *"  # source row counts and watermarks, besides once on the first start
RAW_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=26), warn_window=timedelta(hours=25)
)


def source_resource_key(source: SourceSystem) -> str:
    return f"source_{source.name}"


def table_key(source: SourceSystem, table: TableSpec, tier: str) -> dg.AssetKey:
    # Tier before table: the catalog folds migration/<source>/<tier>/ and the graph labels nodes by table.
    return dg.AssetKey([DOMAIN, source.name, tier, table.name])


def partitions_def(table: TableSpec) -> dg.PartitionsDefinition | None:
    if table.partition_start is None:
        return None  # the registry requires a start for every partitioned table
    if table.partition_grain == Grain.DAY:
        return dg.DailyPartitionsDefinition(start_date=table.partition_start.isoformat(), end_offset=1)
    if table.partition_grain == Grain.MONTH:
        return dg.MonthlyPartitionsDefinition(start_date=table.partition_start.isoformat(), end_offset=1)
    return None


def raw_automation(table: TableSpec) -> dg.AutomationCondition:
    """Nightly at LOAD_CRON, and the first load of whatever was never loaded (within retention)."""
    within = timedelta(days=table.retention_days) if table.retention_days else None
    return daily_at(LOAD_CRON) | initial_load(within)


def run_partitions(context: dg.AssetExecutionContext, table: TableSpec) -> list[LakePartition] | None:
    if not table.partitioned:
        return None
    return [LakePartition.from_key(k) for k in context.partition_keys]


def partition_label(context: dg.AssetExecutionContext) -> str:
    """'2026-03-01' for one partition, '2026-03-01...2026-03-31' for a backfill range."""
    keys = context.partition_keys
    return keys[0] if len(keys) == 1 else f"{keys[0]}...{keys[-1]}"


def status_dataset(source: SourceSystem, table: TableSpec) -> str:
    """The table's name in platform_status.load_status: 'card_db.customers'."""
    return f"{source.name}.{table.name}"


def _record(
    context: dg.AssetExecutionContext,
    dataset: str,
    stage: str,
    partition: str,
    started: float,
    outcome: str,
    rows: int = 0,
    error: BaseException | str | None = None,
) -> None:
    record_status(
        context.resources.warehouse,
        domain=DOMAIN,
        dataset=dataset,
        stage=stage,
        partition=partition,
        outcome=outcome,
        rows=rows,
        duration_s=time.monotonic() - started,
        error=error,
        run_id=context.run.run_id,
    )


def _outcome(results: list[dg.AssetCheckResult]) -> str:
    return "loaded" if all(r.passed for r in results) else "check_failed"


def _hold_back(lake: LakeStorage, dataset: str, verdict: checks.RawVerdict) -> list[str]:
    """Record the verdict in the dataset's load state: failed partitions blocked, passed ones freed."""
    state = LoadState(lake, DOMAIN, dataset)
    for key, (check, reason, figures) in verdict.failures.items():
        for one in key.split(","):
            state.block(_partition(one), check, reason, figures)
    for key in verdict.passed:
        state.unblock(_partition(key))
    state.save()
    return sorted(state.blocks())


def _partition(key: str) -> LakePartition | None:
    return None if key == "all" else LakePartition.from_key(key)


def blocked(lake: LakeStorage, dataset: str, partitions: list[LakePartition] | None) -> dict[str, dict]:
    """The blocks on the given partitions (or on the table), by partition key."""
    state = LoadState(lake, DOMAIN, dataset)
    found = {}
    for partition in each_partition(partitions):
        block = state.blocked(partition)
        if block:
            found[partition.dagster_key if partition else "all"] = block
    return found


def _tags(table: TableSpec) -> dict[str, str]:
    return {"load_mode": table.load_mode.value, "table_kind": table.kind.value}


def build_table_assets(source: SourceSystem, table: TableSpec) -> list[dg.AssetsDefinition]:
    resource_key = source_resource_key(source)
    dataset = dataset_name(source.name, table.name)
    status_name = status_dataset(source, table)
    parts = partitions_def(table)
    common = domain_asset_args(DOMAIN)
    common["tags"] = {**common["tags"], **_tags(table)}
    raw_key, cleansed_key = table_key(source, table, "raw"), table_key(source, table, "cleansed")
    source_key = table_key(source, table, "source")

    @dg.multi_observable_source_asset(
        name=f"{DOMAIN}__{source.name}__{table.name}__observe",
        specs=[
            dg.AssetSpec(
                source_key,
                description=f"{table.description} Source table {table.source_table} in {source.name} "
                "(observed: row count and max watermark).",
                automation_condition=observe_every(OBSERVE_CRON),
                **common,
            )
        ],
        required_resource_keys={resource_key},
    )
    def observe(context: dg.AssetExecutionContext):
        db: SqlSource = getattr(context.resources, resource_key)
        rows = db.table_row_count(table.source_table)
        watermark = source_max(db, table, table.watermark_column) if table.watermark_column else None
        yield dg.ObserveResult(
            asset_key=source_key,
            metadata={"row_count": rows, "max_watermark": str(watermark)},
            data_version=dg.DataVersion(f"{rows}:{watermark}"),
        )

    check_specs = checks.raw_check_specs(raw_key, table)

    @dg.asset(
        key=raw_key,
        deps=[source_key],
        partitions_def=parts,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=31) if parts else None,
        description=f"{table.description} Raw tier: as extracted, load mode {table.load_mode.value}.",
        required_resource_keys={resource_key, "lake", "warehouse"},
        check_specs=check_specs,
        automation_condition=raw_automation(table),
        kinds={"parquet", "sql"},
        freshness_policy=RAW_FRESHNESS,
        **common,
    )
    def raw(context: dg.AssetExecutionContext):
        db: SqlSource = getattr(context.resources, resource_key)
        lake: LakeStorage = context.resources.lake
        partitions = run_partitions(context, table)
        where = partition_label(context) if parts else "all"
        started = time.monotonic()
        try:
            result = load_raw(lake, db, table, dataset, partitions, source.file)
        except Exception as exc:
            _record(context, status_name, "raw", where, started, "failed", error=exc)
            raise dg.Failure(
                f"raw load of {source.name}.{table.name} ({where}) failed: {type(exc).__name__}: {exc}",
                metadata={"table": table.name, "partitions": where},
            ) from exc
        assert result.plan is not None
        yield dg.MaterializeResult(
            metadata={
                "mode": result.mode,
                "rows_written": result.total_rows,
                "inserted": result.inserted,
                "updated": result.updated,
                "deleted": result.deleted,
                "duplicates_skipped": result.duplicates_skipped,
                "watermark": str(result.watermark),
                "rows_by_partition": dg.MetadataValue.json(result.rows),
                "columns": dg.MetadataValue.json(
                    {c.name: f"{c.source_type} -> {c.arrow}" for c in result.plan.columns}
                ),
            }
        )
        try:
            verdict = checks.raw_checks(lake, db, table, dataset, partitions, raw_key, result.plan)
        except Exception as exc:  # the data landed but could not be checked: not "loaded"
            _record(context, status_name, "raw", where, started, "failed", result.total_rows, exc)
            raise
        held_back = _hold_back(lake, dataset, verdict)
        run_keys = set(context.partition_keys) if parts else {"all"}
        for part in verdict.checks:  # earlier partitions the re-check repaired changed too:
            if part.repaired_rows and part.partition not in run_keys:  # their downstream re-runs
                yield dg.AssetMaterialization(
                    asset_key=raw_key,
                    partition=part.partition,
                    description="Repaired by a later load's re-check against the source.",
                    metadata={"repaired_rows": part.repaired_rows, "repaired_by_run": context.run.run_id},
                )
        for key_, (check, reason, _figures) in verdict.failures.items():
            _record(context, status_name, "raw", key_, started, "check_failed", error=f"{check}: {reason}")
        if not verdict.failures:
            _record(context, status_name, "raw", where, started, "loaded", result.total_rows)
        yield from verdict.results
        if verdict.failures:
            raise dg.Failure(
                f"{source.name}.{table.name}: blocking check failed, the cleansed tier and the warehouse"
                f" are held back for {', '.join(held_back)}. "
                + " | ".join(f"{check}: {reason}" for check, reason, _ in verdict.failures.values()),
                metadata={k: dg.MetadataValue.json(f) for k, (_, _, f) in verdict.failures.items()},
            )

    @dg.asset(
        key=cleansed_key,
        deps=[raw_key],
        partitions_def=parts,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=31) if parts else None,
        description=f"{table.description} Cleansed tier: cleansing rules applied, PII protected"
        + (", types restored." if table.kind.value == "mart" else "."),
        required_resource_keys={resource_key, "lake", "warehouse"},
        check_specs=checks.cleansed_check_specs(cleansed_key, table),
        automation_condition=after_parent_updates(),
        kinds={"parquet"},
        **common,
    )
    def cleansed(context: dg.AssetExecutionContext):
        lake: LakeStorage = context.resources.lake
        partitions = run_partitions(context, table)
        where = partition_label(context) if parts else "all"
        started = time.monotonic()
        blocks = blocked(lake, dataset, partitions)
        if blocks:  # a failed blocking check of the raw tier: publish nothing of these partitions
            reasons = "; ".join(f"{k}: {b['check']} failed ({b['reason']})" for k, b in blocks.items())
            _record(context, status_name, "cleansed", where, started, "blocked", error=reasons)
            raise dg.Failure(
                f"{source.name}.{table.name}: the cleansed tier and the warehouse are held back for"
                f" {', '.join(blocks)} until the raw tier loads clean (fix the source or the registry,"
                f" then `dp migration resync {source.name}.{table.name}`). {reasons}",
                metadata={k: dg.MetadataValue.json(b) for k, b in blocks.items()},
            )
        try:
            result = load_cleansed(lake, table, dataset, partitions)
            published = publish(context.resources.warehouse, lake, source.name, table, dataset, partitions)
        except Exception as exc:
            _record(context, status_name, "cleansed", where, started, "failed", error=exc)
            raise dg.Failure(
                f"cleansing of {source.name}.{table.name} ({where}) failed: {type(exc).__name__}: {exc}"
            ) from exc
        rows = sum(result.rows.values())
        yield dg.MaterializeResult(
            metadata={
                "rows": rows,
                "warehouse_table": warehouse_table(source.name, table.name),
                "warehouse_rows_replaced": published,
                "invalid_values": dg.MetadataValue.json(result.invalid),
                "invalid_total": sum(result.invalid.values()),
                "pii": dg.MetadataValue.json({k: v.value for k, v in table.pii.items()}),
            }
        )
        db: SqlSource = getattr(context.resources, resource_key)
        try:
            results = list(checks.cleansed_checks(lake, db, table, dataset, partitions, cleansed_key))
        except Exception as exc:  # the data landed but could not be checked: not "loaded"
            _record(context, status_name, "cleansed", where, started, "failed", rows, exc)
            raise
        _record(context, status_name, "cleansed", where, started, _outcome(results), rows)
        yield from results

    @dg.asset(
        key=table_key(source, table, "profile"),
        deps=[cleansed_key],
        description=f"EDA profile of {source.name}.{table.name}: per column null rate, distinct count, "
        "min, max and top values, with histograms of numeric columns.",
        required_resource_keys={"warehouse"},
        automation_condition=after_parent_updates(),
        kinds={"duckdb"},
        **common,
    )
    def profile(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        warehouse = context.resources.warehouse
        target = warehouse_table(source.name, table.name)
        # Keys and PII are identifiers: counts only, no values, no histograms.
        withhold = set(table.primary_key) | set(table.join_keys) | set(table.pii)
        total, columns = profile_table(warehouse, target, withhold)
        by_name = {c.name: c for c in columns}
        images = {
            name: histogram_png(warehouse, target, name, by_name[name].min, by_name[name].max)
            for name in numeric_columns(columns)[:4]
        }
        return dg.MaterializeResult(
            metadata={
                "rows": total,
                "columns": len(columns),
                "profile": dg.MetadataValue.md(markdown(total, columns, images)),
                "null_rates": dg.MetadataValue.json({c.name: c.null_rate for c in columns}),
            }
        )

    return [observe, raw, cleansed, profile]


def build_view_asset(source: SourceSystem, view: ViewSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=[DOMAIN, source.name, "views", view.name],
        deps=[table_key(source, source.table(t), "cleansed") for t in view.tables],
        description=f"{view.description} Warehouse view {view_name(source.name, view.name)}.",
        required_resource_keys={"warehouse"},
        automation_condition=after_parent_updates(),
        kinds={"duckdb", "sql"},
        **domain_asset_args(DOMAIN),
    )
    def _view(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        rows = create_view(context.resources.warehouse, source, view)
        return dg.MaterializeResult(
            metadata={
                "view": view_name(source.name, view.name),
                "rows": rows,
                "sql": dg.MetadataValue.md(f"```sql\n{view.sql}\n```"),
            }
        )

    return _view


def observation_sensor_name(source: SourceSystem) -> str:
    return f"{DOMAIN}_{source.name}_source_observation"


def build_observation_sensor(source: SourceSystem) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the source assets' observe_every() condition.

    The platform's automation sensor targets AssetSelection.all(), which leaves
    observable source assets out, so the sources get a sensor of their own (no
    asset is evaluated by both).
    """
    return dg.AutomationConditionSensorDefinition(
        observation_sensor_name(source),
        target=dg.AssetSelection.assets(*(table_key(source, t, "source") for t in source.tables)),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
        description=f"Observes the source tables of {source.name} on the first start and every 15 minutes.",
    )


def build_source_defs(source: SourceSystem) -> dg.Definitions:
    assets: list = []
    for table in source.tables:
        assets.extend(build_table_assets(source, table))
    assets.extend(build_view_asset(source, view) for view in source.views)
    return dg.Definitions(
        assets=assets,
        sensors=[build_observation_sensor(source)],
        resources={source_resource_key(source): sql_source(source.url_env, source.local_url)},
    )
