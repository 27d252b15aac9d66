"""Per table, the reconciliation check: the source against the current-state table."""

from typing import Any

import dagster as dg
from dagster import AssetCheckExecutionContext

from assets.cdc.factory import current_key
from assets.cdc.mapping import CdcTable

RECONCILE_CHECK = "reconciles_with_source"
RECONCILE_CRON = "*/10 * * * *"


def _every(cron: str) -> Any:
    # Typed Any: the condition is generic, and Dagster's stubs type it for asset keys only.
    return (dg.AutomationCondition.cron_tick_passed(cron) & ~dg.AutomationCondition.in_progress()).with_label(
        f"on {cron}"
    )


def reconcile_check(table: CdcTable) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=current_key(table),
        name=RECONCILE_CHECK,
        description=(
            f"{table.cluster.name}:{table.database}.{table.table} against {table.current_table}:"
            " row counts, an order-independent checksum over primary keys and row hashes, and the"
            " consistency ratio (rows equal / keys on either side), read from the source in one"
            " consistent-snapshot query."
        ),
        required_resource_keys={"lake", "warehouse"},
        automation_condition=_every(RECONCILE_CRON),
    )
    def _check(context: AssetCheckExecutionContext) -> dg.AssetCheckResult:
        from assets.cdc.reconcile import reconcile

        result = reconcile(context.resources.lake, context.resources.warehouse, table)
        return dg.AssetCheckResult(
            passed=result.ratio == 1.0 and result.source_checksum == result.current_checksum,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"consistency {result.ratio * 100:.3f}% ({result.matching} of"
            f" {result.matching + result.differing + result.missing + result.extra} keys equal)",
            metadata=result.metadata(),
        )

    return _check
