"""The sensors that feed report_snapshot.

- `report_requests` (on the generic SQS sensor): each request message is parsed and checked
  against the catalog, its snapshot id computed from the data versions of what the report reads,
  and the request recorded in DynamoDB. A new snapshot gets its dynamic partition and a run; a
  READY one is answered by reuse; a request that cannot be used gets a FAILED request item that
  says why. The message is deleted once DynamoDB holds the request: from then on the store, not
  the queue, remembers the work (a run request lost with the daemon is made again by the sweep).
- `report_snapshot_sweep`: asks for a run for every snapshot the store lists as due (a retry past
  its backoff, a lease that expired because its run died, a request whose first run never came)
  and that has no run queued or in progress.
"""

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg

from assets.reports.partitions import SNAPSHOT, SNAPSHOTS
from assets.reports.runs import SNAPSHOT_TAG_VALUE, Planned, render_runs, snapshot_tag
from assets.reports.versions import upstream_versions
from assets.shared.sqs_sensor import Handled, Received, sqs_sensor
from resources import settings
from resources.aws import AwsClients
from services.snapshots.catalog import Report, ReportRequestError, validate_params
from services.snapshots.ids import canonical_params, canonical_versions, snapshot_id
from services.snapshots.messages import RequestError, parse_request
from services.snapshots.store import FAILED, READY, RENDERING, RequestOutcome, SnapshotStore

RECORD_THREADS = 8  # requests of one batch recorded in DynamoDB at once

LIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _body_text(body: str) -> str:
    return body  # every body reaches the handler: a request it cannot use is answered, not left


def plan_request_runs(planned: Sequence[Planned]) -> list[dg.RunRequest]:
    """The new snapshots of a tick (each once, though several batches may have asked) in runs."""
    unique = {p.snapshot_id: p for p in reversed(planned)}  # the first asked wins
    return render_runs(list(unique.values()), settings.snapshot_batch_size(), "request")


def build_request_sensor(
    reports: Mapping[str, Report], reads: Mapping[str, Sequence[str]]
) -> dg.SensorDefinition:
    def handle(context: dg.SensorEvaluationContext, received: Sequence[Received[str]]) -> Handled:
        store = SnapshotStore.from_resources(context.resources.aws)
        store.ensure_table()
        handled, versions_of, asked = Handled(), {}, dict[str, Planned]()
        counts = {"new": 0, "reused": 0, "rejected": 0, "waiting": 0}
        valid: list[tuple[str, str, Report, dict[str, Any], dict[str, str]]] = []
        for message in received:
            try:
                request = parse_request(message.body, message.message_id)
                report = reports.get(request.report_id)
                if report is None:
                    raise ReportRequestError(
                        f"unknown report {request.report_id!r}; known: {sorted(reports)}"
                    )
                params = validate_params(report, request.params)
            except (RequestError, ReportRequestError) as exc:
                request_id = exc.request_id if isinstance(exc, RequestError) else request.request_id
                report_id = exc.report_id if isinstance(exc, RequestError) else request.report_id
                store.reject_request(request_id, report_id, str(exc))
                context.log.warning(f"report request {request_id} refused: {exc}")
                handled.done.add(message.message_id)
                counts["rejected"] += 1
                continue
            if report.id not in versions_of:  # one read of the event log per report and tick
                versions_of[report.id] = upstream_versions(context.instance, reads[report.id])
            valid.append((message.message_id, request.request_id, report, params, versions_of[report.id]))

        def record(item: tuple[str, str, Report, dict[str, Any], dict[str, str]]) -> RequestOutcome:
            _, request_id, report, params, versions = item
            return store.record_request(
                request_id,
                snapshot_id(report.id, params, versions, report.fingerprint),  # as current_snapshot()
                report.id,
                canonical_params(params),
                canonical_versions(versions),
            )

        # The conditional writes run side by side (each request's answer waits for its own two writes,
        # not for the batch's): they stay race-free, as concurrent duplicates in separate ticks are.
        with ThreadPoolExecutor(max(1, min(RECORD_THREADS, len(valid)))) as pool:
            outcomes = list(pool.map(record, valid))
        for (message_id, _, report, _, _), outcome in zip(valid, outcomes, strict=True):
            handled.done.add(message_id)
            target = outcome.snapshot_id
            if outcome.state == READY:
                counts["reused"] += 1
            elif outcome.state in (FAILED, RENDERING) or target is None:
                counts["waiting"] += 1
            elif target not in asked:
                counts["new"] += 1
                attempts = outcome.snapshot.attempts if outcome.snapshot else 0
                asked[target] = Planned(target, report.id, f"{target}:{attempts}")
        if asked:
            handled.dynamic_partitions_requests.append(SNAPSHOTS.build_add_request(sorted(asked)))
            handled.to_plan.extend(asked.values())  # runs planned once the tick's batches are in
        handled.notes.append(", ".join(f"{v} {k}" for k, v in counts.items()))
        return handled

    return sqs_sensor(
        "report_requests",
        queue_name=settings.snapshot_queue_name,
        parse=_body_text,
        handle=handle,
        asset_selection=dg.AssetSelection.assets(SNAPSHOT),
        # Each tick listens on the queue for most of the daemon's 5 s loop (reuse is answered as a
        # request arrives), so the next tick may start as soon as the daemon's loop comes round.
        minimum_interval_seconds=1,
        listen_seconds=settings.snapshot_listen_seconds,
        plan_runs=plan_request_runs,
        description=(
            "Reads report snapshot requests from SQS (PLATFORM_SNAPSHOT_QUEUE), records each in"
            " DynamoDB and adds a partition and a run for each new snapshot; READY ones are"
            " reused at once (each tick long-polls the queue for PLATFORM_SNAPSHOT_LISTEN_SECONDS)."
        ),
    )


