"""The CDC domain's reports: quarantined files per cause, and the seed's table-status dashboard."""

import html
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from assets.cdc.checks import RECONCILE_CHECK
from assets.cdc.factory import DOMAIN, current_key
from assets.cdc.mapping import CdcMapping, CdcTable
from assets.shared.conventions import domain_asset_args
from resources.lake import LakeStorage, Tier
from resources.lake.paths import object_key
from resources.warehouse import Warehouse

REFRESH_CRON = "* * * * *"  # lag and "rows in the last hour" move with the clock, not only with loads
STATUS_PAGE = object_key(Tier.CURATED, DOMAIN, "table_status", "index.html")


def _refresh() -> dg.AutomationCondition:
    return (
        dg.AutomationCondition.cron_tick_passed(REFRESH_CRON) & ~dg.AutomationCondition.in_progress()
    ).with_label(f"on {REFRESH_CRON}")


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _troubled(row: dict[str, Any]) -> bool:
    return bool(row.get("blocked") or row.get("quarantined")) or row.get("consistency") not in (
        None,
        "",
        "100.000%",
    )


def _html(rows: list[dict[str, Any]], columns: list[str], generated: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr class='{}'>{}</tr>".format(
            "bad" if _troubled(r) else "",
            "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns),
        )
        for r in rows
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>CDC table status</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f0f0f0}"
        "tr.bad td{background:#fde8e8}</style></head><body><h1>CDC table status</h1>"
        f"<p>Generated {html.escape(generated)}</p><table><tr>{head}</tr>{body}</table></body></html>"
    )


def _reconciliation(instance: dg.DagsterInstance, table: CdcTable) -> str:
    """The latest reconciliation's consistency, from the instance's check evaluations."""
    key = dg.AssetCheckKey(current_key(table), RECONCILE_CHECK)
    try:
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
    except Exception:
        return ""
    evaluation = getattr(record, "evaluation", None) if record else None
    # A check that is running has a planned event, without metadata, as its latest.
    if evaluation is None or not hasattr(evaluation, "metadata"):
        return ""
    value = evaluation.metadata.get("consistency")
    return str(getattr(value, "value", value)) if value is not None else ""


def build_dashboard_assets(mapping: CdcMapping) -> list[dg.AssetsDefinition]:
    tables = mapping.enabled
    currents = [current_key(t) for t in tables]

    @dg.asset(
        key=["cdc", "quarantined_files"],
        deps=currents,
        description="Change files that could not load, per table and cause"
        " (`dp cdc replay` loads them after a fix).",
        automation_condition=_refresh(),
        kinds={"duckdb"},
        **domain_asset_args(DOMAIN),
    )
    def quarantined_files(warehouse: Warehouse) -> dg.MaterializeResult:
        from assets.cdc.apply import quarantine_counts

        rows = quarantine_counts(warehouse)
        per_cause: dict[str, int] = {}
        for r in rows:
            per_cause[r["cause"]] = per_cause.get(r["cause"], 0) + int(r["files"])
        return dg.MaterializeResult(
            metadata={
                "quarantined_files": sum(per_cause.values()),
                "per_cause": dg.MetadataValue.json(per_cause),
                "per_table": dg.MetadataValue.md(
                    _markdown(rows, ["target", "cause", "files"]) if rows else "none"
                ),
            }
        )

    @dg.asset(
        key=["cdc", "table_status"],
        deps=[*currents, quarantined_files.key],
        description="Per table: last change loaded, lag, changes in the last hour and day, quarantined"
        " files, block and reconciliation; a Markdown table here and an HTML page in the lake.",
        automation_condition=_refresh(),
        kinds={"html"},
        **domain_asset_args(DOMAIN),
    )
    def table_status(
        context: AssetExecutionContext, lake: LakeStorage, warehouse: Warehouse
    ) -> dg.MaterializeResult:
        from assets.cdc.apply import table_stats

        now = datetime.now(UTC)
        rows = []
        for table in tables:
            stats = table_stats(warehouse, table)
            last = stats.get("last_commit_ts")
            applied = stats.get("last_applied_at")
            lag = None
            if last is not None and applied is not None:
                lag = round((_utc(applied) - _utc(last)).total_seconds(), 1)
            rows.append(
                {
                    "table": f"{table.cluster.name}.{table.name}",
                    "source": f"{table.database}.{table.table}",
                    "last_change": _utc(last).isoformat(timespec="seconds") if last else "never",
                    "lag_s": lag if lag is not None else "",
                    "since_last_change_s": round((now - _utc(last)).total_seconds()) if last else "",
                    "changes_1h": stats.get("rows_last_hour", 0),
                    "changes_24h": stats.get("rows_last_day", 0),
                    "quarantined": stats.get("quarantined", 0),
                    "blocked": stats.get("blocked") or "",
                    "consistency": _reconciliation(context.instance, table),
                }
            )
        columns = list(rows[0]) if rows else ["table"]
        page = _html(rows, columns, now.isoformat(timespec="seconds"))
        lake.put_bytes(STATUS_PAGE, page.encode())
        uri = lake.uri(STATUS_PAGE)
        return dg.MaterializeResult(
            metadata={
                "status": dg.MetadataValue.md(_markdown(rows, columns)),
                "page": dg.MetadataValue.url(uri if "://" in uri else f"file://{uri}"),
                "tables": len(rows),
                "blocked_tables": sum(1 for r in rows if r["blocked"]),
                "quarantined_files": sum(int(r["quarantined"] or 0) for r in rows),
            }
        )

    return [quarantined_files, table_status]


def _utc(value: Any) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
