"""`reports/report_snapshot`: one dynamic partition per snapshot; a run renders its batch of them.

The run is the seed's render worker. For each snapshot of its batch (its partitions, then the
others its config names: assets/reports/runs.py) it claims the snapshot in DynamoDB (a lease,
renewed while it renders), runs the report's query on the warehouse, renders the formats, writes
them to the lake's snapshots area, marks the snapshot READY and records the materialization of its
partition. A snapshot another run holds, or one already READY, is left alone (nothing is
materialized for it); a failed render goes back to REQUESTED with a backoff (the sweep sensor
retries it) until the attempts run out, then stays FAILED with its reason. One snapshot's failure
does not stop the others of the batch; the run fails at the end, naming each.
"""

import json
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from assets.reports.partitions import DOMAIN, POOL, SNAPSHOT, SNAPSHOTS
from assets.reports.runs import SnapshotBatch, batch_of
from assets.reports.versions import upstream_versions
from resources import settings
from resources.aws import AwsClients
from resources.lake import LakeStorage
from resources.lake.paths import snapshot_prefix
from resources.warehouse import Warehouse
from services.snapshots.catalog import Report, validate_params
from services.snapshots.render import render
from services.snapshots.store import LeaseLost, SnapshotStore


class SnapshotFailed(Exception):
    """One snapshot of the batch was not rendered; the message says why and what state it is in."""


@contextmanager
def lease_kept(
    store: SnapshotStore, snapshot_id: str, owner: str, lease_seconds: float
) -> Iterator[threading.Event]:
    """Renew the lease every third of it while the body runs; the event is set if it was lost."""
    stop, lost = threading.Event(), threading.Event()

    def renew() -> None:
        while not stop.wait(lease_seconds / 3):
            if not store.renew(snapshot_id, owner, lease_seconds):
                lost.set()
                return

    thread = threading.Thread(target=renew, name=f"lease-{snapshot_id}", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join()


def render_snapshot(
    context: dg.AssetExecutionContext,
    store: SnapshotStore,
    snapshot_id: str,
    reports: Mapping[str, Report],
    reads: Mapping[str, Sequence[str]],
    lake: LakeStorage,
    warehouse: Warehouse,
) -> dict[str, Any] | None:
    """Claim, render and complete one snapshot: its materialization's metadata, or None when this
    run leaves it alone (READY, FAILED or held by a live run). Raises SnapshotFailed."""
    owner = context.run.run_id
    lease, max_attempts = settings.snapshot_lease_seconds(), settings.snapshot_max_attempts()
    claim = store.claim(snapshot_id, owner, lease, max_attempts=max_attempts)
    if not claim.won:
        if claim.reason == "missing":
            raise SnapshotFailed(f"no snapshot {snapshot_id} in {store.table_name}: it was never requested")
        context.log.info(f"{snapshot_id}: not rendered by this run ({claim.reason})")
        return None
    snap = claim.snapshot
    assert snap is not None
    context.log.info(
        f"{snapshot_id}: attempt {snap.attempts} of {max_attempts} ({claim.reason}), lease {lease:.0f} s"
    )
    work = Path(tempfile.mkdtemp(prefix=f"{snapshot_id}-", dir=lake.scratch_dir()))
    try:
        with lease_kept(store, snapshot_id, owner, lease) as lost:
            try:
                report = reports.get(snap.report_id)
                if report is None:
                    raise ValueError(f"report {snap.report_id!r} is not in this code location's catalog")
                # The id names the versions seen when the request was recorded; the query reads the
                # tables as they are now, so the versions at render time are recorded beside them.
                rendered_over = upstream_versions(context.instance, reads.get(report.id, []))
                result = render(report, validate_params(report, snap.params), warehouse, work)
                prefix = snapshot_prefix(report.id, snapshot_id)
                files = {}
                for fmt, path in result.files.items():
                    lake.put_bytes(prefix + path.name, path.read_bytes())
                    files[fmt] = lake.uri(prefix + path.name)
            except Exception as exc:  # recorded with its reason, retried by the sweep, then FAILED
                error = f"{type(exc).__name__}: {exc}"
                try:
                    state = store.fail(
                        snapshot_id,
                        owner,
                        error,
                        max_attempts=max_attempts,
                        backoff_base_seconds=settings.snapshot_backoff_seconds(),
                    )
                except LeaseLost:
                    state = "lease lost to another run"
                raise SnapshotFailed(
                    f"{snapshot_id}: attempt {snap.attempts} of {max_attempts} failed, now {state}: {error}"
                ) from exc
            if lost.is_set():
                context.log.warning(f"{snapshot_id}: the lease was lost while rendering")
            seconds = result.query_seconds + result.render_seconds
            done = store.complete(
                snapshot_id, owner, lake.uri(prefix), files, result.checksum, result.rows, seconds
            )
    except LeaseLost as exc:
        raise SnapshotFailed(f"{snapshot_id}: another run took the snapshot over ({exc})") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "snapshot_id": snapshot_id,
        "report": report.id,
        "state": done.state,
        "attempt": done.attempts,
        "params": dg.MetadataValue.json(snap.params),
        "data_versions": dg.MetadataValue.json(snap.data_versions),
        "data_versions_at_render": dg.MetadataValue.json(rendered_over),
        "data_changed_since_request": rendered_over != snap.data_versions,
        "rows": result.rows,
        "checksum": result.checksum,
        "query_seconds": round(result.query_seconds, 3),
        "render_seconds": round(result.render_seconds, 3),
        "path": dg.MetadataValue.path(lake.uri(prefix)),
        **{f"{fmt}_file": dg.MetadataValue.path(uri) for fmt, uri in files.items()},
        "sql": dg.MetadataValue.md(f"```sql\n{result.sql}\n```"),
        "columns": json.dumps(result.columns),
    }


