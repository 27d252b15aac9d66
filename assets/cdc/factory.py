"""Per mapped table, the CDC assets: change files landed, the change history and the current state.

One small factory over the mapping file, so a table added there gets its
assets, its check and its loads with no code:

    cdc/<cluster>/<name>/landed    change files in the landing tier (daily; recorded by the sensors)
    cdc/<cluster>/<name>/history   every change with op, commit time, binlog position and file (opt-in)
    cdc/<cluster>/<name>/current   the latest row per primary key, deletes applied

History and current are one step: both are written in one warehouse
transaction with the file ledger, so a file is in both or in neither.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from assets.cdc.mapping import CdcTable
from assets.shared.conventions import PARTITIONS_START, domain_asset_args
from assets.shared.load_status import record_status
from resources.lake.paths import dms_prefix

DOMAIN = "cdc"
SCHEMA_CHECK = "schema_compatible"

# Sized to the latency target (seconds from commit to current state): a table that has
# taken no change for a while is not late, so the windows are generous beside the 30 s p95.
FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(minutes=15), warn_window=timedelta(minutes=2)
)
# end_offset=1: today's partition exists while files land in it.
DAILY = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1)


def landed_key(table: CdcTable) -> dg.AssetKey:
    return dg.AssetKey([*table.asset_prefix, "landed"])


def current_key(table: CdcTable) -> dg.AssetKey:
    return dg.AssetKey([*table.asset_prefix, "current"])


def history_key(table: CdcTable) -> dg.AssetKey:
    return dg.AssetKey([*table.asset_prefix, "history"])


def load_keys(table: CdcTable) -> list[dg.AssetKey]:
    """The keys one load step materializes (a run must select all of them)."""
    return [current_key(table), *([history_key(table)] if table.history else [])]


def _source(table: CdcTable) -> str:
    return f"{table.cluster.name}:{table.database}.{table.table}"


def _lag_seconds(last_commit: Any) -> float | None:
    """Seconds from the last applied change's commit to now (its commit-to-current latency)."""
    if last_commit is None:
        return None
    if last_commit.tzinfo is None:
        last_commit = last_commit.replace(tzinfo=UTC)
    return round((datetime.now(UTC) - last_commit).total_seconds(), 1)


def landed_spec(table: CdcTable) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=landed_key(table),
        description=(
            f"DMS-format change files of {_source(table)} in the landing tier"
            f" ({dms_prefix(table.cluster.name, table.database, table.table)}), recorded as they land."
        ),
        partitions_def=DAILY,
        kinds={"parquet"},
        metadata={"source": _source(table), "mapping": str(table.source_file.name)},
        **domain_asset_args(DOMAIN),
    )


def load_asset(table: CdcTable) -> dg.AssetsDefinition:
    specs = [
        dg.AssetSpec(
            key=current_key(table),
            deps=[landed_key(table)],
            description=f"{_source(table)} as it is now: the latest row per primary key, deletes applied.",
            kinds={"duckdb"},
            metadata={"table": table.current_table, "primary_key": ", ".join(table.primary_key)},
            freshness_policy=FRESHNESS,
            skippable=True,
            **domain_asset_args(DOMAIN),
        )
    ]
    if table.history:
        specs.append(
            dg.AssetSpec(
                key=history_key(table),
                deps=[landed_key(table)],
                description=f"Every change of {_source(table)} once: op, commit time, binlog position, file.",
                kinds={"duckdb"},
                metadata={"table": table.history_table},
                freshness_policy=FRESHNESS,
                skippable=True,
                **domain_asset_args(DOMAIN),
            )
        )

    @dg.multi_asset(
        name="load_" + "__".join(table.asset_prefix),
        specs=specs,
        check_specs=[
            dg.AssetCheckSpec(
                SCHEMA_CHECK,
                asset=current_key(table),
                blocking=True,
                description="The change files' columns still fit the tables (a dropped or retyped"
                " source column stops this table's loads until `dp cdc accept-schema`).",
            )
        ],
        required_resource_keys={"lake", "warehouse", "aws"},
        can_subset=False,
        op_tags={"domain": DOMAIN},
    )
    def _load(context) -> Any:  # an AssetExecutionContext (a string annotation confuses multi_asset)
        from assets.cdc.apply import apply_pending
        from resources.alerts import publish_alert

        lake, warehouse, aws = context.resources.lake, context.resources.warehouse, context.resources.aws
        started = time.monotonic()
        try:
            result = apply_pending(lake, warehouse, table, run_id=context.run_id)
        except Exception as exc:
            record_status(
                warehouse, domain=DOMAIN, dataset=table.target, stage="load", partition="all",
                outcome="failed", rows=0, duration_s=time.monotonic() - started, error=exc,
                run_id=context.run_id,
            )  # fmt: skip
            publish_alert(
                aws, f"CDC load failed: {table.target}", f"{table.target}: {type(exc).__name__}: {exc}"
            )
            raise
        for key, cause, reason in result.quarantined:
            publish_alert(
                aws,
                f"CDC file quarantined: {table.target}",
                f"{table.target}: {key} quarantined ({cause}): {reason}",
            )
        changes = sum(result.changes.values())
        record_status(
            warehouse, domain=DOMAIN, dataset=table.target, stage="load", partition="all",
            outcome="check_failed" if result.blocked else "loaded", rows=changes,
            duration_s=time.monotonic() - started, error=result.blocked, run_id=context.run_id,
        )  # fmt: skip
        if result.blocked:
            publish_alert(aws, f"CDC table blocked: {table.target}", f"{table.target}: {result.blocked}")
            yield dg.AssetCheckResult(
                check_name=SCHEMA_CHECK,
                asset_key=current_key(table),
                passed=False,
                severity=dg.AssetCheckSeverity.ERROR,
                description=result.blocked,
                metadata={"reason": result.blocked},
            )
            return
        yield dg.AssetCheckResult(
            check_name=SCHEMA_CHECK,
            asset_key=current_key(table),
            passed=True,
            metadata={"columns_added": dg.MetadataValue.json(list(result.columns_added))},
        )
        if not result.files_applied:
            context.log.info(
                f"{table.target}: nothing new to apply ({result.files_skipped} files already applied)"
            )
            return
        common: dict[str, Any] = {
            "files_applied": result.files_applied,
            "inserts": result.changes.get("I", 0),
            "updates": result.changes.get("U", 0),
            "deletes": result.changes.get("D", 0),
            "duplicates_dropped": result.duplicates_dropped,
            "quarantined_files": len(result.quarantined),
            "last_commit_ts": str(result.last_commit_ts),
            "lag_seconds": _lag_seconds(result.last_commit_ts),
            "max_change_seq": str(result.max_seq),
            "apply_seconds": round(result.seconds, 3),
        }
        yield dg.MaterializeResult(
            asset_key=current_key(table), metadata={**common, "table": table.current_table}
        )
        if table.history:
            yield dg.MaterializeResult(
                asset_key=history_key(table),
                metadata={**common, "rows_appended": result.history_rows, "table": table.history_table},
            )

    return _load
