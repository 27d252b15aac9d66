"""The lake's two sensors, built from the routes, the file ledger and the generic SQS sensor.

* `lake_objects_sensor` lists a lake prefix with a cursor (a local directory,
  or S3 through dagster_aws' get_objects) and, every `reconcile_every_seconds`,
  lists it whole and requests whatever the ledger has neither applied nor
  claimed: the backstop for anything lost upstream of the sensors.
* `s3_event_sensor` reads S3 event notifications from SQS (lake bucket and
  explicitly routed other buckets).

Both know an object by the same identity (key and ETag) and claim it in the
file ledger before asking for a run, so both can run at once and each object
is requested once. A tick asks for one run per partition, holding every asset
that has new objects in it. A claim whose run never appeared (the daemon died
after the tick) is asked for again with the same run key by the sensor that
made it, or taken over by the other after `TAKEOVER_AFTER`.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from assets.shared.routes import Arrival, BucketRoute, LakeRoute, bucket_arrivals, lake_arrivals
from assets.shared.s3_events import S3Event, parse_message
from assets.shared.sqs_sensor import Handled, Received, sqs_sensor
from resources.lake import ListingCursor
from resources.lake.paths import LakePathError, is_hidden, parse_key
from resources.ledger import Claim, FileLedger

RUN_KEY_TAG = "dagster/run_key"
TAKEOVER_AFTER = timedelta(minutes=2)


@dataclass
class Plan:
    run_requests: list[dg.RunRequest] = field(default_factory=list)
    # (target, identity) pairs that need nothing more: applied, or claimed by a run that exists.
    settled: set[tuple[str, str]] = field(default_factory=set)
    new_objects: int = 0
    re_requested: int = 0
    claimed: list[Arrival] = field(default_factory=list)  # arrivals this tick claimed for a new run


def _partitions_id(partitions_def: dg.PartitionsDefinition | None) -> str:
    if partitions_def is None:
        return ""
    unique = getattr(partitions_def, "get_serializable_unique_identifier", None)
    return unique() if unique else repr(partitions_def)


def batch_run_key(partition_key: str | None, items: Sequence[Arrival]) -> str:
    """The same files for the same partition always give the same run key."""
    digest = hashlib.sha1(
        "\n".join(sorted(f"{a.target.to_user_string()}|{a.ref.identity}" for a in items)).encode()
    ).hexdigest()[:16]
    return f"lake:{partition_key or 'all'}:{digest}"


def _request(run_key: str, partition_key: str | None, targets: set[str], keys: list[str], sensor: str) -> Any:
    return dg.RunRequest(
        run_key=run_key,
        partition_key=partition_key,
        asset_selection=[dg.AssetKey.from_user_string(t) for t in sorted(targets)],
        tags={"lake/objects": str(len(keys)), "lake/first_key": min(keys), "lake/sensor": sensor},
    )


def existing_run_keys(instance: dg.DagsterInstance, run_keys: set[str]) -> set[str]:
    """The run keys among run_keys that some run in the instance carries (any sensor)."""
    found: set[str] = set()
    ordered = sorted(run_keys)
    for start in range(0, len(ordered), 200):
        records = instance.get_run_records(dg.RunsFilter(tags={RUN_KEY_TAG: ordered[start : start + 200]}))
        found |= {r.dagster_run.tags.get(RUN_KEY_TAG, "") for r in records}
    return found & run_keys


def plan_runs(
    context: dg.SensorEvaluationContext,
    ledger: FileLedger,
    sensor: str,
    arrivals: Sequence[Arrival],
    open_claims: Sequence[Claim] = (),
    now: datetime | None = None,
) -> Plan:
    """Claim the arrivals nobody has claimed, batch them into one run per partition, and
    re-request claims (the given ones and those met on the way) whose run never appeared."""
    plan = Plan()
    unique = {(a.target.to_user_string(), a.ref.identity): a for a in arrivals}
    by_target: dict[str, list[Arrival]] = defaultdict(list)
    for (target, _), arrival in sorted(unique.items()):
        by_target[target].append(arrival)

    fresh: list[Arrival] = []
    held: dict[tuple[str, str], Claim] = {(c.target, c.identity): c for c in open_claims}
    for target, items in by_target.items():
        unclaimed, existing = ledger.claim(target, [(a.ref, a.partition_key) for a in items])
        unclaimed_ids = {ref.identity for ref, _ in unclaimed}
        for arrival in items:
            identity = arrival.ref.identity
            if identity in unclaimed_ids:
                fresh.append(arrival)
            elif identity in existing:
                held[(target, identity)] = existing[identity]
            else:
                plan.settled.add((target, identity))  # already applied

    batches: dict[tuple[str, str], list[Arrival]] = defaultdict(list)
    for arrival in fresh:
        batches[(arrival.partition_key or "", _partitions_id(arrival.partitions_def))].append(arrival)
    for (partition, _), items in sorted(batches.items()):
        partition_key = partition or None
        run_key = batch_run_key(partition_key, items)
        claimed: list[Arrival] = []
        for target in sorted({a.target.to_user_string() for a in items}):
            mine = [a for a in items if a.target.to_user_string() == target]
            ids = set(ledger.hold(target, [(a.ref, partition_key, run_key) for a in mine], sensor))
            claimed += [a for a in mine if a.ref.identity in ids]
        if claimed:
            targets = {a.target.to_user_string() for a in claimed}
            plan.run_requests.append(
                _request(run_key, partition_key, targets, [a.ref.key for a in claimed], sensor)
            )
            plan.new_objects += len({a.ref.identity for a in claimed})
            plan.claimed += claimed

    if held:
        runs = existing_run_keys(context.instance, {c.run_key for c in held.values()})
        now = now or datetime.now(UTC).replace(tzinfo=None)
        lost: dict[str, list[Claim]] = defaultdict(list)
        for key, claim in held.items():
            if claim.run_key in runs:
                plan.settled.add(key)
            elif claim.sensor == sensor:
                lost[claim.run_key].append(claim)
            elif now - claim.claimed_at > TAKEOVER_AFTER:
                context.log.warning(
                    f"{sensor}: run {claim.run_key} of {claim.sensor} never appeared;"
                    f" taking over {claim.object_key}"
                )
                lost[f"{claim.run_key}~{sensor}"].append(claim)
        for run_key, claims in sorted(lost.items()):
            taken = [c for c in claims if c.sensor != sensor or c.run_key != run_key]
            ledger.take_over(taken, run_key, sensor)
            plan.run_requests.append(
                _request(
                    run_key,
                    claims[0].partition_key,
                    {c.target for c in claims},
                    [c.object_key for c in claims],
                    sensor,
                )
            )
            plan.re_requested += len(claims)
    return plan


def _lake_arrivals(context: Any, lake: Any, objects: Sequence[Any], routes: list[LakeRoute]) -> list[Arrival]:
    arrivals: list[Arrival] = []
    for obj in objects:
        try:
            parsed = parse_key(obj.key)
            if any(route.matches(parsed) for route in routes):  # an ETag may read the whole file
                arrivals += lake_arrivals(obj.key, lake.etag(obj), routes)
        except LakePathError as exc:
            context.log.warning(f"skipping {obj.key}: {exc}")
    return arrivals


def lake_objects_sensor(
    name: str,
    routes: Sequence[LakeRoute],
    *,
    prefix: str | None = None,
    max_objects_per_tick: int = 1000,
    reconcile_every_seconds: int = 600,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    description: str | None = None,
) -> dg.SensorDefinition:
    """Requests runs for objects that appeared under `prefix` (default: the one route's prefix)."""
    if prefix is None:
        if len(routes) != 1:
            raise ValueError(f"sensor {name}: give a prefix when there is more than one route")
        prefix = routes[0].prefix
    listing_prefix, route_list = prefix, list(routes)
    targets = sorted({r.asset.to_user_string() for r in route_list})

    @dg.sensor(
        name=name,
        description=description or f"Runs the assets fed by new lake objects under {listing_prefix}.",
        asset_selection=dg.AssetSelection.assets(*{r.asset for r in route_list}),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={"lake", "warehouse"},
    )
    def _sensor(context: dg.SensorEvaluationContext, **_resources: Any) -> dg.SensorResult:
        lake, ledger = context.resources.lake, FileLedger(context.resources.warehouse)
        state = json.loads(context.cursor) if context.cursor else {}
        cursor = ListingCursor.from_json(state.get("listing"))
        objects, new_cursor = lake.list_new_objects(listing_prefix, cursor, limit=max_objects_per_tick)
        now = datetime.now(UTC)
        reconciled_at = state.get("reconciled_at")
        reconcile = reconciled_at is None or now.timestamp() - reconciled_at >= reconcile_every_seconds
        if reconcile:  # the backstop: everything under the prefix, not only what is new
            objects = lake.list_objects(listing_prefix)
            reconciled_at = now.timestamp()
        arrivals = _lake_arrivals(context, lake, objects, route_list)
        plan = plan_runs(context, ledger, name, arrivals, ledger.open_claims(targets))
        new_state = {"listing": new_cursor.to_json(), "reconciled_at": reconciled_at}
        summary = f"{len(objects)} objects{' (full reconcile)' if reconcile else ''}"
        if plan.re_requested:
            context.log.info(
                f"{name}: re-requested {plan.re_requested} claimed objects whose run never appeared"
            )
        return dg.SensorResult(
            run_requests=plan.run_requests,
            cursor=json.dumps(new_state),
            skip_reason=None if plan.run_requests else f"{summary}: nothing new to run",
        )

    return _sensor


def s3_event_sensor(
    name: str,
    routes: Sequence[LakeRoute],
    *,
    queue_name: Callable[[], str],
    bucket_routes: Sequence[BucketRoute] = (),
    max_messages: int = 100,
    visibility_timeout: int = 60,
    minimum_interval_seconds: int = 10,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    description: str | None = None,
) -> dg.SensorDefinition:
    """Requests runs for S3 event notifications on an SQS queue.

    Events for the lake's bucket go through `routes`; events for other buckets
    through `bucket_routes`. A message with an event from a bucket no route
    names is left on the queue, so the redrive policy moves it to the
    dead-letter queue instead of losing it.
    """
    route_list, bucket_list = list(routes), list(bucket_routes)

    def handle(context: dg.SensorEvaluationContext, received: Sequence[Received[list[S3Event]]]) -> Handled:
        lake, ledger = context.resources.lake, FileLedger(context.resources.warehouse)
        per_message: dict[str, list[Arrival]] = {}
        unrouted: set[str] = set()
        for message in received:
            arrivals: list[Arrival] = []
            for event in message.parsed:
                if not event.is_created:
                    continue
                lake_key = lake.key_from_notification(event.bucket, event.key)
                if lake_key is not None:
                    if is_hidden(lake_key):
                        continue
                    try:
                        arrivals += lake_arrivals(lake_key, event.etag, route_list)
                    except LakePathError as exc:
                        context.log.warning(f"{name}: skipping {lake_key}: {exc}")
                elif any(r.bucket_name() == event.bucket for r in bucket_list):
                    arrivals += bucket_arrivals(event.bucket, event.key, event.etag, bucket_list)
                else:
                    unrouted.add(message.message_id)
                    context.log.warning(
                        f"{name}: no route for bucket {event.bucket!r} (s3://{event.bucket}/{event.key});"
                        f" leaving message {message.message_id} for the dead-letter queue"
                    )
            per_message[message.message_id] = arrivals
        every = [a for arrivals in per_message.values() for a in arrivals]
        plan = plan_runs(context, ledger, name, every)
        done = {
            message_id
            for message_id, arrivals in per_message.items()
            if message_id not in unrouted
            and all((a.target.to_user_string(), a.ref.identity) in plan.settled for a in arrivals)
        }
        notes = [f"{len(unrouted)} messages from unrouted buckets left for the DLQ"] if unrouted else []
        return Handled(run_requests=plan.run_requests, done=done, notes=notes)

    return sqs_sensor(
        name,
        queue_name=queue_name,
        parse=parse_message,
        handle=handle,
        asset_selection=dg.AssetSelection.assets(
            *{r.asset for r in route_list} | {r.asset for r in bucket_list}
        ),
        required_resource_keys={"lake", "warehouse"},
        max_messages=max_messages,
        visibility_timeout=visibility_timeout,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=description or "Runs the assets fed by S3 event notifications on SQS.",
    )