def build_sweep_sensor(reads: Mapping[str, Sequence[str]]) -> dg.SensorDefinition:
    published: dict[str, list[str]] = {}  # what this process last wrote to the store, per report

    @dg.sensor(
        name="report_snapshot_sweep",
        asset_selection=dg.AssetSelection.assets(SNAPSHOT),
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Runs snapshots that are due again: retries past their backoff, renders whose run died"
            " (lease expired), requests whose first run never started. Publishes what each report"
            " reads for the HTTP API's reuse path."
        ),
    )
    def report_snapshot_sweep(
        context: dg.SensorEvaluationContext, aws: AwsClients
    ) -> dg.SensorResult | dg.SkipReason:
        store = SnapshotStore.from_resources(aws)
        store.ensure_table()
        for report_id, keys in reads.items():
            if published.get(report_id) != sorted(keys):
                store.put_report_reads(report_id, list(keys))
                published[report_id] = sorted(keys)
        due = store.due()
        if not due:
            return dg.SkipReason("no snapshot is due")
        lost: list[Planned] = []
        for snap in due:
            previous = context.instance.get_run_records(
                dg.RunsFilter(tags={snapshot_tag(snap.snapshot_id): SNAPSHOT_TAG_VALUE}), limit=1000
            )
            if any(r.dagster_run.status in LIVE for r in previous):
                continue  # queued behind the render pool or running: not lost
            # Keyed by the attempts and the runs so far: each sweep of the same state asks once.
            lost.append(
                Planned(
                    snap.snapshot_id, snap.report_id, f"{snap.snapshot_id}:{snap.attempts}:{len(previous)}"
                )
            )
        if not lost:
            return dg.SkipReason(f"{len(due)} due, each with a run queued or in progress")
        return dg.SensorResult(
            run_requests=render_runs(lost, settings.snapshot_batch_size(), "sweep"),
            dynamic_partitions_requests=[SNAPSHOTS.build_add_request(sorted(p.snapshot_id for p in lost))],
        )

    return report_snapshot_sweep
