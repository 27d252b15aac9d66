"""Two sensor factories the domains reuse.

* `lake_objects_sensor`: new objects under a lake prefix, found by listing
  (a local directory, or S3 through dagster_aws' get_objects) with a cursor.
* `s3_event_sensor`: S3 event notifications delivered on SQS.

Both map each object key to (asset, partition) through the lake's path
conventions, group a tick's objects into one run per partition with a run key
derived from the objects themselves (so a re-evaluation asks for the same
run), and return a SensorResult with the new cursor.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from assets.shared.s3_events import MalformedNotification, parse_message
from resources.aws import AwsClients
from resources.lake import LakeStorage, ListingCursor
from resources.lake.paths import LakeKey, LakePathError, Tier, dataset_prefix, parse_key

PartitionKeyFn = Callable[[LakeKey], "str | None"]


def partition_of(lake_key: LakeKey) -> str | None:
    """The Dagster partition key of an object: hourly if its path has an hour, else daily."""
    return lake_key.partition.dagster_key if lake_key.partition else None


def day_of(lake_key: LakeKey) -> str | None:
    """Daily partition key, for daily assets fed by hourly paths."""
    return lake_key.partition.to_day().dagster_key if lake_key.partition else None


@dataclass(frozen=True)
class LakeRoute:
    """Objects of tier[/domain[/dataset]] feed `asset`; `partition_key` maps a key to its partition."""

    asset: dg.AssetKey
    tier: Tier
    domain: str | None = None
    dataset: str | None = None
    partition_key: PartitionKeyFn = partition_of

    def matches(self, key: LakeKey) -> bool:
        return (
            key.tier == self.tier
            and (self.domain is None or key.domain == self.domain)
            and (self.dataset is None or key.dataset == self.dataset)
        )

    @property
    def prefix(self) -> str:
        if self.domain is None:
            return f"{Tier(self.tier).value}/"
        return dataset_prefix(self.tier, self.domain, self.dataset)


def run_requests_for(
    sensor_name: str,
    arrivals: Iterable[tuple[str, str]],
    routes: Sequence[LakeRoute],
    log: logging.Logger | None = None,
) -> list[dg.RunRequest]:
    """One RunRequest per (asset, partition) for arrivals given as (lake key, identity).

    The run key hashes the identities, so the same arrivals give the same key.
    Keys that break the path conventions or match no route are logged by name
    and left where they are.
    """
    groups: dict[tuple[dg.AssetKey, str | None], list[tuple[str, str]]] = defaultdict(list)
    for key, identity in arrivals:
        try:
            lake_key = parse_key(key)
        except LakePathError as exc:
            if log:
                log.warning(f"{sensor_name}: skipping {key}: {exc}")
            continue
        route = next((r for r in routes if r.matches(lake_key)), None)
        if route is None:
            if log:
                log.info(f"{sensor_name}: no asset takes {key}")
            continue
        groups[(route.asset, route.partition_key(lake_key))].append((key, identity))

    requests = []
    for (asset, partition), items in sorted(
        groups.items(), key=lambda kv: (kv[0][0].to_user_string(), kv[0][1] or "")
    ):
        digest = hashlib.sha1("\n".join(sorted(i for _, i in items)).encode()).hexdigest()[:16]
        requests.append(
            dg.RunRequest(
                run_key=f"{asset.to_user_string()}:{partition or 'all'}:{digest}",
                partition_key=partition,
                asset_selection=[asset],
                tags={"lake/objects": str(len(items)), "lake/first_key": min(k for k, _ in items)},
            )
        )
    return requests


def lake_objects_sensor(
    name: str,
    routes: Sequence[LakeRoute],
    *,
    prefix: str | None = None,
    max_objects_per_tick: int = 1000,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    description: str | None = None,
) -> dg.SensorDefinition:
    """Requests runs for objects that appeared under `prefix` (default: the one route's prefix)."""
    if prefix is None:
        if len(routes) != 1:
            raise ValueError(f"sensor {name}: give a prefix when there is more than one route")
        prefix = routes[0].prefix
    listing_prefix = prefix

    @dg.sensor(
        name=name,
        description=description or f"Runs the assets fed by new lake objects under {listing_prefix}.",
        asset_selection=dg.AssetSelection.assets(*{r.asset for r in routes}),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
    )
    def _sensor(context: dg.SensorEvaluationContext, lake: LakeStorage) -> dg.SensorResult | dg.SkipReason:
        cursor = ListingCursor.from_json(json.loads(context.cursor) if context.cursor else None)
        objects, new_cursor = lake.list_new_objects(listing_prefix, cursor, limit=max_objects_per_tick)
        if not objects:
            return dg.SkipReason(f"no new objects under {listing_prefix}")
        arrivals = [(o.key, f"{o.key}@{o.size}:{o.last_modified.isoformat()}") for o in objects]
        return dg.SensorResult(
            run_requests=run_requests_for(name, arrivals, routes, context.log),
            cursor=json.dumps(new_cursor.to_json()),
        )

    return _sensor


def s3_event_sensor(
    name: str,
    routes: Sequence[LakeRoute],
    *,
    queue_name: Callable[[], str],
    max_batches: int = 10,
    remembered_events: int = 2000,
    minimum_interval_seconds: int = 10,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    description: str | None = None,
) -> dg.SensorDefinition:
    """Requests runs for S3 event notifications on an SQS queue.

    Receives at most `max_batches` x 10 messages a tick, builds the run requests,
    and only then deletes the messages. Events already seen (an SQS redelivery)
    are remembered in the cursor and dropped. A message that is not an S3 event
    is left on the queue, so its redrive policy moves it to the dead-letter
    queue instead of losing it.
    """

    @dg.sensor(
        name=name,
        description=description or "Runs the assets fed by S3 event notifications on SQS.",
        asset_selection=dg.AssetSelection.assets(*{r.asset for r in routes}),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
    )
    def _sensor(
        context: dg.SensorEvaluationContext, aws: AwsClients, lake: LakeStorage
    ) -> dg.SensorResult | dg.SkipReason:
        sqs = aws.client("sqs")
        queue_url = sqs.get_queue_url(QueueName=queue_name())["QueueUrl"]
        seen: list[str] = json.loads(context.cursor)["seen"] if context.cursor else []
        seen_set = set(seen)
        arrivals: list[tuple[str, str]] = []
        handled: list[dict[str, str]] = []
        for _ in range(max_batches):
            batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
                "Messages", []
            )
            for message in batch:
                try:
                    events = parse_message(message["Body"])
                except MalformedNotification as exc:
                    context.log.warning(f"{name}: leaving message {message['MessageId']} for the DLQ: {exc}")
                    continue
                for event in events:
                    lake_key = lake.key_from_notification(event.bucket, event.key)
                    if not event.is_created or lake_key is None or event.identity in seen_set:
                        continue
                    seen_set.add(event.identity)
                    seen.append(event.identity)
                    arrivals.append((lake_key, event.identity))
                handled.append({"Id": message["MessageId"], "ReceiptHandle": message["ReceiptHandle"]})
            if len(batch) < 10:
                break

        requests = run_requests_for(name, arrivals, routes, context.log)
        for start in range(0, len(handled), 10):  # delete only after the requests exist
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=handled[start : start + 10])
        if not handled:
            return dg.SkipReason(f"no messages on {queue_name()}")
        return dg.SensorResult(run_requests=requests, cursor=json.dumps({"seen": seen[-remembered_events:]}))

    return _sensor
