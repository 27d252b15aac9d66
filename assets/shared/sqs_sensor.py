"""A generic SQS sensor: a queue, a message parser, and a handler that says what to request.

S3 event notifications, DMS change files and snapshot requests all sit on it.
A message is deleted only when the handler says it is done, which handlers
say once the runs it caused exist in the instance (or its work is already
applied), never in the tick that asks for those runs: the daemon creates the
runs after the tick returns, and a daemon killed in between must not lose the
message. Until then the message stays in flight and comes back after its
visibility timeout. A message the parser rejects is never deleted, so the
queue's redrive policy moves it to the dead-letter queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import dagster as dg

T = TypeVar("T")


class MalformedMessage(ValueError):
    """A message the parser cannot read; it is left for the dead-letter queue."""


@dataclass(frozen=True)
class Received(Generic[T]):
    message_id: str
    receipt_handle: str
    body: str
    parsed: T
    receive_count: int


@dataclass
class Handled:
    """What a handler decided for one tick's messages."""

    run_requests: list[dg.RunRequest] = field(default_factory=list)
    done: set[str] = field(default_factory=set)  # message ids that may be deleted now
    dynamic_partitions_requests: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # shown as the tick's skip reason when nothing runs
    asset_events: list[Any] = field(default_factory=list)  # e.g. materializations of external assets


Handler = Callable[[dg.SensorEvaluationContext, Sequence[Received[Any]]], Handled]


def sqs_sensor(
    name: str,
    *,
    queue_name: Callable[[], str],
    parse: Callable[[str], Any],
    handle: Handler,
    asset_selection: dg.AssetSelection | None = None,
    required_resource_keys: set[str] | None = None,
    max_messages: int = 100,
    visibility_timeout: int = 60,
    minimum_interval_seconds: int = 10,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    description: str | None = None,
) -> dg.SensorDefinition:
    """A sensor that receives up to `max_messages` a tick from the queue `queue_name()` names.

    `parse(body)` returns the message's content or raises MalformedMessage (or
    ValueError); `handle(context, received)` returns a Handled. The queue name is
    resolved at tick time, never when the code location loads.
    """

    @dg.sensor(
        name=name,
        description=description or f"Reads messages from an SQS queue and runs what they ask for ({name}).",
        asset_selection=asset_selection,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={"aws", *(required_resource_keys or set())},
    )
    def _sensor(context: dg.SensorEvaluationContext, **_resources: Any) -> dg.SensorResult | dg.SkipReason:
        # Dagster passes the required resources as keyword arguments; they are read from the context.
        sqs = context.resources.aws.client("sqs")
        queue = queue_name()
        queue_url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        received: list[Received[Any]] = []
        malformed = 0
        while len(received) + malformed < max_messages:
            batch = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=min(10, max_messages - len(received) - malformed),
                WaitTimeSeconds=0,
                VisibilityTimeout=visibility_timeout,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            ).get("Messages", [])
            for message in batch:
                count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
                try:
                    parsed = parse(message["Body"])
                except ValueError as exc:
                    malformed += 1
                    context.log.warning(
                        f"{name}: leaving message {message['MessageId']} on {queue} for the dead-letter"
                        f" queue (receive {count}): {exc}"
                    )
                    continue
                received.append(
                    Received(message["MessageId"], message["ReceiptHandle"], message["Body"], parsed, count)
                )
            if len(batch) < 10:
                break
        if not received:
            return dg.SkipReason(
                f"no messages on {queue}"
                + (f" ({malformed} malformed, left for the DLQ)" if malformed else "")
            )

        handled = handle(context, received)
        entries = [
            {"Id": str(i), "ReceiptHandle": r.receipt_handle}
            for i, r in enumerate(received)
            if r.message_id in handled.done
        ]
        for start in range(0, len(entries), 10):
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries[start : start + 10])
        waiting = len(received) - len(entries)
        if waiting:
            context.log.info(f"{name}: {waiting} messages wait for their runs; deleted once the runs exist")
        if not handled.run_requests and not handled.dynamic_partitions_requests and not handled.asset_events:
            reason = "; ".join(handled.notes) or "nothing new to run"
            return dg.SkipReason(f"{len(received)} messages, {len(entries)} deleted: {reason}")
        return dg.SensorResult(
            run_requests=handled.run_requests,
            dynamic_partitions_requests=handled.dynamic_partitions_requests,
            asset_events=handled.asset_events,
        )

    return _sensor
