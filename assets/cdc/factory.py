"""Per mapped table, the CDC assets: change files landed, the change history and the current state.

One small factory over the mapping file, so a table added there gets its
assets, its check and its loads with no code:

    cdc/<cluster>/<name>/landed    change files in the landing tier (daily; recorded by the sensors)
    cdc/<cluster>/<name>/history   every change with op, commit time, binlog position and file (opt-in)
    cdc/<cluster>/<name>/current   the latest row per primary key, deletes applied

Every table's history and current state are written by ONE step (`cdc_load`),
a table at a time, each in one warehouse transaction with the file ledger (a
file is in both tables or in neither), all on one warehouse connection per
pass. A sensor-requested run keeps draining: after a pass it looks again, and
applies what landed meanwhile, until nothing new has come for `idle_seconds`
or it has run `drain_seconds`; each pass records its own materializations.
A run thus costs one process start for many batches of files, which is what
keeps commit-to-current latency at seconds on a small machine (a run process
costs ~5 CPU-s to start, a pass over 20 tables well under one).
"""

import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field

from assets.cdc.mapping import CdcTable
from assets.shared.conventions import PARTITIONS_START, domain_asset_args
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


class LoadConfig(dg.Config):
    """How long a load run keeps draining. The defaults make one pass (a manual materialization,
    a test); the sensors ask for a drain (DRAIN)."""

    drain_seconds: float = Field(0.0, description="Keep applying newly landed files for up to this long.")
    idle_seconds: float = Field(6.0, description="Stop draining after this long without a new file.")
    pause_seconds: float = Field(
        1.0, description="Pause between passes, when the warehouse's lock is free for other runs."
    )


# What the sensors' runs ask for: a run ends when nothing has landed for idle_seconds, or after
# drain_seconds. Under steady traffic each end is a handoff to the queued run, whose process
# start (10-60 s on a saturated two-core machine) the files landing meanwhile wait for; so the
# limit is long, and a mapping or code change reaches a busy load within half an hour.
LOAD_OP = "cdc_load"
DRAIN = {"drain_seconds": 1800.0, "idle_seconds": 8.0, "pause_seconds": 1.0}


def load_specs(tables: Sequence[CdcTable]) -> list[dg.AssetSpec]:
    specs = []
    for table in tables:
        specs.append(
            dg.AssetSpec(
                key=current_key(table),
                deps=[landed_key(table)],
                description=f"{_source(table)} as it is now: the latest row per key, deletes applied.",
                kinds={"duckdb"},
                metadata={"table": table.current_table, "primary_key": ", ".join(table.primary_key)},
                freshness_policy=FRESHNESS,
                skippable=True,
                **domain_asset_args(DOMAIN),
            )
        )
        if table.history:
            specs.append(
                dg.AssetSpec(
                    key=history_key(table),
                    deps=[landed_key(table)],
                    description=f"Every change of {_source(table)} once: op, commit time, binlog"
                    " position, file.",
                    kinds={"duckdb"},
                    metadata={"table": table.history_table},
                    freshness_policy=FRESHNESS,
                    skippable=True,
                    **domain_asset_args(DOMAIN),
                )
            )
    return specs


def load_assets(tables: Sequence[CdcTable]) -> dg.AssetsDefinition:
    """The one load step of every mapped table (subsettable: a run applies the tables it selects)."""
    checks = [
        dg.AssetCheckSpec(
            SCHEMA_CHECK,
            asset=current_key(table),
            blocking=True,
            description="The change files' columns still fit the tables (a dropped or retyped"
            " source column stops this table's loads until `dp cdc accept-schema`).",
        )
        for table in tables
    ]

    @dg.multi_asset(
        name=LOAD_OP,
        specs=load_specs(tables),
        check_specs=checks,
        required_resource_keys={"lake", "warehouse", "aws"},
        can_subset=True,
        op_tags={"domain": DOMAIN},
    )
    def _load(context: dg.AssetExecutionContext, config: LoadConfig) -> Iterator[Any]:
        selected = [t for t in tables if current_key(t) in context.selected_asset_keys]
        yield from _drain(context, selected, config)

    return _load


