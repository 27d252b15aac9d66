"""The CDC sensors: S3 events on SQS (the main trigger) and a listing of landing/cdc/ (the backstop).

Both know a change file by its identity (key and ETag) and claim it in the
file ledger, so a re-delivered event or a re-listed file is requested once.
All tables with new files in one tick load in one run: the one load step of
every table, draining (assets.cdc.factory). A tick also records each table's newly landed files as
a materialization of its `landed` asset (per day). An event for a file no
mapping names is left on the queue, so the redrive policy moves it to the
dead-letter queue and the mistake stays visible.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from assets.cdc.factory import DAILY, DRAIN, LOAD_OP, SCHEMA_CHECK, current_key, landed_key, load_keys
from assets.cdc.mapping import CdcMapping, CdcTable
from assets.shared.routes import Arrival
from assets.shared.s3_events import S3Event, parse_message
from assets.shared.sensors import Plan, plan_runs
from assets.shared.sqs_sensor import Handled, Received, sqs_sensor
from resources import settings
from resources.lake import ListingCursor
from resources.lake.paths import LakePathError, dms_prefix, is_hidden, parse_dms_key
from resources.ledger import FileLedger, FileRef

LISTING_INTERVAL = 5  # seconds between listings; the daemon's own loop adds 0-5 s
EVENTS_INTERVAL = 2
RECONCILE_EVERY = 300  # a whole listing (not only new objects) this often
CDC_PREFIX = dms_prefix("x")[: -len("x/")]  # landing/cdc/


def attach_to_queued(
    context: dg.SensorEvaluationContext, ledger: FileLedger, sensor: str, arrivals: Sequence[Arrival]
) -> tuple[list[Arrival], set[tuple[str, str]], list[Arrival]]:
    """Give new files to a CDC run that is queued and not started yet, when it loads their table.

    Such a run's steps list their tables' pending files when they start, which is after this
    tick, so it applies these files too: a second run would start a process (seconds of CPU
    on two cores) only to find them applied. Returns (arrivals left for new runs, the
    (target, identity) pairs now settled, the arrivals attached).
    """
    queued = context.instance.get_run_records(
        dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED], tags={"domain": "cdc"}
        ),
        limit=20,
    )
    takes: dict[str, str] = {}  # target -> run key of a queued run selecting it
    for record in queued:
        run = record.dagster_run
        run_key = run.tags.get("dagster/run_key")
        for key in run.asset_selection or []:
            if run_key and key.path[-1] == "current":
                takes.setdefault(key.to_user_string(), run_key)
    if not takes:
        return list(arrivals), set(), []
    left: list[Arrival] = []
    settled: set[tuple[str, str]] = set()
    attached: list[Arrival] = []
    by_target: dict[str, list[Arrival]] = defaultdict(list)
    for arrival in arrivals:
        target = arrival.target.to_user_string()
        (by_target[target] if target in takes else left).append(arrival)
    for target, items in by_target.items():
        unclaimed, held = ledger.claim(target, [(a.ref, None) for a in items])
        fresh = {ref.identity for ref, _ in unclaimed}
        got = set(
            ledger.hold(
                target, [(a.ref, None, takes[target]) for a in items if a.ref.identity in fresh], sensor
            )
        )
        for arrival in items:
            identity = arrival.ref.identity
            if identity in got:
                attached.append(arrival)
                settled.add((target, identity))
            elif identity not in fresh and identity not in held:
                settled.add((target, identity))  # already applied
            else:
                left.append(arrival)  # claimed elsewhere: plan_runs settles or re-requests it
    return left, settled, attached


class CdcRouter:
    """Which table's load a landing key feeds."""

    def __init__(self, mapping: CdcMapping):
        self.mapping = mapping
        self.by_target = {t.target: t for t in mapping.enabled}

    def arrival(self, key: str, etag: str) -> tuple[Arrival | None, str | None]:
        """(arrival, None) for a mapped table's change file, else (None, why not)."""
        try:
            dms = parse_dms_key(key)
        except LakePathError as exc:
            return None, str(exc)
        table = self.mapping.by_source(dms.cluster, dms.schema, dms.table)
        if table is None:
            return None, f"{key}: {dms.cluster}:{dms.schema}.{dms.table} is not in the CDC mapping"
        return Arrival(current_key(table), FileRef(key, etag), None, None), None

    def table(self, arrival: Arrival) -> CdcTable:
        return self.by_target[arrival.target.to_user_string()]

    def requests(self, plan: Plan) -> list[dg.RunRequest]:
        """The plan's run requests, each a draining load of EVERY mapped table (history with
        current) and only the schema checks: reconciliation runs on its own schedule.

        Every table, not only those with new files: a run keeps applying what lands while it
        drains, and with one CDC load at a time (dagster.yaml) a table left out would wait for
        the drain to end. A table with nothing new costs a listing and one state read a pass."""
        tables = self.mapping.enabled
        return [
            dg.RunRequest(
                run_key=request.run_key,
                asset_selection=[k for t in tables for k in load_keys(t)],
                asset_check_keys=[dg.AssetCheckKey(current_key(t), SCHEMA_CHECK) for t in tables],
                run_config={"ops": {LOAD_OP: {"config": DRAIN}}},
                tags={
                    **request.tags,
                    "domain": "cdc",
                    "cdc/new_files_for": str(len(request.asset_selection or [])),
                },
            )
            for request in plan.run_requests
        ]

    def landed_events(self, claimed: Sequence[Arrival]) -> list[dg.AssetMaterialization]:
        per: dict[tuple[str, str], list[str]] = defaultdict(list)
        for arrival in claimed:
            day = parse_dms_key(arrival.ref.key).day.isoformat()
            per[(arrival.target.to_user_string(), day)].append(arrival.ref.key)
        valid = set(DAILY.get_partition_keys())
        events = []
        for (target, day), keys in sorted(per.items()):
            if day not in valid:
                continue  # a file dated outside the partitions (clock skew): loaded, not recorded
            table = self.by_target[target]
            events.append(
                dg.AssetMaterialization(
                    asset_key=landed_key(table),
                    partition=day,
                    metadata={"files": len(keys), "first_key": min(keys), "last_key": max(keys)},
                )
            )
        return events