def build_snapshot_asset(
    reports: dict[str, Report], reads: Mapping[str, Sequence[str]], upstream: Sequence[dg.AssetDep]
) -> dg.AssetsDefinition:
    @dg.asset(
        key=SNAPSHOT,
        partitions_def=SNAPSHOTS,
        # A backfill of many snapshots from the UI is one run (one process start), like the sensors'.
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=list(upstream),
        pool=POOL,
        output_required=False,
        group_name=DOMAIN,
        owners=[f"team:{DOMAIN}"],
        tags={"domain": DOMAIN},
        kinds={"vega-lite", "png", "pdf", "csv"},
        description=(
            "One rendered report snapshot per partition (the snapshot id: report, parameters and"
            " the versions of the data it reads). Partitions are added by the report_requests"
            " sensor, which gives a burst of them to a few runs; state is kept in DynamoDB; files"
            " go to snapshots/<report>/<snapshot>/."
        ),
    )
    def report_snapshot(
        context: dg.AssetExecutionContext,
        config: SnapshotBatch,
        aws: AwsClients,
        lake: LakeStorage,
        warehouse: Warehouse,
    ) -> Iterator[dg.AssetMaterialization]:
        store = SnapshotStore.from_resources(aws)
        store.ensure_table()
        batch = batch_of(context.partition_keys, config)
        failed: list[str] = []
        rendered = 0
        for snapshot_id in batch:
            try:
                metadata = render_snapshot(context, store, snapshot_id, reports, reads, lake, warehouse)
            except SnapshotFailed as exc:
                context.log.error(str(exc))
                failed.append(str(exc))
                continue
            if metadata is not None:
                rendered += 1
                # Each partition's own materialization, whichever of the run's snapshots it is.
                yield dg.AssetMaterialization(asset_key=SNAPSHOT, partition=snapshot_id, metadata=metadata)
        context.log.info(f"{rendered} of {len(batch)} snapshots rendered, {len(failed)} failed")
        if failed:
            raise dg.Failure(
                description=f"{len(failed)} of {len(batch)} snapshots failed: " + "; ".join(failed),
                metadata={
                    "failed": len(failed),
                    "rendered": rendered,
                    "errors": dg.MetadataValue.json(failed),
                },
            )

    return report_snapshot