class _Run:
    """What a load run has done so far, per table."""

    def __init__(self) -> None:
        self.files: dict[str, int] = {}
        self.columns_added: dict[str, list[str]] = {}
        self.blocked: dict[str, str] = {}  # target -> reason, for blocks found by this run
        self.failed: dict[str, str] = {}  # target -> error
        self.alerted: set[tuple[str, str]] = set()
        self.materialized: dict[dg.AssetKey, float] = {}  # key -> when last materialized
        self.pending: dict[dg.AssetKey, dict[str, Any]] = {}  # applied, not yet materialized
        self.loaded_status: dict[str, dict[str, Any]] = {}  # target -> status row not yet written
        self.status_written = time.monotonic()


# Seconds between a key's materializations in a draining run (beside the freshness policy's
# two minutes' warning; what a pass applies is queryable at once, only its event waits).
EVENT_EVERY = 60.0
_SUMMED = ("files_applied", "inserts", "updates", "deletes", "duplicates_dropped", "quarantined_files")


def _sum_metadata(before: dict[str, Any] | None, latest: dict[str, Any]) -> dict[str, Any]:
    """Two passes' metadata as one: counts summed, the rest from the latest pass."""
    if before is None:
        return {**latest, "passes": 1}
    summed = {k: before.get(k, 0) + latest.get(k, 0) for k in (*_SUMMED, "rows_appended") if k in latest}
    return {
        **latest,
        **summed,
        "apply_seconds": round(before["apply_seconds"] + latest["apply_seconds"], 3),
        "passes": before["passes"] + 1,
    }


def _log_pending(context: dg.AssetExecutionContext, run: _Run, *, force: bool) -> None:
    now = time.monotonic()
    for key in list(run.pending):
        if force or now - run.materialized[key] >= EVENT_EVERY:
            context.log_event(dg.AssetMaterialization(key, metadata=run.pending.pop(key)))
            run.materialized[key] = now


def _drain(context: dg.AssetExecutionContext, tables: list[CdcTable], config: LoadConfig) -> Iterator[Any]:
    from assets.cdc import state
    from assets.cdc.apply import apply_tables

    lake, warehouse, aws = context.resources.lake, context.resources.warehouse, context.resources.aws
    started = time.monotonic()
    run = _Run()
    run_started = state.now_utc()
    active = list(tables)
    idle_since, passes = time.monotonic(), 0
    while active:
        passes += 1
        pass_started = time.monotonic()
        results = apply_tables(lake, warehouse, active, run_id=context.run.run_id)
        seconds = time.monotonic() - pass_started
        events: list[tuple[dg.AssetKey, dict[str, Any]]] = []
        applied = _record_pass(context, warehouse, aws, active, results, run, run_started, seconds, events)
        for key, metadata in events:
            # A key's first materialization of the run is its output (steps downstream in the
            # run need it); later passes' are summed and logged at most every EVENT_EVERY seconds:
            # an event costs the run a write to the instance's storage, a pass far less.
            if key not in run.materialized:
                run.materialized[key] = time.monotonic()
                yield dg.MaterializeResult(asset_key=key, metadata=metadata)
            else:
                run.pending[key] = _sum_metadata(run.pending.get(key), metadata)
        _log_pending(context, run, force=False)
        if applied:
            context.log.debug(
                f"cdc_load pass {passes}: {sum(getattr(r, 'files_applied', 0) for r in results.values())}"
                f" files, apply {seconds:.2f} s, recorded {time.monotonic() - pass_started - seconds:.2f} s"
            )
        # A failed table waits for the next run; a newly blocked one ends the drain, so its
        # failed check is reported now rather than at the drain's end.
        active = [t for t in active if t.target not in run.failed and t.target not in run.blocked]
        now = time.monotonic()
        if applied:
            idle_since = now
        if run.blocked or now - started >= config.drain_seconds or now - idle_since >= config.idle_seconds:
            break
        time.sleep(config.pause_seconds)
    _log_pending(context, run, force=True)
    if run.loaded_status:
        from assets.shared.load_status import record_statuses

        record_statuses(warehouse, list(run.loaded_status.values()))
    context.log.info(
        f"cdc_load: {passes} passes in {time.monotonic() - started:.1f} s,"
        f" {sum(run.files.values())} files applied over {len(run.files)} tables"
    )
    selected_checks = context.selected_asset_check_keys
    for table in tables:
        if dg.AssetCheckKey(current_key(table), SCHEMA_CHECK) not in selected_checks:
            continue
        if table.target in run.blocked:
            yield dg.AssetCheckResult(
                check_name=SCHEMA_CHECK,
                asset_key=current_key(table),
                passed=False,
                severity=dg.AssetCheckSeverity.ERROR,
                description=run.blocked[table.target],
                metadata={"reason": run.blocked[table.target]},
            )
        elif run.files.get(table.target):
            yield dg.AssetCheckResult(
                check_name=SCHEMA_CHECK,
                asset_key=current_key(table),
                passed=True,
                metadata={"columns_added": dg.MetadataValue.json(run.columns_added.get(table.target, []))},
            )
    if run.failed:
        detail = "; ".join(f"{target}: {error}" for target, error in sorted(run.failed.items()))
        raise dg.Failure(
            description=f"CDC load failed for {len(run.failed)} of {len(tables)} tables"
            f" ({len(tables) - len(run.failed)} loaded): {detail}",
            metadata={"failed_tables": dg.MetadataValue.json(sorted(run.failed))},
        )