def events_sensor(mapping: CdcMapping) -> dg.SensorDefinition:
    router = CdcRouter(mapping)
    name = "cdc_change_events"

    def handle(context: dg.SensorEvaluationContext, received: Sequence[Received[list[S3Event]]]) -> Handled:
        lake, ledger = context.resources.lake, FileLedger(context.resources.warehouse)
        per_message: dict[str, list[Arrival]] = {}
        unrouted: set[str] = set()
        for message in received:
            arrivals = []
            for event in message.parsed:
                if not event.is_created:
                    continue
                key = lake.key_from_notification(event.bucket, event.key)
                if key is None:
                    unrouted.add(message.message_id)
                    context.log.warning(f"{name}: s3://{event.bucket}/{event.key} is not in the lake")
                    continue
                if is_hidden(key) or not key.startswith(CDC_PREFIX):
                    continue  # the lake's other landing objects reach this queue too (SNS fan-out)
                arrival, why = router.arrival(key, event.etag)
                if arrival is None:
                    unrouted.add(message.message_id)
                    context.log.warning(f"{name}: leaving message {message.message_id} for the DLQ: {why}")
                else:
                    arrivals.append(arrival)
            per_message[message.message_id] = arrivals
        every = [a for v in per_message.values() for a in v]
        left, attached_settled, attached = attach_to_queued(context, ledger, name, every)
        plan = plan_runs(context, ledger, name, left)
        plan.settled |= attached_settled
        plan.claimed += attached
        done = {
            mid
            for mid, arrivals in per_message.items()
            if mid not in unrouted
            and all((a.target.to_user_string(), a.ref.identity) in plan.settled for a in arrivals)
        }
        notes = [f"{len(unrouted)} messages name no mapped table; left for the DLQ"] if unrouted else []
        return Handled(
            run_requests=router.requests(plan),
            done=done,
            notes=notes,
            asset_events=router.landed_events(plan.claimed),
        )

    return sqs_sensor(
        name,
        queue_name=settings.cdc_queue_name,
        parse=parse_message,
        handle=handle,
        asset_selection=dg.AssetSelection.assets(*[k for t in mapping.enabled for k in load_keys(t)]),
        required_resource_keys={"lake", "warehouse"},
        max_messages=500,
        visibility_timeout=120,
        minimum_interval_seconds=EVENTS_INTERVAL,
        description="Loads CDC change files announced by S3 event notifications on SQS (the main trigger).",
    )


def listing_sensor(mapping: CdcMapping) -> dg.SensorDefinition:
    router = CdcRouter(mapping)
    name = "cdc_change_listing"
    prefix = CDC_PREFIX
    targets = sorted(router.by_target)

    @dg.sensor(
        name=name,
        description="Lists landing/cdc/ for change files no event announced (the backstop), and re-requests"
        " files whose run never appeared.",
        asset_selection=dg.AssetSelection.assets(*[k for t in mapping.enabled for k in load_keys(t)]),
        minimum_interval_seconds=LISTING_INTERVAL,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={"lake", "warehouse"},
    )
    def _sensor(context: dg.SensorEvaluationContext, **_resources: Any) -> dg.SensorResult:
        lake, ledger = context.resources.lake, FileLedger(context.resources.warehouse)
        state = json.loads(context.cursor) if context.cursor else {}
        cursor = ListingCursor.from_json(state.get("listing"))
        objects, new_cursor = lake.list_new_objects(prefix, cursor, limit=5000)
        now = datetime.now(UTC).timestamp()
        reconciled_at = state.get("reconciled_at")
        if reconciled_at is None or now - reconciled_at >= RECONCILE_EVERY:
            objects, reconciled_at = lake.list_objects(prefix), now
        arrivals, unmapped = [], []
        for obj in objects:
            if obj.key.rsplit("/", 1)[-1].startswith("_"):
                continue
            arrival, why = router.arrival(obj.key, lake.etag(obj))
            if arrival is None:
                unmapped.append(why)
            else:
                arrivals.append(arrival)
        if unmapped:
            context.log.warning(f"{name}: {len(unmapped)} files name no mapped table, e.g. {unmapped[0]}")
        left, _, attached = attach_to_queued(context, ledger, name, arrivals)
        plan = plan_runs(context, ledger, name, left, ledger.open_claims(targets))
        plan.claimed += attached
        requests = router.requests(plan)
        return dg.SensorResult(
            run_requests=requests,
            asset_events=router.landed_events(plan.claimed),
            cursor=json.dumps({"listing": new_cursor.to_json(), "reconciled_at": reconciled_at}),
            skip_reason=None if requests else f"{len(objects)} objects listed: nothing new to load",
        )

    return _sensor