def _record_pass(
    context: dg.AssetExecutionContext,
    warehouse: Any,
    aws: Any,
    tables: list[CdcTable],
    results: dict[str, Any],
    run: _Run,
    run_started: datetime,
    seconds: float,
    events: list[tuple[dg.AssetKey, dict[str, Any]]],
) -> bool:
    """Status rows and alerts of one pass, its materializations added to `events`; True when
    it applied a file."""
    from assets.cdc import state
    from assets.shared.load_status import record_statuses, status_row
    from resources.alerts import publish_alert

    def alert(target: str, what: str, subject: str, message: str) -> None:
        if (target, what) not in run.alerted:  # once a run, not once a pass
            run.alerted.add((target, what))
            publish_alert(aws, subject, message)

    statuses, applied, run_id = [], False, context.run.run_id
    for table in tables:
        target, result = table.target, results[table.target]
        status = {"domain": DOMAIN, "dataset": target, "stage": "load", "partition": "all", "run_id": run_id}
        if isinstance(result, Exception):
            run.failed[target] = f"{type(result).__name__}: {result}"
            run.loaded_status.pop(target, None)  # an earlier pass's "loaded" must not overwrite it
            statuses.append(status_row(**status, outcome="failed", rows=0, duration_s=seconds, error=result))
            alert(target, "failed", f"CDC load failed: {target}", f"{target}: {run.failed[target]}")
            continue
        for key, cause, reason in result.quarantined:
            publish_alert(
                aws, f"CDC file quarantined: {target}", f"{target}: {key} quarantined ({cause}): {reason}"
            )
        if result.blocked:
            block = state.active_block(warehouse, target)
            # Reported (failed check, alert, status) by the run that meets the block first; later
            # runs find the table refused by the loader itself, so nothing of it is published.
            if block is None or block["since"] >= run_started:
                run.blocked[target] = result.blocked
                statuses.append(
                    status_row(**status, outcome="check_failed", rows=result.rows, duration_s=seconds,
                               error=result.blocked)
                )  # fmt: skip
                alert(target, "blocked", f"CDC table blocked: {target}", f"{target}: {result.blocked}")
        if not result.files_applied:
            continue
        applied = True
        run.files[target] = run.files.get(target, 0) + result.files_applied
        run.columns_added.setdefault(target, []).extend(result.columns_added)
        if not result.blocked:
            before = run.loaded_status.get(target)
            run.loaded_status[target] = status_row(
                **status,
                outcome="loaded",
                rows=result.rows + (before["rows"] if before else 0),
                duration_s=result.seconds + (before["duration_s"] if before else 0.0),
            )
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
        events.append((current_key(table), {**common, "table": table.current_table}))
        if table.history:
            events.append(
                (
                    history_key(table),
                    {**common, "rows_appended": result.history_rows, "table": table.history_table},
                )
            )
    # Failures and blocks are written at once; loads with the materializations' cadence (a
    # status write is a warehouse connection of its own, under load a second a pass).
    now = time.monotonic()
    if statuses or now - run.status_written >= EVENT_EVERY:
        statuses += run.loaded_status.values()
        run.loaded_status.clear()
        run.status_written = now
    if statuses:
        record_statuses(warehouse, statuses)
    return applied
